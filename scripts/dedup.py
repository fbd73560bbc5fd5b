"""Find copies of one image across the splits, and give each copy one split.

    python -m scripts.dedup            # writes scripts/split_groups.json (committed)

The datasets hold the same field or cell more than once (../shared/datasets
README, "Leakage"; found in session 18): TXL-PBC re-annotates BCCD frames at
640x480 and again resized to 416x416, some of them mirrored or rotated;
TXL-PBC repeats its own frames across its folders; PBC and Raabin hold a few
photos twice. A split rule that works image by image cannot see that, so this
script compares every pair within a group of sources and writes the groups
whose members fall in different splits; ``scripts.splits.split_of`` reads the
file, so training, calibration and evaluation all see one split per group.

Two images are copies when their 24x24 grey thumbnails (zero mean, unit
variance, whole image resized, so a 416x416 resize of a 640x480 frame still
matches) correlate at ``MIN_CORR`` or more, under any of the 8 rotations and
mirrors for frames (TXL-PBC holds flipped and rotated copies) and as stored
for single-cell photos. Pairs are joined into groups (union-find).

Which split a group takes (no retraining of a model that saw a copy can be
needed to keep a test split clean):

- a group with a BCCD frame takes the BCCD frame's split: the BCCD frame is
  the original, and its labelled crops train and test the classifier, so its
  split must not move; TXL-PBC copies follow it (the detector is retrained);
- any other group takes its least held-out split (train, then val, then
  test): a copy that trained a model pulls the others out of the held-out
  splits, so the shipped models, which trained on that copy, stay clean on
  what is left.

Chula's mirrored slide (HF-M-8 is M-8 flipped) is a slide rule in
``scripts.splits`` (``CHULA_MIRRORS``), not a group here: Chula splits by slide.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scripts.splits import DATASETS, GROUPS_FILE, SPLIT_RANK, split_of  # noqa: E402

logger = logging.getLogger("dedup")

MIN_CORR = 0.95
THUMB = 24


def thumbnail(path: Path) -> np.ndarray:
    """Grey 24x24 thumbnail, zero mean and unit variance, as a float32 vector."""
    g = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if g is None:
        raise SystemExit(f"{path}: cannot be read as an image")
    t = cv2.resize(g, (THUMB, THUMB), interpolation=cv2.INTER_AREA).astype(np.float32)
    return ((t - t.mean()) / (t.std() + 1e-6)).ravel()


def dihedral(t: np.ndarray) -> list[np.ndarray]:
    """The 8 rotations and mirrors of a flattened square thumbnail."""
    s = t.reshape(THUMB, THUMB)
    views = [np.rot90(s, k) for k in range(4)]
    views += [v[:, ::-1] for v in views]
    return [np.ascontiguousarray(v).ravel() for v in views]


def copy_pairs(thumbs: np.ndarray, transforms: bool, min_corr: float = MIN_CORR,
               chunk: int = 2048) -> list[tuple[int, int, float]]:
    """(i, j, correlation) for every i < j whose thumbnails correlate at min_corr or more."""
    n, dim = thumbs.shape
    variants = [thumbs]
    if transforms:
        variants = [np.stack(v) for v in zip(*(dihedral(t) for t in thumbs))]
    pairs = {}
    for a in range(0, n, chunk):
        block = thumbs[a:a + chunk]
        best = np.full((len(block), n), -1.0, np.float32)
        for v in variants:
            np.maximum(best, block @ v.T / dim, out=best)
        for i, j in zip(*np.nonzero(best >= min_corr)):
            i = int(i) + a
            if i < j:
                pairs[(i, int(j))] = float(best[i - a, j])
            elif j < i:  # the match found from the other side under the inverse transform
                pairs.setdefault((int(j), i), float(best[i - a, j]))
    return [(i, j, c) for (i, j), c in sorted(pairs.items())]


def union_groups(n: int, pairs) -> list[list[int]]:
    parent = list(range(n))

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for i, j, _ in pairs:
        parent[find(i)] = find(j)
    groups = defaultdict(list)
    for i in range(n):
        groups[find(i)].append(i)
    return [sorted(g) for g in groups.values() if len(g) > 1]


def group_split(members: list[tuple[str, str, str]]) -> str:
    """The split a group of (source, key, own split) members takes (module docstring)."""
    bccd = {s for src, _, s in members if src == "bccd"}
    if bccd:
        if len(bccd) > 1:
            raise SystemExit(f"BCCD frames in different splits are copies of each other: {members}")
        return bccd.pop()
    return min((s for *_, s in members), key=SPLIT_RANK.get)


def _frame_items():
    items = []
    for p in sorted((DATASETS / "bccd" / "images").glob("*.jpg")):
        items.append(("bccd", p.name, p))
    for split in ("train", "val", "test"):
        for p in sorted((DATASETS / "txl_pbc" / "images" / split).glob("*.jpg")):
            items.append(("txl_pbc", f"{split}/{p.name}", p))
    return items


def _crop_items(source: str):
    with open(DATASETS / source / "labels.csv") as f:
        return [(source, r["image"], DATASETS / source / r["image"]) for r in csv.DictReader(f)]


def find_groups() -> tuple[list[dict], dict]:
    """Groups whose members sit in more than one split, each with the split it takes; and counts."""
    out, stats = [], {}
    for name, items, transforms in (("frames", _frame_items(), True),
                                    ("pbc", _crop_items("pbc"), False),
                                    ("raabin", _crop_items("raabin"), False)):
        thumbs = np.stack([thumbnail(p) for *_, p in items])
        pairs = copy_pairs(thumbs, transforms)
        groups = union_groups(len(items), pairs)
        corr = {(i, j): c for i, j, c in pairs}
        mixed = moved = 0
        for g in groups:
            members = [(items[i][0], items[i][1], split_of(items[i][0], items[i][1], raw=True)) for i in g]
            if len({s for *_, s in members}) == 1:
                continue
            mixed += 1
            split = group_split(members)
            moved += sum(1 for *_, w in members if w != split)
            out.append({"split": split, "min_corr": round(min(c for (i, j), c in corr.items()
                                                             if i in g and j in g), 4),
                        "members": [{"source": s, "key": k, "was": w} for s, k, w in members]})
        stats[name] = {"images": len(items), "copy_pairs": len(pairs), "groups": len(groups),
                       "groups_across_splits": mixed, "images_moved": moved}
        logger.info("%s: %d images, %d copy pairs, %d groups, %d across splits, %d images change split",
                    name, len(items), len(pairs), len(groups), mixed, moved)
    return out, stats


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=GROUPS_FILE)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if not DATASETS.is_dir():
        raise SystemExit(f"{DATASETS} not found: the datasets folder must sit beside the repository")
    groups, stats = find_groups()
    args.out.write_text(json.dumps({"min_corr": MIN_CORR, "thumbnail": THUMB, "stats": stats, "groups": groups},
                                   indent=1) + "\n")
    logger.info("wrote %s (%d groups)", args.out, len(groups))
    return 0


if __name__ == "__main__":
    sys.exit(main())
