"""``wbc-counter detect --json IMAGE...``: find and type every leukocyte.

Prints ``{"image": PATH, "cells": [{"box": [x1, y1, x2, y2], "label": NAME,
"score": S, "probs": {...}}, ...]}`` per line; boxes in the image's pixels.

With ``[capture] pixel_scale = "auto"`` (the default) the camera's pixel scale
is measured from the images themselves: images of one size are taken as one
camera, and its scale is measured from the first eight of them
(``edge_app.imaging.scale``; from fewer, the size must leave the trained range
by a wider margin). Images of a trained camera's scale are detected exactly as
without it.
"""

from __future__ import annotations

import logging

from edge_app.commands._images import add_image_args, for_each_image, load_bundle
from edge_app.imaging import preprocess
from edge_app.imaging.scale import MEASURE_FRAMES, ScaleEstimate

logger = logging.getLogger(__name__)


def add_parser(sub):
    p = sub.add_parser("detect", help="detect and type leukocytes in whole fields")
    add_image_args(p)
    return p


def measure_per_size(bundle, paths) -> dict[tuple[int, int], ScaleEstimate]:
    """(height, width) -> the scale measured from the first MEASURE_FRAMES readable images of that size.
    Unreadable files are skipped here; the main pass reports them."""
    groups: dict[tuple[int, int], list] = {}
    for path in paths:
        try:
            rgb = preprocess.read_rgb(path)
        except (OSError, ValueError):
            continue
        frames = groups.setdefault(rgb.shape[:2], [])
        if len(frames) < MEASURE_FRAMES:
            frames.append(rgb)
    scales = {shape: bundle.measure_scale(frames) for shape, frames in groups.items()}
    for (h, w), est in scales.items():
        if est.factor != 1.0:
            logger.info("%dx%d images: red cells %.1f px across, so frames are enlarged %.2fx for the detector",
                        w, h, est.rbc_diameter_px, est.factor)
    return scales


def main(args) -> int:
    bundle = load_bundle(args)
    scales = measure_per_size(bundle, args.images) if bundle.auto_scale else {}

    def handle(path, rgb):
        if bundle.auto_scale:
            est = scales.get(rgb.shape[:2])
            bundle.detector.scale = est.factor if est is not None else 1.0
        cells = []
        for det in bundle.detector(rgb):
            c = bundle.classifier(preprocess.cell_crop(rgb, det.box))
            cells.append({"box": [round(float(v), 1) for v in det.box], "label": c.label,
                          "score": round(det.score, 4), "probs": c.probs_dict()})
        return {"image": path, "cells": cells}

    try:
        return for_each_image(args.images, handle)
    finally:
        bundle.close()
