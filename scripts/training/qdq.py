"""The Q/DQ ONNX: written from the FP32 ONNX with ONNX Runtime's quantiser, and run as its graph defines.

``<net>_qdq.onnx`` is what TensorRT 10+ builds its INT8 engine from: symmetric int8
activations and per-channel symmetric int8 weights (zero point 0, as TensorRT requires),
calibrated by min/max on the shipped ``calibration/`` set. Writing it needs no PyTorch
(``write``), so the shipped file can be re-derived from the shipped FP32 ONNX:

    python -m scripts.training.qdq --net detector --out /tmp/detector_qdq.onnx

Checking it (``session``) runs every node as the ONNX standard defines it:
DequantizeLinear, the float op, QuantizeLinear. That is the arithmetic TensorRT's INT8
kernels carry out (int8 products summed in int32, then rescaled), and it is the same on
every CPU. ONNX Runtime's default session instead fuses each such group into its own x86
integer kernels. On CPUs without VNNI (AVX2, and AVX-512 without VNNI) those sum each pair
of uint8 x int8 products with VPMADDUBSW, which saturates at 16 bits; the shipped
detector's first convolution exceeds that range on 15 % of its pair sums and its heatmap
then leaves PyTorch's by 0.77 (``scripts/research/qdq_saturation.py``). That is a property
of ONNX Runtime on those CPUs, not of the model, so no figure or test of the model uses it.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np

from edge_app.model.bundle import sha256_file
from scripts.training.quantize import ROOT, calibration_inputs

logger = logging.getLogger(__name__)

INPUT_NAMES = {"detector": "frame", "classifier": "crop"}


class _CalibReader:
    """ONNX Runtime's calibration data reader over a list of model inputs."""

    def __init__(self, name: str, batches: list[np.ndarray]):
        self.name, self.it = name, iter(batches)

    def get_next(self):
        x = next(self.it, None)
        return None if x is None else {self.name: x.astype(np.float32)}


def write(onnx_path: Path, kind: str, out: Path, calib: list[np.ndarray], reduce_range: bool = False) -> None:
    """Write ``out``: ``onnx_path`` with Q/DQ nodes, calibrated on ``calib``.

    ``reduce_range`` (7-bit weights) is offered for studies only: it avoids the 16-bit
    saturation of ONNX Runtime's x86 kernels but costs TensorRT weight resolution."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = out.with_suffix(".pre.onnx")
    quant_pre_process(str(onnx_path), str(pre), skip_symbolic_shape=True)
    # TensorRT wants symmetric int8 (zero point 0) for activations and weights.
    quantize_static(str(pre), str(out), _CalibReader(INPUT_NAMES[kind], calib), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, per_channel=True,
                    reduce_range=reduce_range, calibrate_method=CalibrationMethod.MinMax,
                    extra_options={"ActivationSymmetric": True, "WeightSymmetric": True})
    pre.unlink()


def session(path: str | Path, threads: int = 2):
    """An ONNX Runtime session that runs the Q/DQ graph node by node, as TensorRT's arithmetic does."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    # No graph rewrites: above ORT_ENABLE_BASIC, DequantizeLinear -> op -> QuantizeLinear groups
    # become x86 integer kernels whose sums saturate on CPUs without VNNI (module docstring).
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model-dir", type=Path, default=ROOT / "models")
    ap.add_argument("--net", choices=sorted(INPUT_NAMES), required=True)
    ap.add_argument("--out", type=Path, required=True, help="the Q/DQ ONNX to write (never the shipped file)")
    ap.add_argument("--reduce-range", action="store_true", help="7-bit weights (studies only; not shipped)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    manifest = json.loads((args.model_dir / "manifest.json").read_text())
    entry = manifest["models"][args.net]
    shipped = args.model_dir / entry["files"]["onnx_qdq"]
    if args.out.resolve() == shipped.resolve():
        raise SystemExit("--out must be a new file: the shipped models are never overwritten in place")
    stain_norm = bool(entry.get("preprocess", {}).get("stain_norm", False))
    write(args.model_dir / entry["files"]["onnx"], args.net, args.out, calibration_inputs(args.net, stain_norm),
          args.reduce_range)
    digest = sha256_file(args.out)
    print(json.dumps({"out": str(args.out), "net": args.net, "reduce_range": args.reduce_range, "sha256": digest,
                      "same_as_shipped": digest == entry["sha256"][shipped.name]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
