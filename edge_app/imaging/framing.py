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


def frame_cell(detector, image_rgb: np.ndarray) -> np.ndarray:
    """``image_rgb`` framed as the kiosk frames its cell; unchanged if the detector finds none near the centre."""
    square = kiosk_square(detector, image_rgb)
    if square is None:
        logger.debug("no cell found near the centre of a %dx%d image: classifying it whole", *image_rgb.shape[1::-1])
    return kiosk_crop(image_rgb, square)
