"""Median inference latency of the shipped models on this CPU (model card figure).

    python scripts/latency.py [--runs 200] [--threads 2] [--model-dir models]

Times ``Backend.infer`` alone (quantise, invoke, dequantise) of each network
and precision through the product's TFLite backend, after warm-up, on a real
calibration image, and prints one JSON object. Run it on a quiet machine:
other load on the cores shows up directly in the figures.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edge_app import preprocess  # noqa: E402
from edge_app.backends.tflite import TFLiteBackend  # noqa: E402
from edge_app.inference import Manifest  # noqa: E402


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
    out = {"cpu": platform.processor() or platform.machine(), "threads": args.threads, "runs": args.runs,
           "model_version": m.version, "ms": {}}
    for net, x in inputs.items():
        for precision in ("int8", "fp32"):
            b = TFLiteBackend(m.file(net, f"tflite_{precision}"), m.output_shapes(net), threads=args.threads)
            for _ in range(20):
                b.infer(x)
            t = []
            for _ in range(args.runs):
                t0 = time.perf_counter()
                b.infer(x)
                t.append((time.perf_counter() - t0) * 1000)
            out["ms"][f"{net}_{precision}"] = {"median": round(float(np.median(t)), 3),
                                               "p95": round(float(np.percentile(t, 95)), 3)}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
