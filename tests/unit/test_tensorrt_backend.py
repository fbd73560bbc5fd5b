"""TensorRT backend: engine build, calibration, cache keys and inference, against fakes.

The fakes (tests/trt_fakes.py) follow the TensorRT 8.x/10.x and pycuda APIs
and execute the parsed ONNX with onnxruntime, so the outputs the backend
returns are checked against the model itself.
"""

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from edge_app.backends import (  # noqa: E402
    BackendError,
    engine_cache,  # noqa: E402
    resolve_backend_name,
    tensorrt_usable,
)
from edge_app.backends import tensorrt as trt_backend  # noqa: E402
from edge_app.model.bundle import Manifest, ModelBundle, create_backend  # noqa: E402
from tests import trt_fakes

DATASETS = Path(__file__).resolve().parents[3] / "shared" / "datasets"


def _pbc_crops(n=8):
    d = DATASETS / "pbc" / "neutrophil"
    if not d.is_dir():
        pytest.skip("shared datasets absent (PBC crops needed for calibration images)")
    return sorted(d.glob("*.jpg"))[:n]


def _bccd_frames(n=8):
    d = DATASETS / "bccd" / "images"
    if not d.is_dir():
        pytest.skip("shared datasets absent (BCCD frames needed for calibration images)")
    return sorted(d.glob("*.jpg"))[:n]


@pytest.fixture
def bundle(tmp_path):
    model_dir = trt_fakes.write_tiny_bundle(tmp_path, _pbc_crops(), _bccd_frames())
    return Manifest.load(model_dir), tmp_path / "engines"


def _onnx_reference(manifest, net, x):
    import onnxruntime as ort

    sess = ort.InferenceSession(str(manifest.file(net, "onnx")), providers=["CPUExecutionProvider"])
    names = [o["name"] for o in manifest.entry(net)["outputs"]]
    return sess.run(names, {manifest.entry(net)["input"]["name"]: x})


def _calls(fake, name):
    return [c for c in fake.calls if c[0] == name]


def test_no_tensorrt_here_auto_picks_tflite(caplog):
    if trt_backend.trt is not None:
        pytest.skip("a real TensorRT is installed on this machine")
    assert trt_backend.available() is False and tensorrt_usable() is False
    with caplog.at_level(logging.INFO):
        assert resolve_backend_name("auto") == "tflite"
    assert "backend auto -> tflite" in caplog.text
    with pytest.raises(BackendError, match="--backend tflite"):
        resolve_backend_name("tensorrt")


def test_available_with_fakes_and_auto_picks_tensorrt(monkeypatch):
    trt_fakes.install(monkeypatch)
    assert trt_backend.available() and tensorrt_usable()
    assert resolve_backend_name("auto") == "tensorrt"


@pytest.mark.parametrize("version,flags,execute", [("8.6.1", 1, "execute_async_v2"), ("10.3.0", 0, "execute_async_v3")])
def test_int8_build_calibrates_caches_and_runs(monkeypatch, bundle, version, flags, execute):
    manifest, engine_dir = bundle
    fake, cuda = trt_fakes.install(monkeypatch, version=version)
    with trt_backend.TensorRTBackend.from_manifest(manifest, "classifier", "int8", engine_dir) as be:
        assert _calls(fake, "Builder.create_network") == [("Builder.create_network", flags)]
        assert ("BuilderConfig.set_memory_pool_limit", "WORKSPACE", trt_backend.WORKSPACE_MB << 20) in fake.calls
        assert _calls(fake, "Builder.build_serialized_network") == [("Builder.build_serialized_network",
                                                                     ["FP16", "INT8"])]
        assert ("calibrator.read_calibration_cache", False) in fake.calls
        assert ("calibrator.batches", 8) in fake.calls  # every listed crop went through get_batch
        assert be.input_spec.shape == (1, trt_fakes.CROP, trt_fakes.CROP, 3)
        x = np.random.default_rng(1).uniform(0, 255, (1, trt_fakes.CROP, trt_fakes.CROP, 3)).astype(np.float32)
        probs, attention = be.infer(x)
        ref = _onnx_reference(manifest, "classifier", x)
        np.testing.assert_allclose(probs, ref[0], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(attention, ref[1], rtol=1e-5, atol=1e-6)
        assert probs.dtype == np.float32 and attention.shape == (1, trt_fakes.ATT, trt_fakes.ATT, 1)
        assert _calls(fake, execute)
        # Outputs are copies: the next call must not change what the caller holds.
        kept = probs.copy()
        be.infer(np.zeros_like(x))
        np.testing.assert_array_equal(probs, kept)
    engines = list(engine_dir.glob("classifier.*.engine"))
    assert len(engines) == 1 and f".trt{version}.orin.sm87.int8.engine" in engines[0].name
    meta = engine_cache.read_sidecar(engines[0])
    calib = engine_dir / meta["calibration_cache"]
    assert calib.read_bytes().startswith(f"TRT-{version}".encode())
    assert meta["calibration_cache_sha256"] == engine_cache.sha256_file(calib)
    assert cuda.state["memory"] == {}  # close() freed every device buffer
    assert cuda.state["ctx_depth"] == 0  # every push popped


def test_cached_engine_is_loaded_not_rebuilt(monkeypatch, bundle):
    manifest, engine_dir = bundle
    fake, _ = trt_fakes.install(monkeypatch)
    trt_backend.TensorRTBackend.from_manifest(manifest, "detector", "int8", engine_dir).close()
    fake.calls.clear()
    with trt_backend.TensorRTBackend.from_manifest(manifest, "detector", "int8", engine_dir) as be:
        heat, ltrb = be.infer(np.full((1, 240, 320, 3), 128, np.float32))
    assert not _calls(fake, "Builder.build_serialized_network")
    assert heat.shape == (1, 60, 80, 1) and ltrb.shape == (1, 60, 80, 4)
    np.testing.assert_allclose(heat, 128 / 255, rtol=1e-5)


def test_rebuild_reuses_calibration_cache(monkeypatch, bundle):
    manifest, engine_dir = bundle
    fake, _ = trt_fakes.install(monkeypatch)
    plan, state = trt_backend.ensure_engine(manifest, "classifier", "int8", engine_dir)
    state.path.unlink()
    fake.calls.clear()
    trt_backend.ensure_engine(manifest, "classifier", "int8", engine_dir)
    assert ("calibrator.read_calibration_cache", True) in fake.calls
    assert not _calls(fake, "calibrator.batches")


def test_tensorrt_upgrade_rebuilds_and_drops_old_engine(monkeypatch, bundle):
    manifest, engine_dir = bundle
    trt_fakes.install(monkeypatch, version="8.5.2")
    old_plan, _ = trt_backend.ensure_engine(manifest, "classifier", "int8", engine_dir)
    fake, _ = trt_fakes.install(monkeypatch, version="8.6.2")
    plan, state = trt_backend.ensure_engine(manifest, "classifier", "int8", engine_dir)
    assert _calls(fake, "Builder.build_serialized_network")
    assert state.ok and plan.key.trt_version == "8.6.2"
    assert not old_plan.engine_path.exists()


def test_changed_model_rebuilds(monkeypatch, bundle):
    manifest, engine_dir = bundle
    trt_fakes.install(monkeypatch)
    first, _ = trt_backend.ensure_engine(manifest, "classifier", "int8", engine_dir)
    # A new model release under the same file names: only the sha256 differs.
    data = json.loads(json.dumps(manifest.data))
    data["models"]["classifier"]["sha256"]["classifier.onnx"] = "f" * 64
    plan = trt_backend.plan_engine(Manifest(manifest.dir, data), "classifier", "int8", engine_dir)
    assert plan.key != first.key and plan.engine_path != first.engine_path
    assert engine_cache.check(engine_dir, plan.key).status == "missing"


def test_no_build_mode_reports_missing_engine(monkeypatch, bundle):
    manifest, engine_dir = bundle
    trt_fakes.install(monkeypatch)
    with pytest.raises(BackendError, match="systemctl restart wbc-engine"):
        trt_backend.TensorRTBackend.from_manifest(manifest, "classifier", "int8", engine_dir, build=False)


def test_engine_from_other_tensorrt_under_current_name_is_refused(monkeypatch, bundle):
    manifest, engine_dir = bundle
    trt_fakes.install(monkeypatch, version="8.5.2")
    _, old_state = trt_backend.ensure_engine(manifest, "classifier", "int8", engine_dir)
    trt_fakes.install(monkeypatch, version="8.6.2")
    plan = trt_backend.plan_engine(manifest, "classifier", "int8", engine_dir)
    # Copied in by hand, sidecar and all re-labelled: only deserialisation can tell.
    engine_cache.save(engine_dir, plan.key, old_state.path.read_bytes())
    with pytest.raises(BackendError, match="cannot load .* another TensorRT version"):
        trt_backend.TensorRTBackend.from_manifest(manifest, "classifier", "int8", engine_dir, build=False)


def test_without_implicit_calibration_the_qdq_model_is_built(monkeypatch, bundle):
    manifest, engine_dir = bundle
    fake, _ = trt_fakes.install(monkeypatch, version="11.0.0", implicit_int8=False)
    plan, state = trt_backend.ensure_engine(manifest, "classifier", "int8", engine_dir)
    assert plan.onnx_kind == "onnx_qdq" and not plan.calibrate and plan.calibration_cache is None
    assert plan.key.model_sha256 == manifest.entry("classifier")["sha256"]["classifier_qdq.onnx"]
    assert _calls(fake, "Builder.build_serialized_network") == [("Builder.build_serialized_network",
                                                                 ["FP16", "INT8"])]
    assert not _calls(fake, "calibrator.read_calibration_cache")
    assert engine_cache.read_sidecar(state.path)["onnx"] == "classifier_qdq.onnx"


def test_without_implicit_calibration_and_no_qdq_model_is_a_clear_error(monkeypatch, tmp_path):
    model_dir = trt_fakes.write_tiny_bundle(tmp_path, qdq=False)
    trt_fakes.install(monkeypatch, version="11.0.0", implicit_int8=False)
    with pytest.raises(BackendError, match="needs a Q/DQ model"):
        trt_backend.plan_engine(Manifest.load(model_dir), "classifier", "int8", tmp_path / "e")


def test_gpu_without_int8_builds_fp16(monkeypatch, bundle):
    manifest, engine_dir = bundle
    fake, _ = trt_fakes.install(monkeypatch, gpu="NVIDIA Tegra X1", cc=(5, 3))
    plan, _ = trt_backend.ensure_engine(manifest, "classifier", "int8", engine_dir)
    assert plan.key.precision == "fp16" and not plan.calibrate
    assert _calls(fake, "Builder.build_serialized_network") == [("Builder.build_serialized_network", ["FP16"])]


def test_fp32_sets_no_precision_flags(monkeypatch, bundle):
    manifest, engine_dir = bundle
    fake, _ = trt_fakes.install(monkeypatch)
    trt_backend.ensure_engine(manifest, "classifier", "fp32", engine_dir)
    assert not _calls(fake, "BuilderConfig.set_flag")


def test_corrupt_onnx_is_refused_before_building(monkeypatch, bundle):
    manifest, engine_dir = bundle
    fake, _ = trt_fakes.install(monkeypatch)
    path = manifest.dir / "classifier.onnx"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(BackendError, match="corrupt or was replaced"):
        trt_backend.ensure_engine(manifest, "classifier", "int8", engine_dir)
    assert not _calls(fake, "Builder")


def test_parser_errors_are_reported(monkeypatch, tmp_path):
    trt_fakes.install(monkeypatch)
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(BackendError, match="cannot parse bad.onnx: In node"):
        trt_backend.build_serialized(bad, "fp16")


def test_failed_build_is_reported(monkeypatch, bundle):
    manifest, engine_dir = bundle
    trt_fakes.install(monkeypatch, fail_build=True)
    with pytest.raises(BackendError, match="could not build an engine"):
        trt_backend.ensure_engine(manifest, "detector", "int8", engine_dir)
    assert not list(engine_dir.glob("*.engine"))


def test_missing_calibration_set_is_reported(monkeypatch, tmp_path):
    model_dir = trt_fakes.write_tiny_bundle(tmp_path)
    (tmp_path / "calibration" / "manifest.json").unlink()
    trt_fakes.install(monkeypatch)
    with pytest.raises(BackendError, match="no calibration set found"):
        trt_backend.ensure_engine(Manifest.load(model_dir), "classifier", "int8", tmp_path / "e")


def test_model_bundle_runs_on_tensorrt_through_create_backend(monkeypatch, bundle):
    manifest, engine_dir = bundle
    trt_fakes.install(monkeypatch)
    be = create_backend(manifest, "classifier", "tensorrt", "int8", engine_dir=engine_dir)
    assert isinstance(be, trt_backend.TensorRTBackend)
    be.close()
    mb = ModelBundle(manifest.dir, backend="auto", precision="int8", engine_dir=engine_dir)
    try:
        assert mb.backend_name == "tensorrt"
        crop = (np.random.default_rng(2).uniform(0, 255, (128, 128, 3))).astype(np.uint8)
        result = mb.classifier(crop)
        assert result.probs.shape == (6,) and abs(float(result.probs.sum()) - 1) < 1e-5
        detections = mb.detector(np.full((480, 640, 3), 200, np.uint8))
        assert detections and all(d.box.shape == (4,) for d in detections)
    finally:
        mb.close()


@pytest.mark.parametrize("version", ["8.6.1", "10.3.0"])
def test_shipped_classifier_embedding_outputs_bound_by_name(monkeypatch, tmp_path, version):
    """The shipped classifier's four outputs (probs, attention, embedding_0, embedding_1; the two embeddings
    share a shape) come back in manifest order, equal to the graph's, and the Classifier reads the embedding."""
    from edge_app.imaging import preprocess
    from edge_app.model.bundle import Classifier

    trt_fakes.install(monkeypatch, version=version)
    manifest = Manifest.load()
    names = [o["name"] for o in manifest.entry("classifier")["outputs"]]
    assert names[2:] == ["embedding_0", "embedding_1"]
    crop = preprocess.read_rgb(str(Path(__file__).resolve().parents[2] / "calibration" / "crops"
                                   / "pbc_BA_901979.jpg"))
    x = preprocess.model_input("classifier", crop)
    with trt_backend.TensorRTBackend.from_manifest(manifest, "classifier", "fp16", tmp_path / "engines") as be:
        outs = be.infer(x)
        ref = _onnx_reference(manifest, "classifier", x)
        assert [o.shape for o in outs] == [tuple(o["shape"]) for o in manifest.entry("classifier")["outputs"]]
        for got, want in zip(outs, ref):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        assert not np.allclose(outs[2], outs[3])  # two members, two different vectors, not one bound twice
        res = Classifier.for_manifest(be, manifest)(crop)
        assert res.embedding.shape == (1024,) and res.label == "basophil"
