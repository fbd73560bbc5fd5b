"""AP with and without the image-based box refinement (``edge_app.imaging.boxrefine``), per camera.

    python -m scripts.research.box_refine_study models --splits train val --json runs/refine_val.json
    python -m scripts.research.box_refine_study models --splits val --cameras chula --box-scale chula=0.89 --end-to-end
    python -m scripts.research.box_refine_study models --torch-detector runs/fold_cell_s26/detector.pt \\
        --fold-slides L-8,N-3B --fit-scale --json runs/refine_fold.json

The first form scores the shipped INT8 TFLite detector (decoded as its manifest
says). The second scores a training checkpoint in FP32 through the same
decoding (mirrored pass and box vote as the manifest says) on the Chula train
slides it was trained without (``scripts.training.train --fold-slides``): slides that
neither the detector nor the refinement's settings ever saw. With
``--fold-slides`` the train rows leave those slides out, so the settings'
training frames and the fold never overlap. Nothing here reads test unless
``--splits test`` is asked for.

``--box-scale CAMERA=FACTOR`` scores that camera as a device with ``[model]
box_scale`` set (raw and refined both at that scale); ``--end-to-end`` adds the
detected-and-typed count of the Chula and BCCD frames of each split asked for
(the shipped INT8 classifier, as ``scripts.training.evaluate`` counts it).
``--fit-scale`` (with ``--torch-detector``) fits the checkpoint's own factor
on the Chula train frames it trained on (``scripts.training.box_fit.suggested_scale``)
and also scores the fold at that factor.

Raw and refined boxes come from the runtime's own ``Detector`` with its
``refine`` switch off and on, as a device with ``[model] box_refine`` sees them.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]

from edge_app.imaging import boxrefine  # noqa: E402
from edge_app.model.bundle import Detector, Manifest  # noqa: E402
from scripts.training import box_fit, data, eval_metrics, evaluate  # noqa: E402

logger = logging.getLogger(__name__)


class TorchDetectorBackend:
    """A detector checkpoint behind the runtime's ``Backend.infer`` (NHWC pixels in, NHWC maps out)."""

    def __init__(self, ckpt: Path):
        import torch

        from scripts.training.wbcnet import Deployable
        from scripts.training.wbcnet import Detector as Net

        state = torch.load(ckpt, map_location="cpu", weights_only=False)
        net = Net(width=state["width"], stride=state.get("stride", 16))
        net.load_state_dict(state["state_dict"])
        self.model, self.torch = Deployable(net).eval(), torch

    def infer(self, x: np.ndarray) -> list[np.ndarray]:
        with self.torch.no_grad():
            return [t.numpy() for t in self.model(self.torch.from_numpy(np.ascontiguousarray(x)))]


def slide_of(key: str) -> str:
    return key.rsplit("_", 1)[0]


def detections(det: Detector, frames, scale: float, refine: bool) -> list[tuple[np.ndarray, np.ndarray]]:
    with evaluate.calibrated(det, {"box_scale": scale, "box_refine": refine}):
        return [evaluate.detect_arrays(det, f) for f in frames]


def score(det: Detector, frames, gts, scale: float = 1.0) -> dict:
    raw, refined = detections(det, frames, scale, False), detections(det, frames, scale, True)
    row = {"frames": len(frames), "cells": int(sum(map(len, gts))), "box_scale": scale}
    for name, dets in (("raw", raw), ("refined", refined)):
        r = box_fit.side_ratios(dets, gts)
        row[name] = dict(eval_metrics.ap50_ap75(dets, gts),
                         median_side_ratio=float(np.median(r)) if len(r) else None)
    row["changed_boxes"] = int(sum(int((np.abs(a[0] - b[0]) > 1e-3).any(axis=1).sum())
                                   for a, b in zip(raw, refined)))
    row["boxes"] = int(sum(len(b) for b, _ in raw))
    return row


def end_to_end_rows(manifest: Manifest, det: Detector, splits, cameras, scales: dict[str, float]) -> dict:
    """Detected and typed (INT8 classifier, IoU 0.5) per frame camera and split: 1.0 raw, and at the
    camera's scale raw and refined."""
    clf = evaluate.classifier_runners(manifest)["tflite_int8"]
    out = {}
    for split in splits:
        for cam in ("chula", "bccd"):
            if cam not in cameras:
                continue
            items = evaluate.e2e_items(cam, split)
            scale = scales.get(cam, 1.0)
            for name, (s, refine) in {"raw@1.0": (1.0, False), f"raw@{scale}": (scale, False),
                                      f"refined@{scale}": (scale, True)}.items():
                with evaluate.calibrated(det, {"box_scale": s, "box_refine": refine}):
                    r = evaluate.end_to_end(det, clf, items, evaluate.THRESHOLD)
                out[f"{cam}/{split}/{name}"] = r
                logger.info("end to end %s/%s %s: %d of %d", cam, split, name, r["detected_and_typed"], r["cells"])
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model_dir", type=Path)
    ap.add_argument("--splits", nargs="+", default=["val"], choices=("train", "val", "test"))
    ap.add_argument("--cameras", nargs="+", default=list(box_fit.CAMERAS), choices=box_fit.CAMERAS)
    ap.add_argument("--fold-slides", default="", help="Chula train slides a --torch-detector was trained without")
    ap.add_argument("--torch-detector", type=Path, help="score this checkpoint (FP32) on the fold slides instead")
    ap.add_argument("--box-scale", action="append", default=[], metavar="CAMERA=FACTOR",
                    help="also score this camera as a device with [model] box_scale = FACTOR (repeatable)")
    ap.add_argument("--fit-scale", action="store_true",
                    help="with --torch-detector: fit its Chula factor on the Chula train frames it trained on")
    ap.add_argument("--end-to-end", action="store_true", help="also count detected-and-typed Chula/BCCD cells")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    manifest = Manifest.load(args.model_dir)
    settings = boxrefine.RefineSettings()  # the defaults the runtime's refine switch uses
    d = data.load("det")
    fold = {s for s in args.fold_slides.split(",") if s}
    in_fold = np.array([src == "chula" and sp == "train" and slide_of(k) in fold
                        for src, sp, k in zip(d["sources"], d["splits"], d["keys"])])
    res: dict = {"version": manifest.version, "settings": settings.__dict__, "fold_slides": sorted(fold)}
    try:
        scales = box_fit.parse_scales(args.box_scale)
    except ValueError as exc:
        print(f"box_refine_study: {exc}", file=sys.stderr)
        return 2
    if args.torch_detector is not None:
        if not in_fold.any():
            print("box_refine_study: --torch-detector needs --fold-slides naming Chula train slides", file=sys.stderr)
            return 2
        det = Detector.for_manifest(TorchDetectorBackend(args.torch_detector), manifest, box_fit.AP_THRESHOLD)
        res["checkpoint"] = str(args.torch_detector)
        groups = {"chula/fold": np.nonzero(in_fold)[0]}
        groups.update({f"chula/fold/{s}": np.nonzero(in_fold & np.array([slide_of(k) == s for k in d["keys"]]))[0]
                       for s in sorted(fold)})
    else:
        det = evaluate.detector_runners(manifest)["tflite_int8"]
        groups = {f"{cam}/{split}": np.nonzero((d["sources"] == cam) & (d["splits"] == split) & ~in_fold)[0]
                  for split in args.splits for cam in args.cameras}
    if args.torch_detector is not None and args.fit_scale:
        trained = np.nonzero((d["sources"] == "chula") & (d["splits"] == "train") & ~in_fold)[0]
        fitted = detections(det, [d["frames"][i] for i in trained], 1.0, False)
        ratios = box_fit.side_ratios(fitted, [d["boxes"][i].reshape(-1, 4) for i in trained])
        scales = {"chula": box_fit.suggested_scale(ratios)}
        res["fitted_scale"] = {"chula": scales["chula"], "frames": int(len(trained)), "matched": int(len(ratios)),
                               "median_side_ratio": float(np.median(ratios))}
        logger.info("fitted on the %d trained Chula frames: %s", len(trained), res["fitted_scale"])
    for name, ix in groups.items():
        if not len(ix):
            continue
        frames, gts = [d["frames"][i] for i in ix], [d["boxes"][i].reshape(-1, 4) for i in ix]
        res[name] = score(det, frames, gts)
        logger.info("%s: %s", name, json.dumps(res[name]))
        scale = scales.get(name.split("/")[0], 1.0)
        if scale != 1.0:
            res[f"{name}@{scale}"] = score(det, frames, gts, scale)
            logger.info("%s at box scale %s: %s", name, scale, json.dumps(res[f"{name}@{scale}"]))
    if args.end_to_end and args.torch_detector is None:
        res["end_to_end"] = end_to_end_rows(manifest, det, args.splits, args.cameras, scales)
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
