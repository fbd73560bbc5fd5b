"""Parity: ONNX, Q/DQ ONNX, TFLite FP32 and TFLite INT8 against the PyTorch model.

The PyTorch outputs were stored by ``scripts/training/export.py`` on real images
(``models/parity/``, drawn from the calibration set) when the artifacts were
made; here each exported runtime is fed the same pixels through the shared
``edge_app.imaging.preprocess`` and must agree within the tolerances the model card
states:

- FP32 (ONNX Runtime, TFLite): max |diff| <= 1e-3 on every output;
- INT8 (TFLite full-integer, Q/DQ ONNX run node by node as TensorRT computes it,
  ``scripts.training.qdq.session``): max |prob diff| <= 0.15, and the
  classifier's top-1 equal on every parity crop where PyTorch's own margin
  between its first and second class is >= 0.1 (a near-tie may flip under any
  quantisation); detector heatmap max |diff| <= 0.15 and the peak cell (the
  detected centre) equal on every parity frame.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edge_app.backends.tflite import TFLiteBackend
from edge_app.imaging import preprocess
from edge_app.model.bundle import Manifest
from scripts.training import qdq

MODELS = Path(__file__).resolve().parents[2] / "models"
FP32_TOL = 1e-3
INT8_PROB_TOL = 0.15
INT8_MARGIN = 0.1


def _inputs(kind: str) -> list[np.ndarray]:
    index = json.loads((MODELS / "parity" / "index.json").read_text())
    out = []
    for name in index[kind]:
        rgb = preprocess.read_rgb(str(MODELS / "parity" / name))
        out.append(preprocess.model_input(kind, rgb, Manifest.load(MODELS).stain_norm))
    return out


def _reference(kind: str) -> list[np.ndarray]:
    """The stored PyTorch outputs (the classifier's embedding outputs were added to the graphs after
    export and are checked against the ONNX graph's own head in ``test_classifier_embedding``)."""
    with np.load(MODELS / "parity" / f"{kind}_torch.npz") as z:
        names = [o["name"] for o in Manifest.load(MODELS).entry(kind)["outputs"] if o["name"] in z.files]
        return [z[n] for n in names]


def _onnx(path: Path):
    ort = pytest.importorskip("onnxruntime")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return lambda x: sess.run(None, {name: x})


def _qdq(path: Path):
    """The Q/DQ graph node by node (TensorRT's arithmetic, the same on every CPU): ONNX Runtime's fused
    x86 integer kernels saturate at 16 bits on CPUs without VNNI (``scripts.training.qdq``)."""
    pytest.importorskip("onnxruntime")
    sess = qdq.session(path)
    name = sess.get_inputs()[0].name
    return lambda x: sess.run(None, {name: x})


def _tflite(manifest: Manifest, kind: str, precision: str):
    backend = TFLiteBackend(manifest.file(kind, f"tflite_{precision}"), manifest.output_shapes(kind),
                            output_names=manifest.output_names(kind))
    return backend.infer


def _run(fn, kind: str) -> list[np.ndarray]:
    outs = [fn(x) for x in _inputs(kind)]
    return [np.stack([np.asarray(o[i])[0] for o in outs]) for i in range(2)]


@pytest.fixture(scope="module")
def manifest() -> Manifest:
    return Manifest.load(MODELS)


@pytest.mark.parametrize("kind", ["classifier", "detector"])
@pytest.mark.parametrize("runtime", ["onnx", "tflite_fp32"])
def test_fp32_runtimes_match_pytorch(manifest, kind, runtime):
    fn = _onnx(manifest.file(kind, "onnx")) if runtime == "onnx" else _tflite(manifest, kind, "fp32")
    for got, ref in zip(_run(fn, kind), _reference(kind)):
        assert got.shape == ref.shape
        assert np.abs(got - ref).max() <= FP32_TOL


@pytest.mark.parametrize("runtime", ["tflite_int8", "onnx_qdq"])
def test_int8_classifier_agrees_with_pytorch(manifest, runtime):
    fn = _qdq(manifest.file("classifier", "onnx_qdq")) if runtime == "onnx_qdq" else _tflite(
        manifest, "classifier", "int8")
    (probs, attention), (ref_probs, ref_att) = _run(fn, "classifier"), _reference("classifier")
    top2 = np.sort(ref_probs, axis=1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) >= INT8_MARGIN
    assert clear.sum() >= len(ref_probs) // 2  # the check must bite on most crops
    assert (probs.argmax(1) == ref_probs.argmax(1))[clear].all()
    assert np.abs(probs - ref_probs).max() <= INT8_PROB_TOL
    assert attention.shape == ref_att.shape and np.abs(attention - ref_att).max() <= INT8_PROB_TOL


@pytest.mark.parametrize("runtime", ["tflite_int8", "onnx_qdq"])
def test_int8_detector_agrees_with_pytorch(manifest, runtime):
    fn = _qdq(manifest.file("detector", "onnx_qdq")) if runtime == "onnx_qdq" else _tflite(
        manifest, "detector", "int8")
    (heat, _), (ref_heat, _) = _run(fn, "detector"), _reference("detector")
    assert np.abs(heat - ref_heat).max() <= INT8_PROB_TOL
    peaks = heat.reshape(len(heat), -1).argmax(1)
    ref_peaks = ref_heat.reshape(len(ref_heat), -1).argmax(1)
    assert (peaks == ref_peaks).all()


def test_int8_models_take_int8_pixels(manifest):
    """Full-integer models: the input scale is one 8-bit pixel step."""
    for kind in ("classifier", "detector"):
        backend = TFLiteBackend(manifest.file(kind, "tflite_int8"), manifest.output_shapes(kind))
        assert backend.int8
        scale, zero = backend._in_q
        assert 0.9 <= scale <= 1.1 and zero == -128


def test_manifest_hashes_and_shapes(manifest):
    for kind in ("classifier", "detector"):
        entry = manifest.entry(kind)
        for key in ("onnx", "onnx_qdq", "tflite_fp32", "tflite_int8"):
            manifest.file(kind, key)  # raises on a sha256 mismatch
        onnx = pytest.importorskip("onnx")
        model = onnx.load(str(manifest.file(kind, "onnx")))
        dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
        assert dims == entry["input"]["shape"]  # static shapes for TensorRT
        for out, spec in zip(model.graph.output, entry["outputs"]):
            assert [d.dim_value for d in out.type.tensor_type.shape.dim] == spec["shape"]
        assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) <= 13


def _embeddings(fn) -> np.ndarray:
    """(crops, D): each parity crop's ``embedding_*`` outputs concatenated (outputs 2.. in manifest order)."""
    return np.stack([np.concatenate([np.asarray(o)[0] for o in fn(x)[2:]]) for x in _inputs("classifier")])


def test_classifier_embedding(manifest):
    """The embedding outputs are the pooled features the shipped head reads: the ONNX graph's own linear
    layers and softmaxes on them give its probabilities; the other three runtimes output the same vector."""
    onnx = pytest.importorskip("onnx")
    from onnx import numpy_helper

    names = manifest.output_names("classifier")
    assert names[:2] == ["probs", "attention"] and all(n.startswith("embedding_") for n in names[2:])
    path = manifest.file("classifier", "onnx")
    ref = _embeddings(_onnx(path))
    assert ref.shape[1] == sum(manifest.entry("classifier")["outputs"][i]["shape"][1] for i in range(2, len(names)))
    init = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}
    probs = _run(_onnx(path), "classifier")[0]
    dims = np.cumsum([0] + [manifest.entry("classifier")["outputs"][i]["shape"][1] for i in range(2, len(names))])
    mean = 0
    for m in range(len(names) - 2):
        z = ref[:, dims[m]:dims[m + 1]] @ init[f"members.{m}.net.fc.weight"].T + init[f"members.{m}.net.fc.bias"]
        z = np.exp(z - z.max(1, keepdims=True))
        mean = mean + z / z.sum(1, keepdims=True)
    assert np.abs(mean / (len(names) - 2) - probs).max() <= 1e-5
    assert np.abs(_embeddings(_tflite(manifest, "classifier", "fp32")) - ref).max() <= FP32_TOL
    for fn in (_tflite(manifest, "classifier", "int8"), _qdq(manifest.file("classifier", "onnx_qdq"))):
        got = _embeddings(fn)
        cos = (got * ref).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(ref, axis=1)
        assert cos.min() >= 0.9  # int8 activations: the direction survives, which is what a linear head reads
