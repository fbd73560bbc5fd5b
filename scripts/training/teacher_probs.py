"""Distillation targets: a teacher checkpoint's class probabilities for every
train and val crop of the classifier cache.

    python -m scripts.training.teacher_probs runs/teacher/classifier.pt models/training/teacher_probs.npz

Each crop's target is the teacher's mean softmax over the eight dihedral views
of the clean crop (the same test-time views the runtime uses), so the student
learns the teacher's view-averaged opinion. Test splits are never read: a
target for a test crop would leak the teacher's knowledge of it into training.
The file is small (float16, compressed) and is what makes the distilled
student's run reproducible on a 2-core CPU without the GPU that trained the
teacher (``scripts/training/train.py --teacher``).

Older files keyed a crop cut from a frame by the frame's name,
which repeats when a frame holds two cells (7 Chula frames, some BCCD ones), so
training gave both cells the second cell's target. ``--rekey OLD NEW`` renames
those keys ``<frame>#<n>`` (``scripts.training.data.crop_key``) without the teacher: the
file lists the crops in cache order, so the n-th repeat of a frame's name is
its n-th WBC box.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]

from scripts.training import data  # noqa: E402
from scripts.training.evaluate import TorchClassifier  # noqa: E402

logger = logging.getLogger("teacher_probs")


def trained_sources(ckpt: Path) -> list[str]:
    """The labelled sources a classifier checkpoint trained on: those it was scored on
    in val (a source left out with ``--exclude-source`` has no val score)."""
    import torch

    return sorted(torch.load(ckpt, map_location="cpu", weights_only=False)["val"])


def teacher_probs(ckpt: Path, views: int = 8, chunk: int = 512) -> tuple[np.ndarray, np.ndarray]:
    d = data.load("cls")
    keep = np.isin(d["splits"], ("train", "val"))
    clf = TorchClassifier(ckpt)
    if clf.torch.cuda.is_available():
        clf.model.cuda()
    images, out = d["images"][keep], []
    for i in range(0, len(images), chunk):
        out.append(clf.probs(list(images[i:i + chunk]), views))
        logger.info("%d / %d crops", min(i + chunk, len(images)), len(images))
    return d["keys"][keep], np.concatenate(out)


def unique_crop_keys(keys) -> np.ndarray:
    """Old keys -> ``<frame>#<n>`` for crops cut from frames (names without a class folder)."""
    seen: dict[str, int] = {}
    out = []
    for k in keys:
        k = str(k)
        if "/" in k:  # a single-cell photo: "<class>/<file>" is unique
            out.append(k)
            continue
        n = seen.get(k, 0)
        seen[k] = n + 1
        out.append(data.crop_key(k, n))
    return np.array(out)


def rekey(src: Path, dst: Path) -> None:
    with np.load(src) as z:
        if any("#" in str(k) for k in z["keys"]):
            raise SystemExit(f"{src}: already keyed by crop")
        fields = {k: z[k] for k in z.files}
    fields["keys"] = unique_crop_keys(fields["keys"])
    np.savez_compressed(dst, **fields)
    logger.info("re-keyed %s -> %s (%d crops)", src, dst, len(fields["keys"]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("checkpoint", type=Path, help="teacher checkpoint (with --rekey: the old file)")
    ap.add_argument("out", type=Path)
    ap.add_argument("--views", type=int, default=8)
    ap.add_argument("--rekey", action="store_true", help="rename an old file's frame-name keys to crop keys")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.rekey:
        rekey(args.checkpoint, args.out)
        return 0
    keys, probs = teacher_probs(args.checkpoint, args.views)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, keys=keys, probs=probs.astype(np.float16),
                        trained_on=np.array(trained_sources(args.checkpoint)))
    logger.info("wrote %s (%d crops, %.1f MB)", args.out, len(keys), args.out.stat().st_size / 1e6)
    return 0


if __name__ == "__main__":
    sys.exit(main())
