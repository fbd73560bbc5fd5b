"""The shipped INT8 TFLite files are re-derived from what ships: the FP32 TFLite, the calibration set
and ``scripts.training.quantize`` (no training checkpoint, no PyTorch).

On the machine that exported them the bytes are identical. Elsewhere the FP32 calibration pass may
round differently in the last bit, so this compares what decides the model's outputs: every tensor's
type, shape and quantisation grid, and every int8 constant to within one step."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]

pytest.importorskip("ai_edge_quantizer")
from ai_edge_litert.interpreter import Interpreter  # noqa: E402

from scripts.training import quantize  # noqa: E402

MODELS = ROOT / "models"


WEIGHTED_OPS = {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"}


def _tensors(path: Path) -> list[dict]:
    interp = Interpreter(model_path=str(path))
    interp.allocate_tensors()
    # the weight tensors (constants) are the second input of each weighted op
    weights = {op["inputs"][1] for op in interp._get_ops_details() if op["op_name"] in WEIGHTED_OPS}
    out = []
    for d in interp.get_tensor_details():
        q = d["quantization_parameters"]
        out.append({"name": d["name"], "dtype": d["dtype"], "shape": tuple(d["shape"]),
                    "scales": np.asarray(q["scales"]), "zero_points": np.asarray(q["zero_points"]),
                    "const": interp.get_tensor(d["index"]) if d["index"] in weights else None})
    return out


@pytest.mark.parametrize("net", ["classifier", "detector"])
@pytest.mark.slow
def test_requantising_the_shipped_fp32_model_gives_the_shipped_int8_model(tmp_path, net):
    digest = quantize.requantize(MODELS, tmp_path / "m", net, "minmax")
    entry = json.loads((MODELS / "manifest.json").read_text())["models"][net]
    int8 = entry["files"]["tflite_int8"]
    ours, shipped = _tensors(tmp_path / "m" / int8), _tensors(MODELS / int8)
    assert [(t["name"], t["dtype"], t["shape"]) for t in ours] == [(t["name"], t["dtype"], t["shape"]) for t in shipped]
    for a, b in zip(ours, shipped):
        np.testing.assert_allclose(a["scales"], b["scales"], rtol=1e-4, err_msg=a["name"])
        np.testing.assert_array_equal(a["zero_points"], b["zero_points"], err_msg=a["name"])
        if b["const"] is not None:
            assert np.abs(a["const"].astype(int) - b["const"].astype(int)).max() <= 1, a["name"]
    # the copy's manifest names the file it now holds, so the runtime's sha256 check accepts it
    copied = json.loads((tmp_path / "m" / "manifest.json").read_text())["models"][net]
    assert copied["sha256"][int8] == digest


def test_the_shipped_folder_is_never_requantised_in_place():
    with pytest.raises(SystemExit, match="new folder"):
        quantize.requantize(MODELS, MODELS, "classifier", "minmax")
