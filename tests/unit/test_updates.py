"""Model updates: versioned folders, active/previous pointers, engine rebuilt once, rollback on a failed self-test."""

import json
import os
import shutil
from pathlib import Path

import pytest

from edge_app import cli, updates  # noqa: E402
from edge_app import selftest as st  # noqa: E402
from edge_app.backends import (
    BackendError,  # noqa: E402
    engine_cache,  # noqa: E402
)
from edge_app.config import load_config  # noqa: E402
from edge_app.store import Store  # noqa: E402
from tests import trt_fakes

DATASETS = Path(__file__).resolve().parents[3] / "shared" / "datasets"


def _release(root: Path, version: str, seed: int) -> Path:
    """A model release folder (models/ + calibration/ + reference/) of the tiny test models."""
    crops = sorted((DATASETS / "pbc" / "monocyte").glob("*.jpg"))[:8]
    frames = sorted((DATASETS / "bccd" / "images").glob("*.jpg"))[:8]
    if len(crops) < 8 or len(frames) < 8:
        pytest.skip("shared datasets absent (PBC/BCCD images needed)")
    model_dir = trt_fakes.write_tiny_bundle(root, crops, frames, version=version, seed=seed)
    trt_fakes.write_reference(model_dir, crops[:3], frames[:2])
    return model_dir


@pytest.fixture
def site(tmp_path, monkeypatch):
    trt_fakes.install(monkeypatch)
    data = tmp_path / "data"
    root = data / "models"
    camera = tmp_path / "camera"
    camera.mkdir()
    for p in sorted((DATASETS / "bccd" / "images").glob("*.jpg"))[:3]:
        shutil.copy(p, camera / p.name)
    cfg = load_config(None, {"inference.backend": "tensorrt", "model.dir": str(root / updates.ACTIVE)})

    def selftest(model_dir=None, camera=str(camera)):
        return st.run_selftest(cfg, data, model_dir=model_dir, camera=camera, build_engine=True)

    return {"tmp": tmp_path, "data": data, "root": root, "engines": data / "engines", "selftest": selftest,
            "camera": str(camera)}


def test_install_copies_release_with_companions_and_is_idempotent(tmp_path):
    src = _release(tmp_path / "rel", "2024.06.1", 0)
    root = tmp_path / "models"
    assert updates.install_version(src, root) == "2024.06.1"
    dest = root / "2024.06.1"
    assert (dest / "manifest.json").is_file() and (dest / "classifier.onnx").is_file()
    assert (dest / "calibration" / "manifest.json").is_file()  # taken from beside models/
    assert (dest / "reference" / "reference.json").is_file()
    before = {p: p.stat().st_mtime_ns for p in dest.rglob("*")}
    assert updates.install_version(src, root) == "2024.06.1"
    assert {p: p.stat().st_mtime_ns for p in dest.rglob("*")} == before
    assert updates.versions(root) == ["2024.06.1"] and not list(root.glob(".*"))


def test_damaged_or_conflicting_release_is_refused(tmp_path):
    src = _release(tmp_path / "rel", "2024.06.1", 0)
    root = tmp_path / "models"
    updates.install_version(src, root)
    other = _release(tmp_path / "rel2", "2024.06.1", 5)  # same version number, other files
    with pytest.raises(updates.UpdateError, match="new version number"):
        updates.install_version(other, root)
    bad = _release(tmp_path / "rel3", "2024.07.0", 1)
    (bad / "classifier.onnx").write_bytes(b"truncated")
    with pytest.raises(BackendError, match="corrupt or was replaced"):
        updates.install_version(bad, root)
    assert updates.versions(root) == ["2024.06.1"]


def test_pointers_activate_and_roll_back(tmp_path):
    root = tmp_path / "models"
    for i, v in enumerate(("1.0", "2.0")):
        updates.install_version(_release(tmp_path / v, v, i), root)
    with pytest.raises(updates.UpdateError, match="no previous"):
        updates.rollback(root)
    updates.activate(root, "1.0")
    assert updates.active_version(root) == "1.0" and updates.previous_version(root) is None
    updates.activate(root, "2.0")
    assert updates.active_version(root) == "2.0" and updates.previous_version(root) == "1.0"
    assert os.readlink(root / "active") == "2.0"  # relative: survives moving the data dir
    assert updates.rollback(root) == "1.0"
    assert updates.active_version(root) == "1.0" and not (root / "previous").exists()


def test_update_builds_new_engine_once_and_retires_old_one(site):
    v1 = _release(site["tmp"] / "v1", "1.0", 0)
    first = updates.update_model(v1, site["root"], site["selftest"], site["engines"])
    assert first.kept and first.result.ok, first.message
    old_engines = sorted(site["engines"].glob("classifier.*.engine"))
    assert len(old_engines) == 1
    v2 = _release(site["tmp"] / "v2", "2.0", 7)
    outcome = updates.update_model(v2, site["root"], site["selftest"], site["engines"])
    assert outcome.kept and outcome.result.ok and outcome.result.model_version == "2.0", outcome.message
    assert updates.active_version(site["root"]) == "2.0" and updates.previous_version(site["root"]) == "1.0"
    engines = sorted(site["engines"].glob("classifier.*.engine"))
    assert len(engines) == 1 and engines != old_engines  # new one built, old one pruned after the pass
    assert "previous 1.0 kept" in outcome.message


def test_failed_selftest_of_new_model_rolls_back_and_keeps_old_engine(site):
    v1 = _release(site["tmp"] / "v1", "1.0", 0)
    assert updates.update_model(v1, site["root"], site["selftest"], site["engines"]).kept
    old = {p.name: engine_cache.sha256_file(p) for p in site["engines"].glob("*.engine")}
    v2 = _release(site["tmp"] / "v2", "2.0", 7)
    ref = v2 / "reference" / "reference.json"
    data = json.loads(ref.read_text())
    for item in data["classifier"]:
        item["probs"] = item["probs"][1:] + item["probs"][:1]  # the new engine "disagrees" with its FP32 model
    ref.write_text(json.dumps(data))
    outcome = updates.update_model(v2, site["root"], site["selftest"], site["engines"])
    assert not outcome.kept
    assert "rolled back to 1.0" in outcome.message and "reference" in outcome.message
    assert updates.active_version(site["root"]) == "1.0"
    # The old engines are untouched, and the result left behind is the old model's passing re-test.
    assert {p.name: engine_cache.sha256_file(p) for p in site["engines"].glob("*.engine") if p.name in old} == old
    assert outcome.result.ok and outcome.result.model_version == "1.0"


def test_cli_update_from_records_the_active_models_result(site, capsys):
    v1 = _release(site["tmp"] / "v1", "1.0", 0)
    config = site["tmp"] / "kiosk.toml"
    config.write_text(f'[model]\ndir = "{site["root"] / "active"}"\n[inference]\nbackend = "tensorrt"\n')
    args = ["selftest", "--config", str(config), "--data-dir", str(site["data"]), "--camera", site["camera"]]
    assert cli.main(args + ["--update-from", str(v1)]) == 0
    assert "model 1.0 passed its self-test" in capsys.readouterr().out
    assert updates.active_version(site["root"]) == "1.0"
    with Store(site["data"]) as store:
        assert st.last_result_ok(store, "1.0")
    assert cli.main(args) == 0  # a plain self-test now runs on the active version's engine


def test_busy_camera_during_update_does_not_roll_back_a_good_model(site):
    v1 = _release(site["tmp"] / "v1", "1.0", 0)
    assert updates.update_model(v1, site["root"], site["selftest"], site["engines"]).kept
    v2 = _release(site["tmp"] / "v2", "2.0", 7)

    def selftest_camera_busy(model_dir=None):
        return site["selftest"](model_dir, camera="v4l2:///dev/video95")

    outcome = updates.update_model(v2, site["root"], selftest_camera_busy, site["engines"])
    assert outcome.kept and updates.active_version(site["root"]) == "2.0"
    assert not outcome.result.ok and "camera" in outcome.message  # reported, recorded as a failed self-test
