"""Frame a single-cell image the way the kiosk frames a detected cell.

The kiosk never classifies a whole image: it cuts a square of 1.4 times the
detector box's longest side around each detected cell
(``preprocess.cell_crop``), so the cell fills about 70% of the crop. A
single-cell photo from an analyser or a dataset is framed by its own camera
(a PBC cell fills about 40% of its photo). ``wbc-counter classify`` and the
evaluation therefore find the photographed cell with the detector and hand the
classifier the kiosk's square around it, so that a photo is typed as the kiosk
would type that cell.
"""

from __future__ import annotations

import logging

import numpy as np

from edge_app.imaging import preprocess

logger = logging.getLogger(__name__)

# A detection whose centre is further than this share of the side from the
# image's centre is another cell at the image's edge, not the photographed one.
MAX_CENTRE_OFFSET = 0.25
# The image is known to hold a cell, so a weaker peak than the kiosk's counting
# threshold is accepted (the threshold scripts.training.kiosk_framing was measured with).
FIND_THRESHOLD = 0.2


def centred_box(detections, shape) -> np.ndarray | None:
    """The box of the detection nearest the image's centre, or None if none is near it."""
    h, w = shape[:2]
    best, best_d = None, MAX_CENTRE_OFFSET
    for det in detections:
        if det.score < FIND_THRESHOLD:
            continue
        x1, y1, x2, y2 = det.box
        d = max(abs((x1 + x2) / 2 - w / 2) / w, abs((y1 + y2) / 2 - h / 2) / h)
        if d <= best_d:
            best, best_d = det.box, d
    return None if best is None else np.asarray(best, np.float32)


def kiosk_square(detector, image_rgb: np.ndarray) -> np.ndarray | None:
    """The kiosk's crop square (x1, y1, x2, y2) around the photographed cell, or None
    (``detector`` is an ``inference.Detector``)."""
    box = centred_box(detector(image_rgb, threshold=FIND_THRESHOLD), image_rgb.shape)
    return None if box is None else np.array(preprocess.square_box(box), np.float32)


def kiosk_crop(image_rgb: np.ndarray, square) -> np.ndarray:
    """The crop the kiosk would hand the classifier (the image itself if no cell was found)."""
    if square is None or not np.all(np.isfinite(square)):
        return image_rgb
    return preprocess.crop_square(image_rgb, tuple(int(v) for v in square))


# No leukocyte in the image (``no_leukocyte``). A cell is at least this many pixels across at any
# magnification the product takes; the plasma of a lit slide is brighter than the counting gate's
# darkest frame ([quality] min_brightness default); a leukocyte's nucleus absorbs red light
# (haematoxylin / methylene blue), red cells and plasma hardly do. The stain threshold: the 99th
# percentile of the red channel's optical density, background-normalised, is 0.29 or more in every
# one of the 240 calibration crops (calibration/crops: BCCD, Chula, PBC, Raabin cells) and 0.06-0.38
# in 60 cell-free 96x96 patches of calibration/frames, of which none with a centred detection reaches 0.28.
MIN_CELL_SIDE = 16
MIN_BACKGROUND = 40.0
MIN_NUCLEAR_OD = 0.25


def nuclear_od(image_rgb: np.ndarray) -> float:
    """99th percentile of the red channel's optical density against the image's own background."""
    x = preprocess.normalise_background(image_rgb)
    od = np.maximum(-np.log((x[..., 0] + 1.0) / (preprocess.BACKGROUND_LEVEL + 1.0)), 0.0)
    return float(np.percentile(od, 99))


def no_leukocyte(image_rgb: np.ndarray, square=None, detected: bool | None = None) -> str | None:
    """Why the image holds no leukocyte, or None when it may hold one. ``detected``: whether the
    detector found a cell near the centre (``kiosk_square`` gave ``square``); None = not asked."""
    h, w = image_rgb.shape[:2]
    if min(h, w) < MIN_CELL_SIDE:
        return f"image of {w}x{h} pixels is too small to hold a cell (at least {MIN_CELL_SIDE} px a side)"
    if float(preprocess.estimate_background(image_rgb).mean()) < MIN_BACKGROUND:
        return "image too dark: no lit slide background"
    if detected is False:
        return "the detector finds no cell near the centre"
    crop = kiosk_crop(image_rgb, square)
    if nuclear_od(crop) < MIN_NUCLEAR_OD:
        return "no stained nucleus (only plasma or red cells)"
    return None


def frame_cell(detector, image_rgb: np.ndarray) -> np.ndarray:
    """``image_rgb`` framed as the kiosk frames its cell; unchanged if the detector finds none near the centre."""
    square = kiosk_square(detector, image_rgb)
    if square is None:
        logger.debug("no cell found near the centre of a %dx%d image: classifying it whole", *image_rgb.shape[1::-1])
    return kiosk_crop(image_rgb, square)
