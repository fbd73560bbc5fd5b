"""Reading a classifier back from its ONNX file, and the averaging ensemble (scripts/training/onnx_weights.py,
scripts.training.wbcnet.Ensemble, scripts/training/export.py --classifier A B).

They need PyTorch (the training extra), which the runtime and CI do not
install: they run where it is installed and are skipped elsewhere.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
wbcnet = pytest.importorskip("scripts.training.wbcnet")
onnx_weights = pytest.importorskip("scripts.training.onnx_weights")
export = pytest.importorskip("scripts.training.export")

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / "models"


def _random_classifier(seed: int) -> "wbcnet.Deployable":
    """A classifier with non-trivial BatchNorm statistics, so folding them is actually exercised."""
    torch.manual_seed(seed)
    net = wbcnet.Classifier(width=0.5)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.5, 2.0)
    return wbcnet.Deployable(net).eval()


def _crops(n: int = 3) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.uniform(0, 255, (1, 128, 128, 3)).astype(np.float32) for _ in range(n)]


def _run(model, x):
    with torch.no_grad():
        return [o.numpy() for o in model(torch.from_numpy(x))]


def test_shipped_classifier_reads_back_to_its_onnx_and_pytorch_outputs():
    # against ONNX Runtime on the shipped file and the original PyTorch outputs in models/parity
    entry = json.loads((MODELS / "manifest.json").read_text())["models"]["classifier"]
    members = len(entry.get("ensemble", [None]))
    width = entry["width_multiplier"]
    assert onnx_weights.check(MODELS / "classifier.onnx", width, members) <= onnx_weights.TOLERANCE
    with pytest.raises(ValueError):  # the wrong number of members does not fit
        onnx_weights.classifier_from_onnx(MODELS / "classifier.onnx", width, members + 1)


def test_an_exported_ensemble_round_trips(tmp_path):
    model = wbcnet.Ensemble([_random_classifier(4), _random_classifier(5)]).eval()
    path = tmp_path / "classifier.onnx"
    export.export_onnx(model, "classifier", path)
    back = onnx_weights.classifier_from_onnx(path, 0.5, members=2)
    for x in _crops(2):
        for ours, ref in zip(_run(back, x), _run(model, x)):
            assert np.abs(ours - ref).max() < 1e-4


def test_any_exported_classifier_round_trips(tmp_path):
    model = _random_classifier(3)
    path = tmp_path / "classifier.onnx"
    export.export_onnx(model, "classifier", path)
    back = onnx_weights.classifier_from_onnx(path, 0.5)
    for x in _crops():
        for ours, ref in zip(_run(back, x), _run(model, x)):
            assert np.abs(ours - ref).max() < 1e-4


def test_read_back_refuses_a_network_of_another_width(tmp_path):
    path = tmp_path / "classifier.onnx"
    export.export_onnx(_random_classifier(1), "classifier", path)
    with pytest.raises(ValueError):
        onnx_weights.classifier_from_onnx(path, 1.0)


def test_ensemble_outputs_are_the_members_mean():
    a, b = _random_classifier(1), _random_classifier(2)
    ens = wbcnet.Ensemble([a, b]).eval()
    for x in _crops():
        (pa, sa), (pb, sb), (pe, se) = _run(a, x), _run(b, x), _run(ens, x)
        assert pe.shape == pa.shape and se.shape == sa.shape
        assert np.allclose(pe, (pa + pb) / 2, atol=1e-6) and np.allclose(se, (sa + sb) / 2, atol=1e-6)
        assert np.isclose(pe.sum(), 1.0, atol=1e-5)
    with pytest.raises(ValueError, match="at least two"):
        wbcnet.Ensemble([a])


def test_export_takes_an_onnx_member_only_as_its_manifest_names_it(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    onnx_path = folder / "classifier.onnx"
    export.export_onnx(_random_classifier(6), "classifier", onnx_path)
    entry = {"files": {"onnx": "classifier.onnx"}, "sha256": {"classifier.onnx": export.sha256(onnx_path)},
             "width_multiplier": 0.5, "checkpoint_epoch": 7, "val": {"pbc": 0.5}}
    manifest = {"name": "wbc-mbv2-cbam", "version": "t", "models": {"classifier": entry}}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    model, info = export.classifier_member(str(onnx_path))
    assert info["sha256"] == entry["sha256"]["classifier.onnx"] and info["epoch"] == 7
    assert info["width"] == 0.5 and info["stain_norm"] is False
    with open(onnx_path, "ab") as f:  # one byte more: no longer the file the manifest names
        f.write(b"\0")
    with pytest.raises(SystemExit, match="sha256"):
        export.classifier_member(str(onnx_path))
    (folder / "manifest.json").unlink()
    with pytest.raises(SystemExit, match="manifest.json"):
        export.classifier_member(str(onnx_path))


def test_export_refuses_an_ensemble_as_a_member(tmp_path):
    entry = json.loads((MODELS / "manifest.json").read_text())["models"]["classifier"]
    if "ensemble" not in entry:
        pytest.skip("the shipped classifier is one network")
    for name in ("manifest.json", "classifier.onnx"):
        shutil.copy(MODELS / name, tmp_path / name)
    with pytest.raises(SystemExit, match="already an ensemble"):
        export.classifier_member(str(tmp_path / "classifier.onnx"))
