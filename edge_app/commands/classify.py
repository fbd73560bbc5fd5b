"""``wbc-counter classify --json IMAGE...``: each image is one cell crop.

Prints ``{"image": PATH, "label": NAME, "probs": {NAME: P, ...}}`` per line.

The cell is typed as the kiosk would type it: the detector finds the cell
nearest the image's centre and the classifier sees the kiosk's square around it
(``edge_app.imaging.framing``); an image in which no cell is found is classified whole.
``--as-given`` classifies every image whole.
"""

from __future__ import annotations

from edge_app.commands._images import add_image_args, for_each_image, load_bundle
from edge_app.imaging import framing


def add_parser(sub):
    p = sub.add_parser("classify", help="type single-cell crops (one cell per image)")
    add_image_args(p)
    p.add_argument("--as-given", action="store_true",
                   help="classify each image whole instead of framing its cell as the kiosk does")
    return p


def main(args) -> int:
    bundle = load_bundle(args)

    def handle(path, rgb):
        crop = rgb if args.as_given else framing.frame_cell(bundle.detector, rgb)
        c = bundle.classifier(crop)
        return {"image": path, "label": c.label, "probs": c.probs_dict()}

    try:
        return for_each_image(args.images, handle)
    finally:
        bundle.close()
