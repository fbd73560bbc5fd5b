"""Tighten a detected leukocyte box to the stained cell the image shows.

The detector regresses box sides from a 16-pixel grid and, on slides it has
not seen, can box small cells too large. A leukocyte is the
one object in a smear that absorbs both red and green light strongly (its
nucleus and basophilic cytoplasm), so inside each box the cell can be
segmented from the background-normalised optical density without a network.

The refinement is deliberately conservative:
- it only shrinks a box (each side moves inwards, never outwards);
- it moves each side ``weight`` of the way to the segmented blob (plus a
  ``margin``), so a wrong segmentation costs at most that fraction;
- it only acts on a blob that is round and whole (solidity at least
  ``min_solidity``, not cut by the search window, at least ``min_area`` of the
  box): a neutrophil's separate lobes or a clump of cells leave the box as the
  network gave it.

All sizes are relative to the box, so the same settings hold at any camera
resolution. Parameters were fitted on training frames only.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from edge_app.imaging import preprocess


@dataclass(frozen=True)
class RefineSettings:
    """How a box is tightened (defaults: the values fitted on training frames)."""

    pad: float = 0.15  # search window: the box grown by this fraction of its side, each way
    weight: float = 0.5  # how far each side moves towards the segmented blob
    margin: float = 0.10  # the blob's box grown by this fraction of its side (the cell's pale rim)
    min_area: float = 0.30  # a blob smaller than this fraction of the box is not the cell
    min_solidity: float = 0.97  # area / convex hull area: a round, whole cell
    blur: float = 0.04  # Gaussian sigma as a fraction of the box's longer side


def _density(norm: np.ndarray) -> np.ndarray:
    """Optical density of background-normalised values (float32 0..255)."""
    return -np.log((norm + 1.0) / (preprocess.BACKGROUND_LEVEL + 1.0))


def density_table(background: np.ndarray) -> np.ndarray:
    """(256, 2) red and green optical density of each 8-bit level, referenced to a frame's background.

    Built with the same float32 steps as the general path (``normalise_background``, then
    ``_density``), so a lookup gives the same values at a fraction of the cost of a log per pixel.
    """
    levels = preprocess.normalise_background(np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, axis=1),
                                             background)
    return _density(levels[:, :2])


def absorbance(rgb: np.ndarray, background: np.ndarray, table: np.ndarray | None = None) -> np.ndarray:
    """Red + green optical density of (part of) a frame, referenced to the frame's background (float32)."""
    if rgb.dtype == np.uint8:
        table = density_table(background) if table is None else table
        return (table[rgb[..., 0], 0] + table[rgb[..., 1], 1]).astype(np.float32)
    od = _density(preprocess.normalise_background(rgb, background)[..., :2])
    return od.sum(axis=-1).astype(np.float32)


def refine_box(frame_rgb: np.ndarray, background: np.ndarray, box: np.ndarray,
               s: RefineSettings = RefineSettings(), table: np.ndarray | None = None) -> np.ndarray:
    """``box`` (x1, y1, x2, y2 in frame pixels) tightened to the cell it holds, or unchanged.

    Only the search window's pixels are converted to optical density (a frame
    has a few boxes; the live loop cannot afford the whole frame each time).
    """
    box = np.asarray(box, np.float32)
    h, w = frame_rgb.shape[:2]
    x1, y1, x2, y2 = (float(v) for v in box)
    bw, bh = x2 - x1, y2 - y1
    rx1, ry1 = int(max(0.0, x1 - s.pad * bw)), int(max(0.0, y1 - s.pad * bh))
    rx2, ry2 = int(min(w, x2 + s.pad * bw + 1)), int(min(h, y2 + s.pad * bh + 1))
    if ry2 - ry1 < 4 or rx2 - rx1 < 4:
        return box
    region = absorbance(frame_rgb[ry1:ry2, rx1:rx2], background, table)
    region = cv2.GaussianBlur(region, (0, 0), max(0.5, s.blur * max(bw, bh)))
    lo, hi = np.percentile(region, (1.0, 99.5))
    if hi - lo < 1e-6:  # a flat window: nothing to segment
        return box
    u8 = np.clip((region - lo) / (hi - lo) * 255.0, 0, 255).astype(np.uint8)
    _, mask = cv2.threshold(u8, 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if n < 2:
        return box
    # the blob that covers most of the box's central half is the cell the box was drawn for
    cx1, cy1 = max(0, int(x1 + bw / 4) - rx1), max(0, int(y1 + bh / 4) - ry1)
    cx2, cy2 = int(x2 - bw / 4) - rx1 + 1, int(y2 - bh / 4) - ry1 + 1
    counts = np.bincount(labels[cy1:cy2, cx1:cx2].ravel(), minlength=n)
    counts[0] = 0
    k = int(np.argmax(counts))
    if counts[k] == 0:
        return box
    sx, sy, sw, sh, area = (int(v) for v in stats[k])
    if sw * sh < s.min_area * bw * bh:
        return box
    if sx == 0 or sy == 0 or sx + sw >= labels.shape[1] or sy + sh >= labels.shape[0]:
        return box  # cut by the window: part of something larger than the box
    contours, _ = cv2.findContours((labels == k).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    hull = cv2.contourArea(cv2.convexHull(max(contours, key=cv2.contourArea)))
    if hull <= 0 or area / hull < s.min_solidity:
        return box
    blob = np.array([sx + rx1 - s.margin * sw, sy + ry1 - s.margin * sh,
                     sx + sw + rx1 + s.margin * sw, sy + sh + ry1 + s.margin * sh], np.float32)
    moved = box + s.weight * (blob - box)
    # inwards only: x1/y1 may grow, x2/y2 may shrink
    return np.concatenate([np.maximum(moved[:2], box[:2]), np.minimum(moved[2:], box[2:])]).astype(np.float32)


def refine_boxes(frame_rgb: np.ndarray, boxes: np.ndarray, s: RefineSettings = RefineSettings(),
                 background: np.ndarray | None = None) -> np.ndarray:
    """Every box of one frame refined (N x 4), against the frame's background (estimated once if not given)."""
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    if not len(boxes):
        return boxes
    bg = preprocess.estimate_background(frame_rgb) if background is None else background
    table = density_table(bg)  # once per frame, shared by its boxes
    return np.stack([refine_box(frame_rgb, bg, b, s, table) for b in boxes])
