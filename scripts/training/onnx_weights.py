"""Read a shipped classifier's weights back from its ONNX file into the export wrapper.

    python -m scripts.training.onnx_weights models/classifier.onnx --members 2  # max |torch - ORT| on parity crops

Why: a shipped network whose PyTorch checkpoint is gone (1.6.0's classifier,
whose training checkpoint was not kept) can still be exported
again, for instance as a member of ``scripts.training.wbcnet.Ensemble``, because its
ONNX file holds every weight. The exporter folded each BatchNorm into the
convolution before it, so each such convolution gets the folded weight and its
BatchNorm becomes an identity that adds the folded bias; the CBAM convolutions
and the final linear layer keep their names in the ONNX file and are loaded by
name. The result is a ``Deployable`` (pixels 0..255 in, probabilities and
attention out) whose outputs equal the ONNX graph's; ``check`` measures that.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[2]

from edge_app.imaging import preprocess  # noqa: E402
from scripts.training.wbcnet import Classifier, Deployable, Ensemble  # noqa: E402

logger = logging.getLogger(__name__)
TOLERANCE = 1e-4  # probabilities; float32 re-association of the folded BatchNorm is about 1e-6


def _onnx_weights(path: Path) -> tuple[dict[str, np.ndarray], list[tuple[np.ndarray, np.ndarray]]]:
    """Named initializers, and the (weight, bias) of each folded convolution in graph order."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    named = {k: v for k, v in inits.items() if not k.startswith("onnx::")}
    folded, seen = [], set()
    for node in model.graph.node:
        if node.op_type == "Conv" and node.input[1].startswith("onnx::") and node.input[1] not in seen:
            seen.add(node.input[1])
            folded.append((inits[node.input[1]], inits[node.input[2]]))
    return named, folded


def classifier_from_onnx(path: Path, width: float, members: int = 1) -> torch.nn.Module:
    """The export wrapper of a ``Classifier(width)`` carrying the weights of the ONNX file at ``path``
    (an ``Ensemble`` of ``members`` such wrappers when the file is one)."""
    named, folded = _onnx_weights(path)
    nets = [Deployable(Classifier(width=width)) for _ in range(members)]
    dep = (nets[0] if members == 1 else Ensemble(nets)).eval()
    state = dep.state_dict()
    missing = sorted(set(named) - set(state))
    if missing:
        raise ValueError(f"{path}: ONNX weights {missing[:3]} have no place in Classifier(width={width})")
    # Registration order is the graph's order: each unnamed convolution is followed by its BatchNorm.
    pairs: list[list] = []
    for name, mod in dep.named_modules():
        if isinstance(mod, nn.Conv2d) and f"{name}.weight" not in named:
            pairs.append([name, mod, None])
        elif isinstance(mod, nn.BatchNorm2d):
            if not pairs or pairs[-1][2] is not None:
                raise ValueError(f"BatchNorm {name} follows no convolution")
            pairs[-1][2] = mod
    if len(pairs) != len(folded):
        raise ValueError(f"{path}: {len(folded)} folded convolutions, Classifier(width={width}) has {len(pairs)}")
    with torch.no_grad():
        for key, value in named.items():
            if state[key].shape != value.shape:
                raise ValueError(f"{path}: {key} is {value.shape}, the network wants {tuple(state[key].shape)}")
            state[key].copy_(torch.from_numpy(np.array(value)))
        for (name, conv, bn), (w, b) in zip(pairs, folded):
            if tuple(conv.weight.shape) != w.shape or bn is None:
                raise ValueError(f"{path}: folded weight {w.shape} does not fit {name} {tuple(conv.weight.shape)}")
            conv.weight.copy_(torch.from_numpy(np.array(w)))
            if conv.bias is not None:
                conv.bias.zero_()
            bn.weight.fill_(1.0)
            bn.bias.copy_(torch.from_numpy(np.array(b)))
            bn.running_mean.zero_()
            bn.running_var.fill_(1.0 - bn.eps)  # sqrt(var + eps) == 1
    return dep


def check(path: Path, width: float, members: int = 1) -> float:
    """Max |read-back PyTorch - ONNX Runtime| over the classifier parity crops of ``models/parity``,
    and against the original PyTorch outputs stored there when ``path`` is the shipped ONNX."""
    import onnxruntime as ort

    dep = classifier_from_onnx(path, width, members)
    pdir = ROOT / "models" / "parity"
    files = json.loads((pdir / "index.json").read_text())["classifier"]
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    shipped = path.resolve() == (ROOT / "models" / "classifier.onnx").resolve()
    original = np.load(pdir / "classifier_torch.npz") if shipped else None
    worst = 0.0
    for i, f in enumerate(files):
        x = preprocess.model_input("classifier", preprocess.read_rgb(str(pdir / f)))
        with torch.no_grad():
            ours = [o.numpy()[0] for o in dep(torch.from_numpy(x))]
        refs = [[r[0] for r in sess.run(None, {sess.get_inputs()[0].name: x})]]
        if original is not None:
            refs.append([original["probs"][i], original["attention"][i]])
        worst = max(worst, *(float(np.abs(a - r).max()) for ref in refs for a, r in zip(ours, ref)))
    return worst


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("onnx", type=Path)
    ap.add_argument("--width", type=float, default=0.5)
    ap.add_argument("--members", type=int, default=1,
                    help="networks averaged in the file (scripts.training.wbcnet.Ensemble)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    worst = check(args.onnx, args.width, args.members)
    print(json.dumps({"onnx": str(args.onnx), "max_abs_diff": worst, "tolerance": TOLERANCE}))
    return 0 if worst <= TOLERANCE else 1


if __name__ == "__main__":
    sys.exit(main())
