"""Find copies of one image across the splits, and give each copy one split.

    python -m scripts.training.dedup            # writes scripts/training/split_groups.json (committed)

The datasets hold the same field or cell more than once (../shared/datasets
README, "Leakage"): TXL-PBC re-annotates BCCD frames at
640x480 and again resized to 416x416, some of them mirrored or rotated;
TXL-PBC repeats its own frames across its folders and re-annotates PBC and
Raabin photos; PBC and Raabin hold a few photos twice. A split rule that works image by image cannot see that, so this
script compares every pair within a group of sources and writes the groups
whose members fall in different splits; ``scripts.training.splits.split_of`` reads the
file, so training, calibration and evaluation all see one split per group.

Two images are copies when their 24x24 grey thumbnails (zero mean, unit
variance, whole image resized, so a 416x416 resize of a 640x480 frame still
matches) correlate at ``MIN_CORR`` or more: under any of the 8 rotations and
mirrors between frames and between a TXL-PBC frame and a PBC or Raabin photo
(TXL-PBC holds flipped and rotated copies), as stored between two photos of
one source. Pairs are joined into groups (union-find).

Which split a group takes (no retraining of a model that saw a copy can be
needed to keep a test split clean):

- a group with an image of a labelled source (BCCD, PBC, Raabin: the
  originals, whose labelled crops train and test the classifier) takes the
  least held-out split of those images; TXL-PBC's copies follow them (the
  detector, which trains on TXL-PBC, is retrained);
- a group of TXL-PBC frames alone takes its least held-out split (train, then
  val, then test);

so a copy that trained a shipped classifier pulls the others out of the
held-out splits, and what is left in them was never seen.

Chula's mirrored slide (HF-M-8 is M-8 flipped) is a slide rule in
``scripts.training.splits`` (``CHULA_MIRRORS``), not a group here: Chula splits by slide.
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

ROOT = Path(__file__).resolve().parents[2]

from scripts.training.splits import DATASETS, GROUPS_FILE, SPLIT_RANK, split_of  # noqa: E402

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


def copy_pairs(thumbs: np.ndarray, transforms: bool, min_corr: float = MIN_CORR, other: np.ndarray | None = None,
               chunk: int = 2048) -> list[tuple[int, int, float]]:
    """(i, j, correlation) for every pair whose thumbnails correlate at min_corr or more.

    Within ``thumbs`` (i < j), or with ``other`` between the two sets (i in
    ``thumbs``, j in ``other``)."""
    dim = thumbs.shape[1]
    target = thumbs if other is None else other
    variants = [target]
    if transforms:
        variants = [np.stack(v) for v in zip(*(dihedral(t) for t in target))]
    pairs = {}
    for a in range(0, len(thumbs), chunk):
        block = thumbs[a:a + chunk]
        best = np.full((len(block), len(target)), -1.0, np.float32)
        for v in variants:
            np.maximum(best, block @ v.T / dim, out=best)
        for i, j in zip(*np.nonzero(best >= min_corr)):
            i, j, c = int(i) + a, int(j), float(best[i, j])
            if other is not None:
                pairs[(i, j)] = c
            elif i < j:
                pairs[(i, j)] = max(c, pairs.get((i, j), c))
            elif j < i:  # the same pair seen from the other side (under the inverse transform)
                pairs[(j, i)] = max(c, pairs.get((j, i), c))
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


ORIGINALS = ("bccd", "pbc", "raabin")  # labelled sources whose images TXL-PBC re-annotates


def group_split(members: list[tuple[str, str, str]]) -> str:
    """The split a group of (source, key, own split) members takes (module docstring)."""
    originals = [s for src, _, s in members if src in ORIGINALS] or [s for *_, s in members]
    return min(originals, key=SPLIT_RANK.get)


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
    blocks = {"frames": _frame_items(), "pbc": _crop_items("pbc"), "raabin": _crop_items("raabin")}
    items, start, thumbs = [], {}, {}
    for name, block in blocks.items():
        start[name] = len(items)
        items += block
        thumbs[name] = np.stack([thumbnail(p) for *_, p in block])
    txl = np.array([src == "txl_pbc" for src, *_ in blocks["frames"]])
    txl_rows = np.nonzero(txl)[0]
    pairs, stats = [], {}

    def add(name, found, rows=None, other=None):
        for i, j, c in found:
            i = start["frames"] + int(rows[i]) if rows is not None else start[name] + i
            pairs.append((i, start[other] + j if other else start[name] + j, c))
        stats[name] = {"copy_pairs": len(found)}

    # frames: BCCD and TXL-PBC, any rotation or mirror; photos as stored, within a source;
    # TXL-PBC's frames against the photos of PBC and Raabin, which it re-annotates too
    add("frames", copy_pairs(thumbs["frames"], True))
    add("pbc", copy_pairs(thumbs["pbc"], False))
    add("raabin", copy_pairs(thumbs["raabin"], False))
    for src in ("pbc", "raabin"):
        add(f"txl_pbc x {src}", copy_pairs(thumbs["frames"][txl_rows], True, other=thumbs[src]), txl_rows, src)
    corr = {(min(i, j), max(i, j)): c for i, j, c in pairs}
    out, moved = [], 0
    for g in union_groups(len(items), pairs):
        members = [(items[i][0], items[i][1], split_of(items[i][0], items[i][1], raw=True)) for i in g]
        if len({s for *_, s in members}) == 1:
            continue
        split = group_split(members)
        moved += sum(1 for *_, w in members if w != split)
        inside = set(g)
        out.append({"split": split, "min_corr": round(min(c for (i, j), c in corr.items()
                                                         if i in inside and j in inside), 4),
                    "members": [{"source": s, "key": k, "was": w} for s, k, w in members]})
    stats["images"] = {name: len(block) for name, block in blocks.items()}
    stats["groups_across_splits"] = len(out)
    stats["images_moved"] = moved
    logger.info("%s", stats)
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
