"""``wbc-counter classify --json IMAGE...``: each image is one cell crop.

Prints ``{"image": PATH, "label": NAME, "probs": {NAME: P, ...}, "no_leukocyte": BOOL}`` per
line, with ``"no_leukocyte_reason"`` when ``no_leukocyte`` is true: the image holds no leukocyte
(too small, black, no cell near the centre, no stained nucleus; ``framing.no_leukocyte``), so its
label means nothing.

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
        if min(rgb.shape[:2]) < framing.MIN_CELL_SIDE:  # nothing for the networks to look at
            square, crop = None, rgb
        else:
            square = None if args.as_given else framing.kiosk_square(bundle.detector, rgb)
            crop = framing.kiosk_crop(rgb, square)
        c = bundle.classifier(crop)
        why = framing.no_leukocyte(rgb, square, None if args.as_given else square is not None)
        out = {"image": path, "label": c.label, "probs": c.probs_dict(), "no_leukocyte": why is not None}
        if why:
            out["no_leukocyte_reason"] = why
        return out

    try:
        return for_each_image(args.images, handle)
    finally:
        bundle.close()
