"""Score exported model folders on the *val* splits only: the figures a new model is chosen by.

    python -m scripts.training.select_model models /tmp/candidate --json /tmp/select.json

No test split is read. Each folder is run through the product's own INT8 path
(``scripts.training.evaluate``'s runners, the manifest's test-time views) and gets:

- ``pbc_photo_macro_f1_five``: PBC val photos as stored (what ``wbc-counter
  classify`` sees), macro-F1 over the five classes; "other" photos count as
  truth, so calling them a monocyte costs monocyte precision;
- ``pbc_kiosk`` / ``raabin_kiosk``: five-class accuracy on PBC and Raabin val
  photos cut as the kiosk cuts a detected cell (``scripts.training.kiosk_framing``);
- ``chula_e2e`` / ``bccd_e2e``: val frames end to end at the runtime's score
  threshold (detected and typed);
- ``camera_mean``: the mean of those four, each camera as the kiosk uses it
  (the rule that chose 1.4.0 and 1.5.0, see the model card);
- ``pbc_kiosk_macro_f1_five``: PBC macro-F1 over the five classes at kiosk
  framing, which is what ``wbc-counter classify`` sees since it frames the cell;
- ``pooled_classify`` / ``pooled_photo``: five-class accuracy over every val
  crop of PBC, Raabin, Chula and BCCD, framed as ``classify`` frames them, and
  as given (``classify --as-given``);
- ``pbc_noise35_classify`` / ``pbc_noise35_photo``: five-class accuracy on PBC
  val photos under Gaussian noise alpha 0.35 (the evaluation's protocol, added
  to the photo as stored), framed as ``classify`` frames them, and as given;
- ``det_ap50`` / ``det_ap75``: the INT8 detector's AP at IoU 0.5 and 0.75 on
  the val frames of each camera, decoded as the manifest says (box vote,
  mirrored pass), and ``det_ap50_mean`` / ``det_ap75_mean`` over the cameras.

``--box-scale CAMERA=FACTOR`` scores that camera (``chula``, ``bccd``) as a
device set to ``[model] box_scale = FACTOR`` would see it: its val frames,
end to end, and its crops' kiosk framing.

The decision rule itself is written down, before a candidate is scored, in
``models/training/`` (one file per candidate).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]

from edge_app.model.bundle import Manifest  # noqa: E402
from scripts.training import box_fit, eval_metrics, evaluate  # noqa: E402

NOISE_ALPHA = 0.35  # the noise target is set at this alpha


def score(model_dir: Path, scales: dict[str, float] | None = None) -> dict:
    manifest = Manifest.load(model_dir)
    clf = evaluate.classifier_runners(manifest)["tflite_int8"]
    det = evaluate.detector_runners(manifest)["tflite_int8"]
    row = summarise(manifest.version, evaluate.eval_kiosk_framing(manifest, clf, "val", scales),
                    evaluate.eval_end_to_end_val(det, clf, evaluate.THRESHOLD, scales))
    row["box_scale"] = dict(scales or {})
    crops, truth = evaluate.all_source_crops("pbc", ("val",))
    row["pbc_noise35_classify"] = evaluate.noisy_five_class(clf, det, crops, truth, NOISE_ALPHA)
    row["pbc_noise35_photo"] = evaluate.noisy_five_class(clf, None, crops, truth, NOISE_ALPHA)
    row.update(detector_val_ap(det, scales))
    return row


def detector_val_ap(det, scales: dict[str, float] | None = None) -> dict:
    """AP at IoU 0.5 and 0.75 per camera on the val frames (0.75: how tight the boxes are)."""
    out = {"det_ap50": {}, "det_ap75": {}}
    for src, (dets, gts) in evaluate.detections_on_val(det, scales).items():
        for key, ap in eval_metrics.ap50_ap75(dets, gts).items():
            out[f"det_{key}"][src] = ap
    for iou in (50, 75):
        out[f"det_ap{iou}_mean"] = float(np.mean(list(out[f"det_ap{iou}"].values())))
    return out


def summarise(version: str, kiosk: dict, e2e: dict) -> dict:
    """The selection figures from ``eval_kiosk_framing`` (val) and ``eval_end_to_end_val`` results."""
    row = {
        "version": version,
        "pbc_photo_macro_f1_five": kiosk["pbc"]["photo"]["macro_f1_five"],
        "pbc_photo_five_class": kiosk["pbc"]["photo"]["five_class_accuracy"],
        "raabin_photo_five_class": kiosk["raabin"]["photo"]["five_class_accuracy"],
        "pbc_kiosk": kiosk["pbc"]["kiosk"]["five_class_accuracy"],
        "raabin_kiosk": kiosk["raabin"]["kiosk"]["five_class_accuracy"],
        "chula_e2e": e2e["chula"]["accuracy"],
        "bccd_e2e": e2e["bccd"]["accuracy"],
        "pbc_kiosk_macro_f1_five": kiosk["pbc"]["kiosk"]["macro_f1_five"],
        "pooled_classify": evaluate.pooled_five(kiosk, "kiosk"),
        "pooled_photo": evaluate.pooled_five(kiosk, "photo"),
        "pbc_photo_confusion": kiosk["pbc"]["photo"]["confusion"],
        "pbc_kiosk_confusion": kiosk["pbc"]["kiosk"]["confusion"],
    }
    # each camera counts the same, however many cells its val split holds
    row["camera_mean"] = (row["pbc_kiosk"] + row["raabin_kiosk"] + row["chula_e2e"] + row["bccd_e2e"]) / 4
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model_dirs", type=Path, nargs="+")
    ap.add_argument("--box-scale", action="append", default=[], metavar="CAMERA=FACTOR",
                    help="score this camera as a device with [model] box_scale = FACTOR (repeatable)")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args(argv)
    try:
        scales = box_fit.parse_scales(args.box_scale)
    except ValueError as exc:
        ap.error(str(exc))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    rows = {str(d): score(d, scales) for d in args.model_dirs}
    text = json.dumps(rows, indent=1)
    if args.json:
        args.json.write_text(text)
    for d, row in rows.items():
        shown = {k: v for k, v in row.items() if not k.endswith("_confusion")}
        print(d, {k: round(v, 4) if isinstance(v, float) else v for k, v in shown.items()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
