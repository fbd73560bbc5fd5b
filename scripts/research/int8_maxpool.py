"""Study: the INT8 TFLite with the CBAM max-pool quantised, timed against the shipped files.

ai-edge-quantizer (0.10) leaves ``REDUCE_MAX`` in float (a DEQUANTIZE / QUANTIZE pair around each),
which splits XNNPACK's graph. This study rewrites each ``REDUCE_MAX`` of the shipped FP32 TFLite into
ops the quantiser supports (keepDims, so shapes hold):

- over H and W (channel attention): one ``MAX_POOL_2D`` with an HxW filter;
- over C (spatial attention): ``RESHAPE`` to [1, HW, C, 1], ``MAX_POOL_2D`` (1, C), ``RESHAPE`` back.

It checks that the rewritten FP32 outputs equal the shipped ones on the calibration inputs, quantises
the rewritten files with the shipped recipe (``scripts.training.quantize``), and times all four files
per network (median of ``--runs`` invokes, ``--threads`` threads, alternated ``--rounds`` times).

    python -m scripts.research.int8_maxpool --out /tmp/maxpool 2>/dev/null

Results: scripts/research/README.md ("INT8 on this CPU").
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections import Counter
from pathlib import Path

import numpy as np

from edge_app import paths

logger = logging.getLogger(__name__)


def _rewrite(src: Path, dst: Path) -> int:
    import flatbuffers
    from ai_edge_litert import schema_py_generated as s
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as fu

    m = fu.read_model(str(src))
    g = m.subgraphs[0]

    def opcode(builtin):
        for i, c in enumerate(m.operatorCodes):
            if max(c.builtinCode, c.deprecatedBuiltinCode) == builtin:
                return i
        c = s.OperatorCodeT()
        c.builtinCode, c.deprecatedBuiltinCode, c.version = builtin, min(builtin, 127), 1
        m.operatorCodes.append(c)
        return len(m.operatorCodes) - 1

    def tensor(name, shape, ttype=s.TensorType.FLOAT32, data=None):
        t = s.TensorT()
        t.name, t.shape, t.type = name.encode(), list(shape), ttype
        b = s.BufferT()
        b.data = None if data is None else np.frombuffer(data.tobytes(), np.uint8)
        m.buffers.append(b)
        t.buffer = len(m.buffers) - 1
        g.tensors.append(t)
        return len(g.tensors) - 1

    def pool(fh, fw, inp, out):
        op = s.OperatorT()
        op.opcodeIndex = opcode(s.BuiltinOperator.MAX_POOL_2D)
        o = s.Pool2DOptionsT()
        o.padding, o.strideH, o.strideW, o.filterHeight, o.filterWidth = s.Padding.VALID, fh, fw, fh, fw
        op.builtinOptionsType, op.builtinOptions = s.BuiltinOptions.Pool2DOptions, o
        op.inputs, op.outputs = [inp], [out]
        return op

    def reshape(inp, out, shape, name):
        op = s.OperatorT()
        op.opcodeIndex = opcode(s.BuiltinOperator.RESHAPE)
        sh = tensor(name + "/shape", [len(shape)], s.TensorType.INT32, np.asarray(shape, np.int32))
        o = s.ReshapeOptionsT()
        o.newShape = list(shape)
        op.builtinOptionsType, op.builtinOptions = s.BuiltinOptions.ReshapeOptions, o
        op.inputs, op.outputs = [inp, sh], [out]
        return op

    ops, n = [], 0
    for op in g.operators:
        c = m.operatorCodes[op.opcodeIndex]
        if max(c.builtinCode, c.deprecatedBuiltinCode) != s.BuiltinOperator.REDUCE_MAX:
            ops.append(op)
            continue
        x, ax = op.inputs
        y = op.outputs[0]
        _, h, w, ch = g.tensors[x].shape
        axes = sorted(np.frombuffer(bytes(m.buffers[g.tensors[ax].buffer].data), np.int32).tolist())
        if axes == [1, 2]:
            ops.append(pool(h, w, x, y))
        elif axes == [3]:
            name = g.tensors[y].name.decode()
            a, b = tensor(name + "/cols", [1, h * w, ch, 1]), tensor(name + "/pooled", [1, h * w, 1, 1])
            ops += [reshape(x, a, [1, h * w, ch, 1], name + "/in"), pool(1, ch, a, b),
                    reshape(b, y, [1, h, w, 1], name + "/out")]
        else:
            raise ValueError(f"REDUCE_MAX over axes {axes} is not rewritten")
        n += 1
    g.operators = ops
    builder = flatbuffers.Builder(1024)
    builder.Finish(m.Pack(builder), file_identifier=b"TFL3")
    dst.write_bytes(builder.Output())
    return n


def _op_counts(path: Path) -> dict:
    from ai_edge_litert import schema_py_generated as s
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as fu

    # The schema's own names: the quantiser's table lists only the ops it quantises.
    names = {v: k for k, v in vars(s.BuiltinOperator).items() if not k.startswith("_")}
    m, c = fu.read_model(str(path)), Counter()
    for op in m.subgraphs[0].operators:
        k = m.operatorCodes[op.opcodeIndex]
        c[names.get(max(k.builtinCode, k.deprecatedBuiltinCode), "?")] += 1
    return {k: c.get(k, 0) for k in ("DEQUANTIZE", "QUANTIZE", "REDUCE_MAX", "MAX_POOL_2D")}


def _interp(path: Path, threads: int):
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path), num_threads=threads)
    it.allocate_tensors()
    return it


def _outputs(path: Path, x: np.ndarray) -> list[np.ndarray]:
    it = _interp(path, 1)
    it.set_tensor(it.get_input_details()[0]["index"], x)
    it.invoke()
    return [it.get_tensor(d["index"]).copy() for d in it.get_output_details()]


def _median_ms(path: Path, threads: int, runs: int) -> float:
    it = _interp(path, threads)
    d = it.get_input_details()[0]
    x = np.zeros(d["shape"], d["dtype"])
    ts = []
    for i in range(30 + runs):
        t0 = time.perf_counter()
        it.set_tensor(d["index"], x)
        it.invoke()
        if i >= 30:
            ts.append(time.perf_counter() - t0)
    return round(1000 * float(np.median(ts)), 3)


def main(argv=None) -> int:
    from scripts.training.quantize import calibration_inputs, quantize_tflite

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=300)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    models = paths.shipped_models_dir()
    for net in ("detector", "classifier"):
        fp32, rw = models / f"{net}_fp32.tflite", args.out / f"{net}_fp32_maxpool.tflite"
        n = _rewrite(fp32, rw)
        calib = calibration_inputs(net)
        diff = max(float(np.max(np.abs(a - b))) for x in calib[:8] for a, b in zip(_outputs(fp32, x), _outputs(rw, x)))
        int8 = args.out / f"{net}_int8_maxpool.tflite"
        quantize_tflite(rw, int8, calib)
        files = {"fp32": fp32, "int8": models / f"{net}_int8.tflite", "int8_maxpool": int8}
        times = {k: [] for k in files}
        for _ in range(args.rounds):
            for k, f in files.items():
                times[k].append(_median_ms(f, args.threads, args.runs))
        print(json.dumps({"net": net, "reduce_max_rewritten": n, "fp32_rewrite_max_abs_diff": diff,
                          "ops": {k: _op_counts(f) for k, f in files.items()}, "median_ms": times,
                          "threads": args.threads}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
