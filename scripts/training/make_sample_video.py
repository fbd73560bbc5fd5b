"""Build a slide-pan video from real BCCD fields, with its ground truth.

A "virtual slide" is made by tiling real 640x480 BCCD frames (MIT licence,
Shenggan/BCCD_Dataset) of one split; a 640x480 window then pans across it the
way a technician moves a stage by hand: a serpentine over every tile row,
hand jitter (smoothed random walk), speed changes, back-tracking (the window
reverses for a while and then goes on, so cells leave and come back), and a
few focus slips (frames blurred with a growing-then-shrinking Gaussian).

Ground truth (JSON beside the video): every WBC box of the tiles used is one
leukocyte. ``unique_wbc`` counts them all; ``counts`` / ``percent`` count the
five-part subtypes from ``wbc_type``. Tiles are drawn from frames whose every
WBC has a subtype (BCCD gives subtypes only for frames with exactly one WBC),
so ``untyped`` is 0 by default; ``--allow-untyped`` also takes frames with
WBCs without subtype, which are then counted in ``unique_wbc`` (they are still
leukocytes) but not in the five-part truth. Frames without any WBC (RBCs and
platelets only) are used as empty fields with ``--empty-tiles N``.

    python -m scripts.training.make_sample_video --split train --out samples/slide_pan_train.mp4
    python -m scripts.training.make_sample_video --split test --out /tmp/heldout.mp4   # evaluation

Seeded: the same arguments give the same video and truth.
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

from scripts.training.splits import DATASETS, split_of  # noqa: E402

logger = logging.getLogger(__name__)

FIVE_PART = ("neutrophil", "lymphocyte", "monocyte", "eosinophil", "basophil")
VIEW_W, VIEW_H = 640, 480


def load_bccd(root: Path, split: str, allow_untyped: bool) -> tuple[list[dict], list[str]]:
    """Frames of a split: [{image, wbcs: [(box, type)]}], plus frames without WBCs."""
    by_image = defaultdict(list)
    with open(root / "boxes.csv", newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            by_image[row["image"]].append(row)
    frames, empty = [], []
    for name in sorted(p.name for p in (root / "images").glob("*.jpg")):
        if split_of("bccd", name) != split:
            continue
        wbcs = [((int(r["x1"]), int(r["y1"]), int(r["x2"]), int(r["y2"])), r["wbc_type"] or None)
                for r in by_image.get(name, []) if r["cell"] == "WBC"]
        if not wbcs:
            empty.append(name)
        elif allow_untyped or all(t for _, t in wbcs):
            frames.append({"image": name, "wbcs": wbcs})
    return frames, empty


def pan_path(slide_w: int, slide_h: int, rng: np.random.Generator, speed: float = 14.0,
             backtracks_per_row: float = 1.0, jitter_px: float = 2.0, view=(VIEW_W, VIEW_H)) -> np.ndarray:
    """(N, 2) integer top-left positions of the view: a hand-driven serpentine."""
    vw, vh = view
    rows = max(1, int(np.ceil((slide_h - vh) / vh)) + 1)
    ys = np.linspace(0, slide_h - vh, rows)
    pts: list[tuple[float, float]] = []
    x = 0.0

    def move_to(tx, ty, spd):
        nonlocal x
        cx, cy = pts[-1] if pts else (x, ty)
        dist = float(np.hypot(tx - cx, ty - cy))
        n = max(1, int(dist / max(1.0, spd)))
        for i in range(1, n + 1):
            # Speed wobbles like a hand on a stage knob.
            f = i / n
            pts.append((cx + (tx - cx) * f, cy + (ty - cy) * f))

    pts.append((0.0, float(ys[0])))
    for r, y in enumerate(ys):
        if r > 0:
            move_to(pts[-1][0], float(y), speed * rng.uniform(0.8, 1.3))
        end = slide_w - vw if r % 2 == 0 else 0
        start = pts[-1][0]
        n_back = rng.poisson(backtracks_per_row)
        stops = sorted(rng.uniform(0.2, 0.9, size=n_back))
        for s in stops:
            mid = start + (end - start) * s
            move_to(mid, float(y), speed * rng.uniform(0.7, 1.4))
            back = np.sign(end - start) * -rng.uniform(120, 320)
            move_to(min(max(mid + back, 0), slide_w - vw), float(y), speed * rng.uniform(0.7, 1.2))
            move_to(mid, float(y), speed * rng.uniform(0.8, 1.4))
        move_to(end, float(y), speed * rng.uniform(0.8, 1.3))
    path = np.array(pts)
    # Hand tremor: a smoothed random walk, a couple of pixels.
    noise = rng.normal(0, jitter_px, size=path.shape)
    kernel = np.ones(3) / 3
    noise = np.stack([np.convolve(noise[:, i], kernel, mode="same") for i in range(2)], axis=1) * 1.7
    path = path + noise
    path[:, 0] = path[:, 0].clip(0, slide_w - vw)
    path[:, 1] = path[:, 1].clip(0, slide_h - vh)
    return np.round(path).astype(int)


def focus_slips(n_frames: int, rng: np.random.Generator, count: int = 3) -> np.ndarray:
    """Per-frame Gaussian blur sigma (0 = sharp): a few slips of 8-16 frames."""
    sigma = np.zeros(n_frames)
    for _ in range(count):
        length = int(rng.integers(8, 17))
        start = int(rng.integers(10, max(11, n_frames - length - 10)))
        peak = rng.uniform(2.5, 4.0)
        sigma[start:start + length] = np.maximum(sigma[start:start + length],
                                                  peak * np.sin(np.linspace(0, np.pi, length)))
    return sigma


def build(args) -> dict:
    rng = np.random.default_rng(args.seed)
    root = Path(args.datasets) / "bccd"
    if not (root / "boxes.csv").is_file():
        raise SystemExit(f"BCCD not found at {root} (pass --datasets)")
    frames, empty = load_bccd(root, args.split, args.allow_untyped)
    order = rng.permutation(len(frames))
    chosen = [frames[i] for i in order[:args.cols * args.rows - args.empty_tiles]]
    tiles = chosen + [{"image": e, "wbcs": []} for e in
                      (rng.permutation(empty)[:args.empty_tiles].tolist() if args.empty_tiles else [])]
    tiles = [tiles[i] for i in rng.permutation(len(tiles))]
    if len(tiles) < args.cols * args.rows:
        raise SystemExit(f"only {len(tiles)} frames in split '{args.split}', need {args.cols * args.rows}")
    slide = np.zeros((args.rows * VIEW_H, args.cols * VIEW_W, 3), np.uint8)
    cells = []
    for k, tile in enumerate(tiles):
        r, c = divmod(k, args.cols)
        img = cv2.imread(str(root / "images" / tile["image"]))
        if img is None or img.shape[:2] != (VIEW_H, VIEW_W):
            raise SystemExit(f"unexpected BCCD frame {tile['image']}")
        slide[r * VIEW_H:(r + 1) * VIEW_H, c * VIEW_W:(c + 1) * VIEW_W] = img
        for (x1, y1, x2, y2), t in tile["wbcs"]:
            ox, oy = c * VIEW_W, r * VIEW_H
            cells.append({"image": tile["image"], "type": t, "box": [x1 + ox, y1 + oy, x2 + ox, y2 + oy]})
    path = pan_path(slide.shape[1], slide.shape[0], rng, speed=args.speed)
    sigma = focus_slips(len(path), rng, args.focus_slips)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"mp4v"), args.fps, (VIEW_W, VIEW_H))
    if not writer.isOpened():
        raise SystemExit(f"cannot write {out}")
    for (x, y), s in zip(path, sigma):
        view = slide[y:y + VIEW_H, x:x + VIEW_W]
        if s > 0.3:
            view = cv2.GaussianBlur(view, (0, 0), s)
        writer.write(np.ascontiguousarray(view))
    writer.release()
    counts = {k: sum(1 for c in cells if c["type"] == k) for k in FIVE_PART}
    typed = sum(counts.values())
    truth = {
        "video": out.name, "split": args.split, "seed": args.seed, "fps": args.fps, "frames": int(len(path)),
        "unique_wbc": len(cells), "typed": typed, "untyped": len(cells) - typed,
        "counts": counts, "percent": {k: round(100.0 * v / typed, 2) if typed else 0.0 for k, v in counts.items()},
        "slide_size": [int(slide.shape[1]), int(slide.shape[0])],
        "tiles": [t["image"] for t in tiles], "grid": [args.cols, args.rows],
        "focus_slip_frames": int((sigma > 0.3).sum()),
        "cells": cells,
        "path": path.tolist(),
        "source": "BCCD (Shenggan/BCCD_Dataset, MIT) frames; subtypes from apple2373/BCCD labels.csv",
    }
    Path(args.truth or out.with_suffix(".json")).write_text(json.dumps(truth) + "\n", encoding="utf-8")
    return truth


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--split", default="train", choices=("train", "val", "test"))
    p.add_argument("--out", required=True, help="output .mp4")
    p.add_argument("--truth", default=None, help="ground-truth JSON (default: beside the video)")
    p.add_argument("--datasets", default=str(DATASETS))
    p.add_argument("--cols", type=int, default=6)
    p.add_argument("--rows", type=int, default=5)
    p.add_argument("--empty-tiles", type=int, default=0)
    p.add_argument("--allow-untyped", action="store_true")
    p.add_argument("--speed", type=float, default=18.0, help="mean pan speed, pixels per frame")
    p.add_argument("--focus-slips", type=int, default=3)
    p.add_argument("--fps", type=float, default=30.0)
    p.add_argument("--seed", type=int, default=7)
    args = p.parse_args(argv)
    truth = build(args)
    print(json.dumps({k: truth[k] for k in ("video", "split", "frames", "unique_wbc", "counts", "percent")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
