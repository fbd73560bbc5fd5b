"""How tight the shipped detector's boxes are, per camera and split.

    python -m scripts.training.box_fit models --splits train val --json /tmp/box_fit.json

For each frame camera (BCCD, Chula, TXL-PBC) and each split asked for, the
INT8 detector (decoded as the manifest says) gives AP at IoU 0.5 and 0.75 and,
over the labelled cells matched by a detection at IoU >= 0.3, the median and
quartiles of the ratio of the detected box's longer side to the labelled one's.
A ratio well above 1 on one camera only is a box-regression bias, not a miss.
Train figures say whether the network fits its own frames; they never choose
a model (``scripts.training.select_model`` scores val only, and nothing here reads test
unless asked).

Each train row also carries ``suggested_box_scale``: 1 / that median ratio,
the per-camera ``[model] box_scale`` a device with that camera would be set
to (``scripts/research/protocols/plan_boxscale.md`` says when one is adopted).
``--box-scale CAMERA=FACTOR`` scores a camera's frames with boxes so scaled.

A site fits its own camera from a few labelled frames of it, without the
training data (no dataset cache is read):

    python -m scripts.training.box_fit models --labels site/boxes.csv

``boxes.csv`` has a row per leukocyte, ``image,x1,y1,x2,y2`` in the image's
own pixels (image paths relative to the CSV's folder, or to ``--images DIR``;
a ``cell`` column, if present, keeps only ``WBC`` rows, the layout of the
shared datasets' ``boxes.csv``). The row it prints (key ``site``) carries the same figures and the
``suggested_box_scale`` for that device's ``[model] box_scale``, and ``at_suggested_scale``: AP50 / AP75
at that scale with the boxes as regressed (``raw``) and refined (``refined``, ``[model] box_refine =
true``), so the site sees whether refinement helps its camera.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]

from edge_app.imaging import preprocess  # noqa: E402
from edge_app.model.bundle import Detector, Manifest, create_backend  # noqa: E402
from scripts.training import data, eval_metrics, evaluate  # noqa: E402

logger = logging.getLogger(__name__)

CAMERAS = ("bccd", "chula", "txl_pbc")
MATCH_IOU = 0.3  # loose enough to pair a 1.4x too large box (IoU about 0.5) with its cell
SCALE_RANGE = (0.5, 1.5)  # what [model] box_scale accepts
AP_THRESHOLD = 0.05  # detections kept for AP, as scripts.training.evaluate scores them


def suggested_scale(ratios: np.ndarray) -> float:
    """The box scale that would make the median matched box the labelled size (2 decimals, as configured)."""
    if not len(ratios):
        raise ValueError("no labelled cell was matched: no box scale can be fitted")
    return round(float(np.clip(1.0 / np.median(ratios), *SCALE_RANGE)), 2)


def parse_scales(specs: list[str]) -> dict[str, float]:
    """``["chula=0.89"]`` -> ``{"chula": 0.89}``, each camera known and each factor in range."""
    out = {}
    for spec in specs:
        cam, sep, value = spec.partition("=")
        if not sep or cam not in CAMERAS:
            raise ValueError(f"--box-scale {spec!r}: expected CAMERA=FACTOR with CAMERA one of {CAMERAS}")
        try:
            out[cam] = float(value)
        except ValueError:
            raise ValueError(f"--box-scale {spec!r}: {value!r} is not a number") from None
        if not SCALE_RANGE[0] <= out[cam] <= SCALE_RANGE[1]:
            raise ValueError(f"--box-scale {spec!r}: factor outside {SCALE_RANGE}")
    return out


def side_ratios(dets: list[tuple[np.ndarray, np.ndarray]], gts: list[np.ndarray]) -> np.ndarray:
    """Detected / labelled longer side for each labelled cell whose best detection has IoU >= MATCH_IOU."""
    out = []
    for (boxes, _), gt in zip(dets, gts):
        if not len(gt) or not len(boxes):
            continue
        iou = eval_metrics.iou_matrix(gt, boxes)
        for g, row in zip(gt, iou):
            j = int(np.argmax(row))
            if row[j] >= MATCH_IOU:
                b = boxes[j]
                out.append(max(b[2] - b[0], b[3] - b[1]) / max(g[2] - g[0], g[3] - g[1], 1e-6))
    return np.asarray(out, np.float64)


def box_fit(model_dir: Path, splits: tuple[str, ...], scales: dict[str, float] | None = None,
            cameras: tuple[str, ...] = CAMERAS) -> dict:
    manifest = Manifest.load(model_dir)
    det = evaluate.detector_runners(manifest)["tflite_int8"]
    d = data.load("det")
    res: dict = {"version": manifest.version, "box_scale": dict(scales or {})}
    for split in splits:
        for cam in cameras:
            ix = np.nonzero((d["sources"] == cam) & (d["splits"] == split))[0]
            if not len(ix):
                continue
            det.box_scale = (scales or {}).get(cam, 1.0)
            dets = [evaluate.detect_arrays(det, d["frames"][i]) for i in ix]
            gts = [d["boxes"][i].reshape(-1, 4) for i in ix]
            r = side_ratios(dets, gts)
            row = dict(eval_metrics.ap50_ap75(dets, gts), frames=int(len(ix)), cells=int(sum(map(len, gts))),
                       matched=int(len(r)), box_scale=det.box_scale)
            if len(r):
                row["side_ratio_quartiles"] = [float(q) for q in np.percentile(r, [25, 50, 75])]
                if split == "train":
                    # relative to the boxes as scored, so a row scored at factor f suggests f * this
                    row["suggested_box_scale"] = round(det.box_scale * suggested_scale(r), 2)
            res[f"{cam}/{split}"] = row
            logger.info("%s %s: %s", cam, split, {k: (round(v, 3) if isinstance(v, float) else v)
                                                   for k, v in row.items()})
    return res


def read_labels(path: Path, images: Path | None = None) -> dict[Path, np.ndarray]:
    """A site's ``boxes.csv`` -> {image path: (N, 4) leukocyte boxes}; errors name the file and row."""
    out: dict[Path, list] = {}
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = {"image", "x1", "y1", "x2", "y2"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path}: missing column(s) {sorted(missing)}; expected image,x1,y1,x2,y2")
        for n, row in enumerate(reader, start=2):
            if row.get("cell", "WBC") != "WBC":
                continue
            try:
                box = [float(row[k]) for k in ("x1", "y1", "x2", "y2")]
            except (TypeError, ValueError):
                raise ValueError(f"{path} line {n}: box coordinates must be numbers") from None
            if box[2] <= box[0] or box[3] <= box[1]:
                raise ValueError(f"{path} line {n}: x2/y2 must be larger than x1/y1")
            out.setdefault((images or path.parent) / row["image"], []).append(box)
    if not out:
        raise ValueError(f"{path}: no leukocyte rows")
    return {k: np.array(v, np.float32) for k, v in out.items()}


def site_fit(model_dir: Path, labels: Path, images: Path | None = None, scale: float = 1.0) -> dict:
    """The box figures and suggested scale of one site's labelled frames (INT8, manifest decoding)."""
    manifest = Manifest.load(model_dir)
    # the product's own INT8 TFLite path, so a site needs nothing beyond the runtime install
    det = Detector.for_manifest(create_backend(manifest, "detector", "tflite", "int8"), manifest, AP_THRESHOLD,
                                box_scale=scale)
    frames, gts = [], []
    for image, gt in read_labels(labels, images).items():
        try:
            frames.append(preprocess.read_rgb(str(image)))
        except (OSError, ValueError) as exc:
            raise ValueError(f"{labels}: cannot read {image}: {exc}") from None
        gts.append(gt)
    dets = [evaluate.detect_arrays(det, f) for f in frames]
    r = side_ratios(dets, gts)
    row = dict(eval_metrics.ap50_ap75(dets, gts), frames=len(gts), cells=int(sum(map(len, gts))),
               matched=int(len(r)), box_scale=scale)
    if len(r):
        row["side_ratio_quartiles"] = [float(q) for q in np.percentile(r, [25, 50, 75])]
        row["suggested_box_scale"] = round(scale * suggested_scale(r), 2)
        row["at_suggested_scale"] = {}
        for name, refine in (("raw", False), ("refined", True)):
            with evaluate.calibrated(det, {"box_scale": row["suggested_box_scale"], "box_refine": refine}):
                row["at_suggested_scale"][name] = eval_metrics.ap50_ap75([evaluate.detect_arrays(det, f)
                                                                          for f in frames], gts)
    return {"version": manifest.version, "site": row}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model_dir", type=Path)
    ap.add_argument("--splits", nargs="+", default=["train", "val"], choices=("train", "val", "test"))
    ap.add_argument("--cameras", nargs="+", default=list(CAMERAS), choices=CAMERAS)
    ap.add_argument("--box-scale", action="append", default=[], metavar="CAMERA=FACTOR",
                    help="score this camera's frames with boxes scaled about their centres (repeatable)")
    ap.add_argument("--labels", type=Path, metavar="CSV",
                    help="fit one site's camera from its own labelled frames instead (image,x1,y1,x2,y2)")
    ap.add_argument("--images", type=Path, metavar="DIR", help="with --labels: the folder the image paths are in")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        scales = parse_scales(args.box_scale)
        if args.labels is not None:
            if scales:
                raise ValueError("--box-scale names a training camera; with --labels the site is fitted as regressed")
            res = site_fit(args.model_dir, args.labels, args.images)
        else:
            res = box_fit(args.model_dir, tuple(args.splits), scales, tuple(args.cameras))
    except (OSError, ValueError) as exc:
        print(f"box_fit: {exc}", file=sys.stderr)
        return 2
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
