"""Why ONNX Runtime's default session leaves the Q/DQ detector's arithmetic on x86 CPUs without VNNI.

    python -m scripts.research.qdq_saturation

1. The shipped Q/DQ networks on the parity inputs (``models/parity``) against the stored PyTorch
   outputs, under ONNX Runtime's graph optimisation levels. ``ORT_ENABLE_EXTENDED`` and above
   fuse each DequantizeLinear -> op -> QuantizeLinear group into x86 integer kernels
   (QLinearConv with uint8 activations, int8 weights); ``basic`` and ``disable_all`` run the
   graph node by node, the arithmetic TensorRT carries out.
2. The detector's first fused convolution, recomputed in NumPy from its own uint8 input: once with
   exact int32 sums (VNNI's VPDPBUSD, TensorRT), once with each pair of neighbouring uint8 x int8
   products clipped to int16 before it is summed (AVX2's VPMADDUBSW). Which one equals what ONNX
   Runtime produced on this CPU says which kernel ran.

Prints the CPU model and SIMD features first: the fused rows depend on them, the node-by-node rows
do not.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np

from edge_app import cpuinfo
from edge_app.imaging import preprocess
from edge_app.model.bundle import Manifest

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / "models"


def _inputs(manifest: Manifest, kind: str) -> list[np.ndarray]:
    names = json.loads((MODELS / "parity" / "index.json").read_text())[kind]
    return [preprocess.model_input(kind, preprocess.read_rgb(str(MODELS / "parity" / n)), manifest.stain_norm)
            for n in names]


def _session(path, level, optimized: Path | None = None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = level
    if optimized is not None:
        opts.optimized_model_filepath = str(optimized)
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def optimisation_levels(manifest: Manifest) -> None:
    import onnxruntime as ort

    levels = {"disable_all": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
              "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
              "extended (fused)": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
              "all (default, fused)": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
    for kind in ("detector", "classifier"):
        xs = _inputs(manifest, kind)
        with np.load(MODELS / "parity" / f"{kind}_torch.npz") as z:
            ref = z[manifest.entry(kind)["outputs"][0]["name"]]
        for label, level in levels.items():
            s = _session(manifest.file(kind, "onnx_qdq"), level)
            name = s.get_inputs()[0].name
            got = np.stack([s.run(None, {name: x})[0][0] for x in xs])
            agree = (got.reshape(len(xs), -1).argmax(1) == ref.reshape(len(xs), -1).argmax(1)).mean()
            print(f"{kind:10s} {label:22s} max |diff| {np.abs(got - ref).max():.4f}  "
                  f"{'peak' if kind == 'detector' else 'top-1'} agrees on {agree:.0%}")


def first_conv(manifest: Manifest) -> None:
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    with tempfile.TemporaryDirectory() as tmp:
        fused = Path(tmp) / "fused.onnx"
        _session(manifest.file("detector", "onnx_qdq"), ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, fused)
        m = onnx.load(str(fused))
        conv = next(n for n in m.graph.node if n.op_type == "QLinearConv")
        for t in (conv.input[0], conv.output[0]):
            m.graph.output.append(onnx.ValueInfoProto(name=t))
        probe = Path(tmp) / "probe.onnx"
        onnx.save(m, str(probe))
        s = _session(probe, ort.GraphOptimizationLevel.ORT_DISABLE_ALL)  # the fused graph, run as saved
        init = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in conv.attribute}
        x_scale, x_zero = init[conv.input[1]].item(), int(init[conv.input[2]])
        w, w_scale = init[conv.input[3]].astype(np.int64), init[conv.input[4]].astype(np.float64)
        y_scale, y_zero = init[conv.input[6]].item(), int(init[conv.input[7]])
        bias = init[conv.input[8]].astype(np.int64)
        outs, kh, kw = w.shape[0], *attrs["kernel_shape"]
        stride = attrs.get("strides", [1, 1])[0]
        wk = w.transpose(0, 2, 3, 1).reshape(outs, -1)  # K ordered (kh, kw, channel), as the kernel packs it
        n = equal_exact = equal_sat = over = pairs_n = 0
        for x in _inputs(manifest, "detector"):
            xq, yq = s.run([conv.input[0], conv.output[0]], {s.get_inputs()[0].name: x})
            xq = xq[0].astype(np.int64)
            _, h, wd = xq.shape
            oh, ow = (h - kh) // stride + 1, (wd - kw) // stride + 1
            cols = np.stack([xq[:, i:i + stride * oh:stride, j:j + stride * ow:stride]
                             for i in range(kh) for j in range(kw)])  # (kh*kw, C, oh, ow)
            cols = cols.reshape(-1, oh * ow)
            if cols.shape[0] % 2:
                cols, wk2 = np.pad(cols, ((0, 1), (0, 0))), np.pad(wk, ((0, 0), (0, 1)))
            else:
                wk2 = wk
            prod = wk2[:, :, None] * cols[None]
            pairs = prod[:, 0::2] + prod[:, 1::2]
            over += int((np.abs(pairs) > 32767).sum())
            pairs_n += pairs.size
            got = yq[0].reshape(outs, -1).astype(np.int64)
            for acc, which in ((pairs.sum(1), "exact"), (np.clip(pairs, -32768, 32767).sum(1), "sat")):
                real = (acc - x_zero * wk.sum(1)[:, None] + bias[:, None]) * x_scale * w_scale[:, None]
                q = np.clip(np.rint(real / y_scale) + y_zero, 0, 255)
                if which == "exact":
                    equal_exact += int((q == got).sum())
                else:
                    equal_sat += int((q == got).sum())
            n += got.size
        print(f"first QLinearConv: uint8 input (zero point {x_zero}), int8 weights up to "
              f"|{int(np.abs(w).max())}|; {over / pairs_n:.1%} of its pair sums lie outside int16")
        print(f"ONNX Runtime's output equals the exact int32 sums on {equal_exact / n:.1%} of elements, "
              f"the int16-saturated pair sums on {equal_sat / n:.1%}")


def main() -> int:
    cpu = cpuinfo.cpu()
    print("cpu:", cpu["model"], {k: v for k, v in cpu["simd"].items()})
    manifest = Manifest.load(MODELS)
    optimisation_levels(manifest)
    first_conv(manifest)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
