"""Full-integer INT8 TFLite from an FP32 TFLite, calibrated on the shipped ``calibration/`` set.

``scripts.training.export`` calls ``quantize_tflite`` for each network it exports. Run
as a script, it re-quantises a shipped network from the model folder's own
FP32 TFLite into a copy of that folder (manifest sha256 updated), so a
quantisation choice can be scored with ``scripts.training.select_model`` without the
training checkpoint, and the shipped INT8 file can be re-derived from what
ships:

    python -m scripts.training.quantize --net classifier --weights octav --out /tmp/rq_octav
    python -m scripts.training.select_model models /tmp/rq_octav

No PyTorch: this needs ``ai-edge-quantizer`` and ``ai-edge-litert`` only.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]

from edge_app.imaging import preprocess  # noqa: E402
from edge_app.model.bundle import sha256_file  # noqa: E402

logger = logging.getLogger(__name__)

CALIB = ROOT / "calibration"
# How each output channel's int8 weight grid is set (ai-edge-quantizer algorithm keys). Only
# "minmax" ships; "octav" was measured and not adopted (scripts/research/protocols/selection_rule_requant.md).
# MSE is not offered: with this quantiser it leaves 22 ops in float, so the model is not full-integer.
WEIGHT_ALGORITHMS = {"minmax": "min_max_uniform_quantize", "octav": "OCTAV"}


def calibration_inputs(kind: str, stain_norm: bool = False) -> list[np.ndarray]:
    """The shipped calibration images through the runtime preprocessing."""
    manifest = json.loads((CALIB / "manifest.json").read_text())
    out = []
    for e in manifest["crops" if kind == "classifier" else "frames"]:
        rgb = preprocess.read_rgb(str(CALIB / e["file"]))
        out.append(preprocess.model_input(kind, rgb, stain_norm))
    return out


def quantize_tflite(fp32: Path, int8: Path, calib: list[np.ndarray], weights: str = "minmax") -> None:
    """Write ``int8``: ``fp32`` with int8 weights (per channel) and int8 activations, int8 in and out."""
    from ai_edge_litert.interpreter import Interpreter
    from ai_edge_quantizer import calibrator, quantizer, recipe
    from ai_edge_quantizer.utils import qsv_utils

    qt = quantizer.Quantizer(str(fp32))
    qt.load_quantization_recipe(recipe.static_wi8_ai8(WEIGHT_ALGORITHMS[weights]))
    sig = Interpreter(model_path=str(fp32)).get_signature_list()
    key = next(iter(sig))
    in_name = sig[key]["inputs"][0]
    # Global min/max over the calibration set (the quantiser's default is a
    # moving average, which clips the brightest/darkest real pixels and cost
    # 15-25 accuracy points here); same ranges TensorRT's MinMax would see.
    cal = calibrator.Calibrator(Path(fp32).read_bytes(), num_threads=2, qsv_update_func=qsv_utils.min_max_update)
    cal.calibrate({key: [{in_name: c} for c in calib]}, qt._recipe_manager)
    result = widen_empty_ranges(cal.get_model_qsvs())
    qt.quantize(result, enable_progress_report=False).export_model(str(int8), overwrite=True)


def widen_empty_ranges(qsvs: dict, span: float = 1.0) -> dict:
    """Give tensors that were constant on every calibration image a real range.

    A channel-attention MLP whose ReLU units never fire on the calibration set
    has an all-zero hidden tensor; its min/max calibrate to [0, 0], the int8
    scale (and the next bias scale, input x weight scale) collapses to ~1e-15,
    and XNNPACK crashes on the model. Zero is exact in any int8 grid, so a
    nominal range changes no output.
    """
    for name, q in qsvs.items():
        if "min" in q and "max" in q:
            lo, hi = np.asarray(q["min"], np.float32), np.asarray(q["max"], np.float32)
            flat = (hi - lo) < 1e-6
            if flat.any():
                logger.info("tensor %s was constant on the calibration set: nominal range given", name)
                q["max"] = np.where(flat, lo + span, hi).astype(np.float32)
    return qsvs


def requantize(model_dir: Path, out: Path, net: str, weights: str) -> str:
    """Copy ``model_dir`` to ``out`` with ``net``'s INT8 TFLite re-quantised; returns the new sha256."""
    if out.resolve() == model_dir.resolve():
        raise SystemExit("--out must be a new folder: the shipped models are never overwritten in place")
    manifest = json.loads((model_dir / "manifest.json").read_text())
    entry = manifest["models"][net]
    files = entry["files"]
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(model_dir, out)
    stain_norm = bool(entry.get("preprocess", {}).get("stain_norm", False))
    quantize_tflite(out / files["tflite_fp32"], out / files["tflite_int8"], calibration_inputs(net, stain_norm),
                    weights)
    digest = sha256_file(out / files["tflite_int8"])
    entry["sha256"][files["tflite_int8"]] = digest
    entry["int8_weights"] = weights
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return digest


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model-dir", type=Path, default=ROOT / "models")
    ap.add_argument("--net", choices=("classifier", "detector"), default="classifier")
    ap.add_argument("--weights", choices=sorted(WEIGHT_ALGORITHMS), default="minmax")
    ap.add_argument("--out", type=Path, required=True, help="new model folder (a copy of --model-dir)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    digest = requantize(args.model_dir, args.out, args.net, args.weights)
    shipped = json.loads((args.model_dir / "manifest.json").read_text())["models"][args.net]
    same = digest == shipped["sha256"][shipped["files"]["tflite_int8"]]
    print(json.dumps({"out": str(args.out), "net": args.net, "weights": args.weights, "sha256": digest,
                      "same_as_shipped": same}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
