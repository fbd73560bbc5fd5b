"""`wbc-counter status`: one JSON object (or readable lines) about backend, model, engine, camera, sync, disk."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from edge_app import cli  # noqa: E402
from edge_app import selftest as st  # noqa: E402
from edge_app.backends import engine_cache  # noqa: E402
from edge_app.store import Store  # noqa: E402
from tests import trt_fakes

REPO = Path(__file__).resolve().parents[2]
KEYS = {"backend", "model_version", "engine", "camera", "selftest", "last_sync", "outbox", "outbox_depth",
        "disk_free_mb", "data_dir", "problems"}


@pytest.fixture
def model_dir(tmp_path):
    return trt_fakes.write_tiny_bundle(tmp_path / "release", version="2024.06.1")


def _config(tmp_path, model_dir, backend):
    path = tmp_path / "kiosk.toml"
    path.write_text(f'[model]\ndir = "{model_dir}"\n[inference]\nbackend = "{backend}"\n')
    return str(path)


def _fill_store(data: Path) -> None:
    with Store(data) as store:
        sid = store.open_session(target=100, sample_id="ACC-778812", operator="Dr Jane Roe", device="k1")
        done = store.finalise_session(sid, {"total": 100})
        sid2 = store.open_session(target=100, sample_id="ACC-778813", operator="Dr Jane Roe")
        store.finalise_session(sid2, {"total": 100}, destinations=("fhir", "astm"))
        store.conn.execute("UPDATE outbox SET status='done', done_at='2024-06-01T10:00:00.000+00:00' "
                           "WHERE result_id=?", (done,))
        store.log_event("camera", {"state": "streaming", "uri": "v4l2:///dev/video0"})
        r = st.SelftestResult([st.Check("disk", True, "ok")], "tflite", "2024.06.1")
        st.record(store, r)


def test_json_on_a_cpu_in_a_real_process(tmp_path, model_dir):
    data = tmp_path / "data"
    _fill_store(data)
    proc = subprocess.run([sys.executable, "-m", "edge_app", "status", "--json", "--config",
                           _config(tmp_path, model_dir, "auto"), "--data-dir", str(data),
                           "--camera", "v4l2:///dev/video93"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    status = json.loads(proc.stdout)
    assert set(status) == KEYS
    assert status["backend"] == "tflite" and status["model_version"] == "2024.06.1"
    assert status["outbox"] == {"pending": 2, "done": 1, "failed": 0} and status["outbox_depth"] == 2
    assert status["last_sync"] == "2024-06-01T10:00:00.000+00:00"
    assert status["camera"]["uri"] == "v4l2:///dev/video93" and status["camera"]["present"] is False
    assert status["camera"]["last_event"]["state"] == "streaming"
    assert status["selftest"]["ok"] is True and status["selftest"]["model_version"] == "2024.06.1"
    assert isinstance(status["disk_free_mb"], int) and status["disk_free_mb"] > 0
    assert "ACC-7788" not in proc.stdout + proc.stderr and "Jane" not in proc.stdout + proc.stderr


def test_engine_hash_on_tensorrt(monkeypatch, tmp_path, model_dir, capsys):
    trt_fakes.install(monkeypatch)
    from edge_app.backends import tensorrt as trt_backend
    from edge_app.model.bundle import Manifest

    data = tmp_path / "data"
    manifest = Manifest.load(model_dir)
    # Only the classifier's engine exists: fp32 avoids needing a calibration set here.
    _, state = trt_backend.ensure_engine(manifest, "classifier", "fp32", data / "engines")
    config = tmp_path / "kiosk.toml"
    config.write_text(f'[model]\ndir = "{model_dir}"\n[inference]\nbackend = "tensorrt"\nprecision = "fp32"\n')
    assert cli.main(["status", "--json", "--config", str(config), "--data-dir", str(data)]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["backend"] == "tensorrt"
    assert status["engine"]["classifier"] == {"file": state.path.name, "status": "ok",
                                              "sha256": engine_cache.sha256_file(state.path)}
    assert status["engine"]["detector"]["status"] == "missing" and status["engine"]["detector"]["sha256"] is None
    assert "database: none yet" in status["problems"][0]


def test_readable_text(tmp_path, model_dir, capsys):
    data = tmp_path / "data"
    _fill_store(data)
    with Store(data) as store:
        st.record(store, st.SelftestResult([st.Check("camera", False, "camera v4l2:///dev/video0 cannot be opened")],
                                           "tflite", "2024.06.1"))
    assert cli.main(["status", "--config", _config(tmp_path, model_dir, "tflite"), "--data-dir", str(data)]) == 0
    out = capsys.readouterr().out
    assert "backend: tflite" in out and "model version: 2024.06.1" in out
    assert "self-test: FAILED" in out and "cannot be opened" in out
    assert "outbox: 2 waiting, 0 failed, 1 sent" in out and "last sync: 2024-06-01" in out
    assert "disk free:" in out


def test_missing_model_is_reported_not_raised(tmp_path, capsys):
    config = tmp_path / "kiosk.toml"
    config.write_text(f'[model]\ndir = "{tmp_path / "nowhere"}"\n[inference]\nbackend = "tflite"\n')
    assert cli.main(["status", "--json", "--config", str(config), "--data-dir", str(tmp_path / "d")]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["model_version"] is None and any("no model manifest" in p for p in status["problems"])
