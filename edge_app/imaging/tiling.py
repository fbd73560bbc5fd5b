"""A frame resized by its camera's scale factor, cut into detector-sized windows.

When a camera has fewer pixels per micron than the detector's training frames,
its frame is enlarged (``edge_app.imaging.scale``) until its cells have the
trained size, which makes it larger than the detector's input: it is then cut
into overlapping windows of exactly that input size. The overlap is wider than
the largest leukocyte at the trained size, so every cell lies whole inside at
least one window; a box cut by a window's inner edge is dropped (the
neighbouring window holds the whole cell). A frame that stays smaller than the
input (a camera with more pixels per micron) becomes one window, padded with
plain background grey, as the letterbox pads.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import cv2
import numpy as np

from edge_app.imaging import preprocess

logger = logging.getLogger(__name__)

# Overlap between neighbouring windows (detector-input pixels): more than the
# largest leukocyte's box at the trained size (about 80 px on TXL-PBC's PBC frames).
OVERLAP = 96
# A box whose side lies this close to a window edge inside the frame is a cut cell.
EDGE_MARGIN = 3.0


@dataclass(frozen=True)
class Window:
    x0: int  # top-left corner in the resized frame (detector-input pixels)
    y0: int
    inner: tuple[bool, bool, bool, bool]  # left, top, right, bottom edge lies inside the frame


def _starts(length: int, tile: int, overlap: int) -> list[int]:
    if length <= tile:
        return [0]
    n = math.ceil((length - overlap) / (tile - overlap))
    return [round(i * (length - tile) / (n - 1)) for i in range(n)] if n > 1 else [0]


def plan(frame_shape, scale: float, size: tuple[int, int] = preprocess.DETECTOR_SIZE,
         overlap: int = OVERLAP) -> tuple[tuple[int, int], list[Window]]:
    """(resized frame (w, h), windows) for a frame enlarged by ``scale`` (frame px -> detector px)."""
    h, w = frame_shape[:2]
    rw, rh = max(1, round(w * scale)), max(1, round(h * scale))
    xs, ys = _starts(rw, size[0], overlap), _starts(rh, size[1], overlap)
    windows = [Window(x, y, (x > 0, y > 0, x + size[0] < rw, y + size[1] < rh)) for y in ys for x in xs]
    return (rw, rh), windows


def windows_input(frame_rgb: np.ndarray, scale: float, background: np.ndarray,
                  size: tuple[int, int] = preprocess.DETECTOR_SIZE) -> tuple[list[np.ndarray], list[Window]]:
    """The detector tensors (1, H, W, 3) float32 of every window, and the windows."""
    (rw, rh), windows = plan(frame_rgb.shape, scale, size)
    interp = cv2.INTER_LINEAR if scale > 1 else cv2.INTER_AREA
    resized = cv2.resize(frame_rgb, (rw, rh), interpolation=interp)
    norm = preprocess.normalise_background(resized, background)
    tw, th = size
    out = []
    for win in windows:
        tile = np.full((th, tw, 3), preprocess.BACKGROUND_LEVEL, np.float32)
        part = norm[win.y0:win.y0 + th, win.x0:win.x0 + tw]
        tile[:part.shape[0], :part.shape[1]] = part
        out.append(tile[None])
    return out, windows


def keep_whole(boxes: np.ndarray, win: Window, size: tuple[int, int] = preprocess.DETECTOR_SIZE) -> np.ndarray:
    """Mask of the boxes (window pixels) not cut by one of the window's inner edges."""
    tw, th = size
    left, top, right, bottom = win.inner
    keep = np.ones(len(boxes), bool)
    if left:
        keep &= boxes[:, 0] > EDGE_MARGIN
    if top:
        keep &= boxes[:, 1] > EDGE_MARGIN
    if right:
        keep &= boxes[:, 2] < tw - EDGE_MARGIN
    if bottom:
        keep &= boxes[:, 3] < th - EDGE_MARGIN
    return keep
