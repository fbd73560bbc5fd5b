"""Self-test: passes on a healthy kiosk, fails loudly (with an actionable message) otherwise.

The TensorRT path runs on the TensorRT/pycuda fakes with tiny ONNX models;
the reference outputs come from onnxruntime FP32, exactly as
scripts/training/make_reference.py makes them. The camera is the real capture code on
an image folder, or a fake live camera for the "no frames" cases. Once the
real model has landed, the CPU (TFLite INT8) path is tested on it too.
"""

import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from edge_app import cli  # noqa: E402
from edge_app import selftest as st  # noqa: E402
from edge_app.backends import engine_cache  # noqa: E402
from edge_app.capture import CaptureError, FrameSource  # noqa: E402
from edge_app.config import load_config  # noqa: E402
from edge_app.model.bundle import Manifest  # noqa: E402
from edge_app.store import Store  # noqa: E402
from tests import trt_fakes

REPO = Path(__file__).resolve().parents[2]
DATASETS = Path(__file__).resolve().parents[3] / "shared" / "datasets"


def _images():
    crops = sorted((DATASETS / "pbc" / "eosinophil").glob("*.jpg"))[:8]
    frames = sorted((DATASETS / "bccd" / "images").glob("*.jpg"))[:8]
    if len(crops) < 8 or len(frames) < 8:
        pytest.skip("shared datasets absent (PBC/BCCD images needed)")
    return crops, frames


@pytest.fixture
def kiosk(tmp_path):
    """A tiny model bundle with calibration set and references, a data dir and a camera folder."""
    crops, frames = _images()
    model_dir = trt_fakes.write_tiny_bundle(tmp_path, crops, frames)
    trt_fakes.write_reference(model_dir, crops[:4], frames[:2])
    camera = tmp_path / "camera"
    camera.mkdir()
    for p in frames[:3]:
        shutil.copy(p, camera / p.name)
    data = tmp_path / "data"
    cfg = load_config(None, {"inference.backend": "tensorrt", "model.dir": str(model_dir)})
    return {"model_dir": model_dir, "data": data, "cfg": cfg, "camera": str(camera), "tmp": tmp_path}


def _run(k, **kw):
    kw.setdefault("camera", k["camera"])
    return st.run_selftest(k["cfg"], k["data"], **kw)


def _failed(result, name):
    (check,) = [c for c in result.checks if c.name == name]
    assert not check.ok, check
    return check.message


def test_passes_on_a_healthy_kiosk_and_records_hashes(monkeypatch, kiosk):
    trt_fakes.install(monkeypatch)
    result = _run(kiosk, build_engine=True)
    assert result.ok, result.summary()
    assert [c.name for c in result.checks] == ["disk", "database", "model", "engine", "reference", "camera"]
    assert result.backend == "tensorrt" and result.model_version == "test-1"
    for net in ("detector", "classifier"):
        engine = kiosk["data"] / "engines" / result.hashes[f"{net}_engine"]["file"]
        assert result.hashes[f"{net}_engine"]["sha256"] == engine_cache.sha256_file(engine)
        calib = kiosk["data"] / "engines" / result.hashes[f"{net}_calibration_cache"]["file"]
        assert result.hashes[f"{net}_calibration_cache"]["sha256"] == engine_cache.sha256_file(calib)
    ref = next(c for c in result.checks if c.name == "reference")
    assert ref.detail["top1_agreement"] == 1.0 and ref.detail["detection_agreement"] == 1.0
    with Store(kiosk["data"]) as store:
        st.record(store, result)
        assert st.last_result_ok(store) and st.last_result_ok(store, "test-1")
        assert not st.last_result_ok(store, "test-2")
        assert st.blocking_message(store) is None
        assert "test-2" in st.blocking_message(store, "test-2")


def test_no_engine_without_build_flag_fails(monkeypatch, kiosk):
    trt_fakes.install(monkeypatch)
    result = _run(kiosk)
    msg = _failed(result, "engine")
    assert "no engine built yet" in msg and "systemctl restart wbc-engine" in msg
    assert "reference" not in [c.name for c in result.checks]  # nothing ran on a missing engine


def test_wrong_version_engine_fails(monkeypatch, kiosk):
    trt_fakes.install(monkeypatch, version="8.5.2")
    assert _run(kiosk, build_engine=True).ok
    trt_fakes.install(monkeypatch, version="8.6.2")  # JetPack upgraded, engine not rebuilt
    msg = _failed(_run(kiosk), "engine")
    assert "TensorRT 8.5.2" in msg and "TensorRT 8.6.2" in msg and "systemctl restart wbc-engine" in msg


def test_missing_calibration_cache_fails(monkeypatch, kiosk):
    trt_fakes.install(monkeypatch)
    result = _run(kiosk, build_engine=True)
    calib = kiosk["data"] / "engines" / result.hashes["classifier_calibration_cache"]["file"]
    calib.unlink()
    msg = _failed(_run(kiosk), "engine")
    assert "calibration cache" in msg and "missing" in msg and calib.name in msg


def test_changed_calibration_cache_fails(monkeypatch, kiosk):
    trt_fakes.install(monkeypatch)
    result = _run(kiosk, build_engine=True)
    calib = kiosk["data"] / "engines" / result.hashes["detector_calibration_cache"]["file"]
    calib.write_bytes(b"TRT-8601-EntropyCalibration2\nsomething else\n")
    assert "changed since" in _failed(_run(kiosk), "engine")


def test_corrupted_model_file_fails(monkeypatch, kiosk):
    trt_fakes.install(monkeypatch)
    path = kiosk["model_dir"] / "detector.onnx"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    result = _run(kiosk, build_engine=True)
    msg = _failed(result, "model")
    assert "detector.onnx" in msg and "corrupt" in msg and "reinstall" in msg
    assert not list(kiosk["data"].glob("engines/*.engine"))  # nothing was built from the damaged file
    assert "SELF-TEST FAILED: model:" in result.summary()


def test_camera_that_delivers_no_frames_fails(monkeypatch, kiosk):
    trt_fakes.install(monkeypatch)

    class SilentCamera(FrameSource):  # opens, then the stream ends (a camera that gives nothing)
        live = True

        def read(self):
            return None

    result = _run(kiosk, build_engine=True, open_source=lambda uri, cfg: SilentCamera())
    msg = _failed(result, "camera")
    assert "delivered 0 of 3 frames" in msg and "USB cable" in msg


def test_camera_failing_while_reading_and_missing_device(kiosk):
    class UnpluggedCamera(FrameSource):
        live = True

        def read(self):
            raise CaptureError("camera /dev/video0 stopped delivering frames (unplugged?)")

    check = st.check_camera("v4l2:///dev/video0", open_source=lambda uri, cfg: UnpluggedCamera())
    assert not check.ok and "unplugged" in check.message and "restart" in check.message
    # The real capture code on a device that does not exist.
    check = st.check_camera("v4l2:///dev/video97")
    assert not check.ok and "cannot be opened" in check.message and "plugged in" in check.message
    # The real folder source with fewer frames than asked for.
    one = kiosk["tmp"] / "one"
    one.mkdir()
    shutil.copy(next(Path(kiosk["camera"]).iterdir()), one / "a.jpg")
    check = st.check_camera(str(one))
    assert not check.ok and "delivered 1 of 3 frames" in check.message


def test_hung_camera_times_out():
    release = threading.Event()

    class HungCamera(FrameSource):
        live = True

        def read(self):
            release.wait(30)
            return None

    try:
        check = st.check_camera("v4l2:///dev/video0", open_source=lambda uri, cfg: HungCamera(), timeout_s=0.3)
    finally:
        release.set()
    assert not check.ok and "gave nothing" in check.message


def test_reference_disagreement_fails(monkeypatch, kiosk):
    trt_fakes.install(monkeypatch)
    path = kiosk["model_dir"] / "reference" / "reference.json"
    ref = json.loads(path.read_text())
    for item in ref["classifier"]:
        item["probs"] = list(np.roll(item["probs"], 1))  # as if INT8 had changed every answer
    path.write_text(json.dumps(ref))
    msg = _failed(_run(kiosk, build_engine=True), "reference")
    assert "top-1 agreement 0% < 90%" in msg and "do not use for patients" in msg


def test_reference_thresholds_come_from_the_manifest(monkeypatch, kiosk):
    manifest_path = kiosk["model_dir"] / "manifest.json"
    data = json.loads(manifest_path.read_text())
    data["selftest"] = {"min_top1_agreement": 0.95, "max_prob_abs_diff": 0.1}
    manifest_path.write_text(json.dumps(data))
    limits = st.thresholds(Manifest.load(kiosk["model_dir"]))
    assert limits == {"min_top1_agreement": 0.95, "max_prob_abs_diff": 0.1,
                      "min_detection_agreement": st.DEFAULT_THRESHOLDS["min_detection_agreement"]}


def test_missing_or_damaged_reference_fails(monkeypatch, kiosk):
    trt_fakes.install(monkeypatch)
    ref_dir = kiosk["model_dir"] / "reference"
    victim = sorted(p for p in ref_dir.iterdir() if p.suffix == ".jpg")[0]
    victim.write_bytes(victim.read_bytes()[:100])
    assert "damaged" in _failed(_run(kiosk, build_engine=True), "reference")
    shutil.rmtree(ref_dir)
    assert "reference outputs missing" in _failed(_run(kiosk), "reference")


def test_damaged_database_and_full_disk_fail(kiosk):
    kiosk["data"].mkdir(parents=True)
    (kiosk["data"] / "wbc.sqlite3").write_bytes(b"this is not a database" * 100)
    cfg = load_config(None, {"store.min_free_mb": 10**9, "model.dir": str(kiosk["model_dir"]),
                             "inference.backend": "tflite"})
    result = st.run_selftest(cfg, kiosk["data"], check_cam=False)
    assert "need 1000000000 MB" in _failed(result, "disk")
    assert "do not delete it" in _failed(result, "database")


def test_box_agreement_counts_misses_and_extras():
    ref = np.array([[0, 0, 10, 10], [20, 20, 30, 30]], np.float32)
    assert st.box_agreement(ref, ref + 1) == (2, 2)
    assert st.box_agreement(ref, ref[:1]) == (1, 2)
    assert st.box_agreement(ref, np.vstack([ref, [[50, 50, 60, 60]]])) == (2, 3)
    assert st.box_agreement(ref, np.zeros((0, 4))) == (0, 2)


def test_cli_exit_codes_output_and_recorded_event(monkeypatch, kiosk, capsys):
    trt_fakes.install(monkeypatch)
    base = ["selftest", "--data-dir", str(kiosk["data"]), "--backend", "tensorrt",
            "--model-dir", str(kiosk["model_dir"]), "--camera", kiosk["camera"]]
    assert cli.main(base) == 1  # no engine yet and no --build-engine
    out = capsys.readouterr()
    assert "FAIL engine:" in out.out and "SELF-TEST FAILED" in out.err
    with Store(kiosk["data"]) as store:
        assert not st.last_result_ok(store)
        assert "results are not reported" in st.blocking_message(store)
    assert cli.main(base + ["--build-engine", "--json"]) == 0
    event = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert event["ok"] is True and event["checks"]["camera"] is True
    with Store(kiosk["data"]) as store:
        assert st.last_result_ok(store, "test-1")


def _real_model_ready() -> bool:
    models = REPO / "models"
    return (models / "manifest.json").is_file() and (models / "reference" / "reference.json").is_file()


@pytest.mark.skipif(not _real_model_ready(), reason="trained model + reference outputs not in models/ yet")
@pytest.mark.slow
def test_real_model_passes_on_tflite_int8(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "edge_app", "selftest", "--backend", "tflite", "--no-camera",
                           "--data-dir", str(tmp_path), "--json"], cwd=REPO, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    event = json.loads(proc.stdout.strip().splitlines()[-1])
    assert event["ok"] and event["backend"] == "tflite"


def test_a_selftest_that_dies_leaves_the_counter_blocked(tmp_path):
    """A native crash mid-test (os.abort, as a runtime's double free does) must not leave an older pass standing."""
    data = tmp_path / "data"
    with Store(data) as store:
        st.record(store, st.SelftestResult([st.Check("disk", True, "ok")], "tflite", "1.0"))
        assert st.last_result_ok(store)
    code = ("import os, sys; import edge_app.selftest as st; from edge_app import cli; "
            "st.run_selftest = lambda *a, **k: os.abort(); import edge_app.commands.selftest as c; "
            "c.run_selftest = st.run_selftest; "
            f"sys.exit(cli.main(['selftest', '--no-camera', '--data-dir', {str(data)!r}]))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode < 0  # killed by SIGABRT
    with Store(data) as store:
        assert not st.last_result_ok(store)
        assert "DID NOT FINISH" in st.blocking_message(store)


@pytest.mark.skipif(not _real_model_ready(), reason="trained model + reference outputs not in models/ yet")
@pytest.mark.parametrize("version", ["8.6.2", "10.3.0"])
@pytest.mark.slow
def test_real_model_through_the_tensorrt_path(monkeypatch, tmp_path, version):
    """The shipped ONNX, manifest and calibration set through engine build, calibration and the self-test.

    The fake engine executes the ONNX in FP32, so this proves the plumbing (names, shapes, calibration
    batches, output order), not INT8 accuracy: that needs a Jetson.
    """
    fake, _ = trt_fakes.install(monkeypatch, version=version)
    cfg = load_config(None, {"inference.backend": "tensorrt"})
    result = st.run_selftest(cfg, tmp_path / "data", model_dir=REPO / "models", check_cam=False, build_engine=True)
    assert result.ok, result.summary()
    listing = json.loads((REPO / "calibration" / "manifest.json").read_text())
    served = sorted(c[1] for c in fake.calls if c[0] == "calibrator.batches")
    assert served == sorted([len(listing["crops"]), len(listing["frames"])])  # every calibration image used
