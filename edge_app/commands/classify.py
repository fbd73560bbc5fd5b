"""``wbc-counter classify --json IMAGE...``: each image is one cell crop.

Prints ``{"image": PATH, "label": NAME, "probs": {NAME: P, ...}}`` per line.
"""

from __future__ import annotations

from edge_app.commands._images import add_image_args, for_each_image, load_bundle


def add_parser(sub):
    p = sub.add_parser("classify", help="type single-cell crops (one cell per image)")
    add_image_args(p)
    return p


def main(args) -> int:
    bundle = load_bundle(args)

    def handle(path, rgb):
        c = bundle.classifier(rgb)
        return {"image": path, "label": c.label, "probs": c.probs_dict()}

    try:
        return for_each_image(args.images, handle)
    finally:
        bundle.close()
