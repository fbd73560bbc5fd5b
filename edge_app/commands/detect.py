"""``wbc-counter detect --json IMAGE...``: find and type every leukocyte.

Prints ``{"image": PATH, "cells": [{"box": [x1, y1, x2, y2], "label": NAME,
"score": S, "probs": {...}}, ...]}`` per line; boxes in the image's pixels.
"""

from __future__ import annotations

from edge_app.commands._images import add_image_args, for_each_image, load_bundle
from edge_app.imaging import preprocess


def add_parser(sub):
    p = sub.add_parser("detect", help="detect and type leukocytes in whole fields")
    add_image_args(p)
    return p


def main(args) -> int:
    bundle = load_bundle(args)

    def handle(path, rgb):
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
