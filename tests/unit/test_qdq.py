"""The shipped Q/DQ ONNX files are what TensorRT 10+ wants, and are re-derived from what ships.

TensorRT takes symmetric int8 only: every zero point 0 and int8, weights quantised per output
channel. ``scripts.training.qdq.write`` re-derives the detector's file from the shipped FP32 ONNX
and ``calibration/`` (no PyTorch). The calibration pass runs in float, whose last bit may round
differently on another CPU, so the comparison is every initializer's type and shape, every scale
to 1e-4 and every int8 constant to within one step (on the exporting machine the bytes are equal).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
import onnx  # noqa: E402
from onnx import numpy_helper  # noqa: E402

from edge_app.model.bundle import Manifest  # noqa: E402
from scripts.training import qdq  # noqa: E402
from scripts.training.quantize import calibration_inputs  # noqa: E402

MODELS = Path(__file__).resolve().parents[2] / "models"


def _initializers(path: Path) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}


@pytest.mark.parametrize("kind", ["detector", "classifier"])
def test_qdq_is_symmetric_int8_with_per_channel_weights(kind):
    model = onnx.load(str(Manifest.load(MODELS).file(kind, "onnx_qdq")))
    init = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    dq = [n for n in model.graph.node if n.op_type == "DequantizeLinear"]
    q = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    assert len(q) > 50
    per_channel = 0
    for node in q + dq:
        zero = init[node.input[2]]
        assert not zero.any(), node.name
        data = init.get(node.input[0])
        if node.op_type == "DequantizeLinear" and data is not None and data.ndim == 4:  # a conv weight
            assert data.dtype == np.int8 and zero.dtype == np.int8
            assert init[node.input[1]].size == data.shape[0]  # one scale per output channel
            per_channel += 1
        elif data is None or data.dtype != np.int32:  # activations (int32 tensors are biases)
            assert zero.dtype == np.int8
    assert per_channel >= 40


@pytest.mark.slow
def test_detector_qdq_is_rederived_from_what_ships(tmp_path):
    manifest = Manifest.load(MODELS)
    out = tmp_path / "detector_qdq.onnx"
    qdq.write(manifest.file("detector", "onnx"), "detector", out, calibration_inputs("detector", manifest.stain_norm))
    shipped, again = _initializers(manifest.file("detector", "onnx_qdq")), _initializers(out)
    assert shipped.keys() == again.keys()
    for name, a in shipped.items():
        b = again[name]
        assert (a.dtype, a.shape) == (b.dtype, b.shape), name
        if a.dtype == np.int8:
            assert np.abs(a.astype(np.int16) - b).max() <= 1, name
        elif a.dtype == np.float32:
            np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-7, err_msg=name)
