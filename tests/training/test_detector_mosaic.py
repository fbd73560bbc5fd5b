"""The detector's zoom-out mosaic (scripts/training/train.py --mosaic).

The frames here are flat colour fields with one marked rectangle each: the
test checks geometry (every target box lands on its marked pixels, no cell
shrinks below the smallest camera's), not what a cell looks like. Training needs
PyTorch, which the runtime and CI do not install: these run where the training
extra is installed and are skipped elsewhere.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")
train = pytest.importorskip("scripts.training.train")

from edge_app.imaging.preprocess import DETECTOR_SIZE  # noqa: E402

H, W = 360, 480


def _frames(n: int, side: int, rng):
    frames, boxes = [], []
    for k in range(n):
        f = np.full((H, W, 3), 40 + 10 * k, np.uint8)
        x1, y1 = int(rng.integers(0, W - side)), int(rng.integers(0, H - side))
        f[y1:y1 + side, x1:x1 + side, 0] = 255  # the marked "cell"
        frames.append(f)
        boxes.append(np.array([[x1, y1, x1 + side, y1 + side]], np.float32))
    return frames, boxes


def test_every_box_lands_on_its_marked_pixels_and_keeps_the_minimum_size():
    rng = np.random.default_rng(0)
    frames, boxes = _frames(6, 150, rng)
    scale = min(DETECTOR_SIZE[0] / W, DETECTOR_SIZE[1] / H)
    partners = np.arange(6)
    seen = 0
    for _ in range(40):
        img, out = train._zoom_out_mosaic(frames, boxes, 2, partners, rng)
        assert img.shape == (H, W, 3)
        assert len(out), "a tiled frame keeps its visible cells"
        for x1, y1, x2, y2 in out:
            inner = img[int(y1) + 2:int(y2) - 2, int(x1) + 2:int(x2) - 2, 0]
            if inner.size:
                assert inner.mean() > 240, "a target box must cover its shrunken cell"
            full = (x1 > 0) and (y1 > 0) and (x2 < W) and (y2 < H)
            if full:
                seen += 1
                assert (x2 - x1) * scale >= train.MOSAIC_MIN_CELL - 1
        # every marked pixel is inside some kept box or belongs to a cell cut off at the edge
        marked = img[..., 0] > 250
        covered = np.zeros_like(marked)
        for x1, y1, x2, y2 in out.astype(int):
            covered[y1:y2 + 1, x1:x2 + 1] = True
        assert (marked & ~covered).sum() <= 0.6 * marked.sum()
    assert seen > 40


def test_frames_whose_cells_are_already_small_are_not_tiled():
    rng = np.random.default_rng(1)
    # 33 px in the frame is 22 px in the detector's input: below the minimum already
    frames, boxes = _frames(3, 33, rng)
    assert train._zoom_out_mosaic(frames, boxes, 0, np.arange(3), rng) is None


def test_partners_share_the_camera_and_the_frame_shape():
    frames = [np.zeros((360, 480, 3), np.uint8), np.zeros((360, 360, 3), np.uint8),
              np.zeros((360, 480, 3), np.uint8), np.zeros((360, 480, 3), np.uint8)]
    sources = np.array(["bccd", "txl_pbc", "bccd", "chula"])
    fs = train.FrameSet(frames, [np.zeros((0, 4))] * 4, True, 0, sources=sources, mosaic=0.5)
    assert [list(p) for p in fs.partners] == [[0, 2], [1], [0, 2], [3]]
