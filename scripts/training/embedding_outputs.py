"""Give a shipped classifier its embedding as extra outputs, in all four of its files, without PyTorch.

    python -m scripts.training.embedding_outputs --model-dir models          # in place, manifest updated
    python -m scripts.training.embedding_outputs --model-dir models --check  # exit 1 unless they are there

The embedding is each ensemble member's pooled feature (the global mean of its
last convolution, the vector its final linear layer reads), one output per
member, ``embedding_0`` and ``embedding_1``, after ``probs`` and ``attention``.
The runtime concatenates them (``edge_app.model.bundle.Classifier``) and a site
profile (``edge_app.site``) fits its head on that vector.

Why edit the graphs instead of exporting again: an added graph output changes
no arithmetic, so ``probs`` and ``attention`` stay bit-identical in every file
(the INT8 files are not re-quantised, so their k = 0 figures cannot move), and
it needs only ``onnx`` and the TFLite flatbuffer schema that ``ai-edge-litert``
ships. ``scripts.training.export`` calls the same functions on what it writes,
so a re-export keeps the outputs.

Where the tensor is found: the ensemble's ``probs`` is (softmax_0 + softmax_1) / n;
walking back from that sum through each softmax to its linear layer gives the
linear layer's input, in member order (the sum's input order). In the Q/DQ ONNX
the walk continues through DequantizeLinear/QuantizeLinear to the float
pooling output, so the Q/DQ pair the linear layer reads keeps its single
consumer (ONNX Runtime and TensorRT fuse it only then).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np

from edge_app.model.bundle import sha256_file

logger = logging.getLogger(__name__)

PREFIX = "embedding_"
_QDQ = ("DequantizeLinear", "QuantizeLinear")


# -- ONNX --------------------------------------------------------------------

def _onnx_pooled(graph) -> list[str]:
    """The float pooled-feature tensor of each member, in member order."""
    prod = {o: n for n in graph.node for o in n.output}

    def back(t: str, skip=()) -> object:
        n = prod.get(t)
        while n is not None and n.op_type in skip:
            n = prod.get(n.input[0])
        return n

    # A single network's Q/DQ graph ends in the softmax's own Q/DQ pair; an ensemble's in its mean.
    node = back(graph.output[0].name, _QDQ)
    if node.op_type == "Div":  # ensemble mean: Div(Add(...), n)
        node = back(node.input[0], _QDQ)
    heads = []
    stack = [node]
    while stack:  # Add(Add(a, b), c) for three members: depth-first keeps the input order
        n = stack.pop(0)
        if n.op_type == "Add":
            stack = [back(i, _QDQ) for i in n.input] + stack
        else:
            heads.append(n)
    pooled = []
    for soft in heads:
        if soft is None or soft.op_type != "Softmax":
            raise ValueError(f"probs is not a mean of softmaxes (found {getattr(soft, 'op_type', None)})")
        gemm = back(soft.input[0], _QDQ)
        if gemm is None or gemm.op_type not in ("Gemm", "MatMul"):
            raise ValueError("a member's softmax does not read a linear layer")
        src = back(gemm.input[0], _QDQ)
        if src is None or src.op_type not in ("ReduceMean", "GlobalAveragePool", "Flatten", "Reshape"):
            raise ValueError(f"the linear layer does not read a pooled feature (reads {getattr(src, 'op_type', None)})")
        pooled.append(src.output[0])
    return pooled


def add_onnx(path: Path) -> bool:
    """Add ``embedding_i`` outputs to the ONNX file at ``path``; False when they are already there."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(path))
    g = model.graph
    if any(o.name.startswith(PREFIX) for o in g.output):
        return False
    pooled = _onnx_pooled(g)
    shapes = {vi.name: vi for vi in list(g.value_info) + list(g.output)}
    if not all(p in shapes for p in pooled):
        model = onnx.shape_inference.infer_shapes(model)
        g = model.graph
        shapes = {vi.name: vi for vi in list(g.value_info) + list(g.output)}
    for i, tensor in enumerate(pooled):
        name = f"{PREFIX}{i}"
        g.node.append(helper.make_node("Identity", [tensor], [name], name=f"/{name}/Identity"))
        dims = [d.dim_value for d in shapes[tensor].type.tensor_type.shape.dim]
        dims[0] = 1  # the shipped graphs are batch 1; shape inference may leave this dim unnamed
        g.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, dims))
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    logger.info("%s: outputs %s", path.name, [o.name for o in model.graph.output])
    return True


# -- TFLite ------------------------------------------------------------------

def _tflite_pooled(model, schema) -> list[int]:
    sg = model.subgraphs[0]
    codes = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    producer = {}
    for op in sg.operators:
        code = model.operatorCodes[op.opcodeIndex]
        name = codes.get(max(code.builtinCode, code.deprecatedBuiltinCode))
        for t in op.outputs:
            producer[int(t)] = (name, op)

    def back(t: int, skip=("MUL", "DEQUANTIZE", "QUANTIZE", "RESHAPE")):
        name, op = producer[t]
        while name in skip:  # the mean's 1/n is a MUL by a constant; a graph output may be requantised
            t = int(op.inputs[0])
            name, op = producer[t]
        return name, op

    name, op = back(int(sg.outputs[0]))
    heads, stack = [], [(name, op)]
    while stack:
        name, op = stack.pop(0)
        if name == "ADD":
            stack = [back(int(i)) for i in op.inputs] + stack
        else:
            heads.append((name, op))
    pooled = []
    for name, op in heads:
        if name != "SOFTMAX":
            raise ValueError(f"probs is not a mean of softmaxes (found {name})")
        fc_name, fc = back(int(op.inputs[0]))
        if fc_name != "FULLY_CONNECTED":
            raise ValueError(f"a member's softmax reads {fc_name}, not a linear layer")
        pooled.append(int(fc.inputs[0]))
    return pooled


def add_tflite(path: Path) -> bool:
    """Add ``embedding_i`` outputs to the TFLite file at ``path``; False when they are already there."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    buf = path.read_bytes()
    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(buf, 0))
    sg = model.subgraphs[0]
    names = [sg.tensors[int(i)].name.decode() for i in sg.outputs]
    if any(n.startswith(PREFIX) for n in names):
        return False
    for b in model.buffers:
        # The quantiser stores large buffers after the flatbuffer (offset, size); the object API does
        # not carry those bytes, so they move inline and the file stays one self-contained flatbuffer.
        if b.offset > 1:
            b.data = np.frombuffer(buf, np.uint8, count=int(b.size), offset=int(b.offset)).copy()
            b.offset, b.size = 0, 0
    pooled = _tflite_pooled(model, schema)
    for i, t in enumerate(pooled):
        sg.tensors[t].name = f"{PREFIX}{i}".encode()  # names are metadata: the backend matches outputs by them
    sg.outputs = np.concatenate([np.asarray(sg.outputs, np.int32), np.asarray(pooled, np.int32)])
    for sd in model.signatureDefs or []:
        for i, t in enumerate(pooled):
            tm = schema.TensorMapT()
            tm.name, tm.tensorIndex = f"{PREFIX}{i}".encode(), t
            sd.outputs.append(tm)
    builder = flatbuffers.Builder(len(buf) + 4096)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    path.write_bytes(bytes(builder.Output()))
    logger.info("%s: outputs + %s", path.name, [f"{PREFIX}{i}" for i in range(len(pooled))])
    return True


# -- the model folder --------------------------------------------------------

def add_to_folder(model_dir: Path) -> dict:
    """All four classifier files of ``model_dir`` get the outputs; the manifest lists them and the new hashes."""
    mpath = model_dir / "manifest.json"
    manifest = json.loads(mpath.read_text())
    entry = manifest["models"]["classifier"]
    files = entry["files"]
    changed = {}
    for kind, name in files.items():
        fn = add_onnx if kind.startswith("onnx") else add_tflite
        changed[name] = fn(model_dir / name)
    dims = embedding_dims(model_dir / files["onnx"])
    entry["outputs"] = [o for o in entry["outputs"] if not o["name"].startswith(PREFIX)]
    entry["outputs"] += [{"name": f"{PREFIX}{i}", "shape": [1, d]} for i, d in enumerate(dims)]
    for name in files.values():
        entry["sha256"][name] = sha256_file(model_dir / name)
    mpath.write_text(json.dumps(manifest, indent=1))
    return changed


def embedding_dims(onnx_path: Path) -> list[int]:
    import onnx

    g = onnx.load(str(onnx_path)).graph
    return [o.type.tensor_type.shape.dim[-1].dim_value for o in g.output if o.name.startswith(PREFIX)]


def check_folder(model_dir: Path) -> list[str]:
    """What is missing for the embedding in ``model_dir`` (empty when every file and the manifest have it)."""
    from ai_edge_litert import schema_py_generated as schema

    manifest = json.loads((model_dir / "manifest.json").read_text())
    entry = manifest["models"]["classifier"]
    problems = []
    if not any(o["name"].startswith(PREFIX) for o in entry["outputs"]):
        problems.append("manifest lists no embedding output")
    for kind, name in entry["files"].items():
        if kind.startswith("onnx"):
            dims = embedding_dims(model_dir / name)
        else:
            m = schema.Model.GetRootAsModel((model_dir / name).read_bytes(), 0)
            sg = m.Subgraphs(0)
            dims = [1 for i in range(sg.OutputsLength())
                    if sg.Tensors(sg.Outputs(i)).Name().decode().startswith(PREFIX)]
        if not dims:
            problems.append(f"{name} has no embedding output")
    return problems


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model-dir", type=Path, default=Path(__file__).resolve().parents[2] / "models")
    ap.add_argument("--check", action="store_true", help="only report what is missing")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.check:
        problems = check_folder(args.model_dir)
        print(json.dumps({"model_dir": str(args.model_dir), "problems": problems}))
        return 1 if problems else 0
    print(json.dumps({"model_dir": str(args.model_dir), "changed": add_to_folder(args.model_dir)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
