"""AP with and without the image-based box refinement (``edge_app.boxrefine``), per camera.

    python -m scripts.box_refine_study models --splits train val --json runs/refine_val.json
    python -m scripts.box_refine_study models --torch-detector runs/fold_cell_s26/detector.pt \\
        --fold-slides L-8,N-3B --json runs/refine_fold.json

The first form scores the shipped INT8 TFLite detector (decoded as its manifest
says). The second scores a training checkpoint in FP32 through the same
decoding (mirrored pass and box vote as the manifest says) on the Chula train
slides it was trained without (``scripts.train --fold-slides``): slides that
neither the detector nor the refinement's settings ever saw. With
``--fold-slides`` the train rows leave those slides out, so the settings'
training frames and the fold never overlap. Nothing here reads test unless
``--splits test`` is asked for.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edge_app import boxrefine  # noqa: E402
from edge_app.inference import Detector, Manifest  # noqa: E402
from scripts import box_fit, data, eval_metrics, evaluate  # noqa: E402

logger = logging.getLogger(__name__)


class TorchDetectorBackend:
    """A detector checkpoint behind the runtime's ``Backend.infer`` (NHWC pixels in, NHWC maps out)."""

    def __init__(self, ckpt: Path):
        import torch

        from scripts.wbcnet import Deployable
        from scripts.wbcnet import Detector as Net

        state = torch.load(ckpt, map_location="cpu", weights_only=False)
        net = Net(width=state["width"], stride=state.get("stride", 16))
        net.load_state_dict(state["state_dict"])
        self.model, self.torch = Deployable(net).eval(), torch

    def infer(self, x: np.ndarray) -> list[np.ndarray]:
        with self.torch.no_grad():
            return [t.numpy() for t in self.model(self.torch.from_numpy(np.ascontiguousarray(x)))]


def slide_of(key: str) -> str:
    return key.rsplit("_", 1)[0]


def score(det: Detector, frames, gts, settings: boxrefine.RefineSettings) -> dict:
    raw = [evaluate.detect_arrays(det, f) for f in frames]
    refined = [(boxrefine.refine_boxes(f, b, settings), s) for f, (b, s) in zip(frames, raw)]
    row = {"frames": len(frames), "cells": int(sum(map(len, gts)))}
    for name, dets in (("raw", raw), ("refined", refined)):
        r = box_fit.side_ratios(dets, gts)
        row[name] = dict(eval_metrics.ap50_ap75(dets, gts),
                         median_side_ratio=float(np.median(r)) if len(r) else None)
    row["changed_boxes"] = int(sum(int((np.abs(a[0] - b[0]) > 1e-3).any(axis=1).sum())
                                   for a, b in zip(raw, refined)))
    row["boxes"] = int(sum(len(b) for b, _ in raw))
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model_dir", type=Path)
    ap.add_argument("--splits", nargs="+", default=["val"], choices=("train", "val", "test"))
    ap.add_argument("--cameras", nargs="+", default=list(box_fit.CAMERAS), choices=box_fit.CAMERAS)
    ap.add_argument("--fold-slides", default="", help="Chula train slides a --torch-detector was trained without")
    ap.add_argument("--torch-detector", type=Path, help="score this checkpoint (FP32) on the fold slides instead")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    manifest = Manifest.load(args.model_dir)
    settings = boxrefine.RefineSettings()
    d = data.load("det")
    fold = {s for s in args.fold_slides.split(",") if s}
    in_fold = np.array([src == "chula" and sp == "train" and slide_of(k) in fold
                        for src, sp, k in zip(d["sources"], d["splits"], d["keys"])])
    res: dict = {"version": manifest.version, "settings": settings.__dict__, "fold_slides": sorted(fold)}
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
    for name, ix in groups.items():
        if not len(ix):
            continue
        res[name] = score(det, [d["frames"][i] for i in ix], [d["boxes"][i].reshape(-1, 4) for i in ix], settings)
        logger.info("%s: %s", name, json.dumps(res[name]))
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
