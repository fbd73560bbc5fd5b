"""Median inference latency of the shipped models on this CPU (model card figure).

    python -m scripts.training.latency [--runs 200] [--threads 2] [--model-dir models]

Times ``Backend.infer`` alone (quantise, invoke, dequantise) of each network
and precision through the product's TFLite backend, after warm-up, on a real
calibration image, and prints one JSON object. Run it on a quiet machine:
other load on the cores shows up directly in the figures. ``box_refine`` is
the per-box cost of ``[model] box_refine`` (``edge_app.imaging.boxrefine``) on the
INT8 detector's boxes of the first calibration frame of each camera (it grows
with the box's area).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]

from edge_app import cpuinfo  # noqa: E402
from edge_app.backends.tflite import TFLiteBackend  # noqa: E402
from edge_app.imaging import boxrefine, preprocess  # noqa: E402
from edge_app.model.bundle import Detector, Manifest  # noqa: E402


def timed(fn, runs: int, warmup: int = 20) -> dict:
    """Median and p95 milliseconds of ``fn()`` after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    t = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        t.append((time.perf_counter() - t0) * 1000)
    return {"median": round(float(np.median(t)), 3), "p95": round(float(np.percentile(t, 95)), 3)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model-dir", type=Path, default=ROOT / "models",
                    help="an exported model folder (e.g. an older version, to compare on the same machine)")
    args = ap.parse_args(argv)
    m = Manifest.load(args.model_dir)
    calib = json.loads((ROOT / "calibration" / "manifest.json").read_text())
    crop = preprocess.read_rgb(str(ROOT / "calibration" / calib["crops"][0]["file"]))
    frame = preprocess.read_rgb(str(ROOT / "calibration" / calib["frames"][0]["file"]))
    inputs = {"classifier": preprocess.model_input("classifier", crop, m.stain_norm),
              "detector": preprocess.model_input("detector", frame)}
    cpu = cpuinfo.cpu()
    out = {"cpu": cpu["model"] or platform.machine(), "simd": [k for k, v in cpu["simd"].items() if v],
           "threads": args.threads, "runs": args.runs,
           "model_version": m.version, "ms": {}}
    for net, x in inputs.items():
        for precision in ("int8", "fp32"):
            b = TFLiteBackend(m.file(net, f"tflite_{precision}"), m.output_shapes(net), threads=args.threads)
            out["ms"][f"{net}_{precision}"] = timed(lambda b=b, x=x: b.infer(x), args.runs)
    det = Detector.for_manifest(TFLiteBackend(m.file("detector", "tflite_int8"), m.output_shapes("detector"),
                                              threads=args.threads), m)
    out["box_refine"] = {}
    for camera in ("bccd", "chula"):  # the calibration set's two frame cameras: cells of very different sizes
        entry = next(f for f in calib["frames"] if Path(f["file"]).name.startswith(camera))
        image = preprocess.read_rgb(str(ROOT / "calibration" / entry["file"]))
        boxes = np.array([d.box for d in det(image)], np.float32).reshape(-1, 4)
        if not len(boxes):
            continue
        bg = preprocess.estimate_background(image)
        per_call = timed(lambda i=image, b=boxes, g=bg: boxrefine.refine_boxes(i, b, background=g), args.runs)
        out["box_refine"][camera] = {"ms_per_box": {k: round(v / len(boxes), 3) for k, v in per_call.items()},
                                     "frame": list(image.shape[:2]), "boxes": int(len(boxes)),
                                     "median_box_side": round(float(np.median(np.maximum(
                                         boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]))), 1)}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
