"""Engine cache keys, file names and stale detection (no TensorRT needed)."""

import dataclasses
import hashlib

import pytest

from edge_app.backends import engine_cache
from edge_app.backends.engine_cache import EngineKey

KEY = EngineKey("classifier", "ab" * 32, "8.6.2", "NVIDIA Jetson AGX Orin", "8.7", "int8")


def test_file_name_carries_model_version_gpu_and_precision():
    name = KEY.file_name()
    assert name == "classifier.abababababababab.trt8.6.2.nvidia-jetson-agx-orin.sm87.int8.engine"
    # Any field of the key changes the name, so a new model/JetPack/GPU never loads an old engine.
    for field, value in [("model_sha256", "cd" * 32), ("trt_version", "10.3.0"), ("gpu_name", "Orin Nano"),
                         ("compute_capability", "7.2"), ("precision", "fp16"), ("net", "detector")]:
        assert dataclasses.replace(KEY, **{field: value}).file_name() != name


def test_missing_then_saved_then_ok(tmp_path):
    state = engine_cache.check(tmp_path, KEY)
    assert state.status == "missing" and "no engine built yet" in state.reason
    saved = engine_cache.save(tmp_path, KEY, b"engine-bytes", {"calibration_cache_sha256": "x"})
    assert saved.engine_sha256 == hashlib.sha256(b"engine-bytes").hexdigest()
    state = engine_cache.check(tmp_path, KEY)
    assert state.ok and state.engine_sha256 == saved.engine_sha256
    assert engine_cache.load(tmp_path, KEY) == b"engine-bytes"
    assert engine_cache.read_sidecar(state.path)["calibration_cache_sha256"] == "x"
    assert not list(tmp_path.glob("*.tmp*"))


def test_other_tensorrt_version_is_reported_with_both_versions(tmp_path):
    old = dataclasses.replace(KEY, trt_version="8.5.2")
    engine_cache.save(tmp_path, old, b"old")
    state = engine_cache.check(tmp_path, KEY)
    assert state.status == "missing"
    assert "8.5.2" in state.reason and "8.6.2" in state.reason
    assert state.found == [old]


def test_renamed_engine_with_wrong_sidecar_is_stale(tmp_path):
    # Someone copies an engine built elsewhere under the expected name.
    old = dataclasses.replace(KEY, gpu_name="Xavier", compute_capability="7.2")
    engine_cache.save(tmp_path, old, b"xavier")
    src = engine_cache.engine_path(tmp_path, old)
    dst = engine_cache.engine_path(tmp_path, KEY)
    src.rename(dst)
    engine_cache.sidecar_path(src).rename(engine_cache.sidecar_path(dst))
    state = engine_cache.check(tmp_path, KEY)
    assert state.status == "stale" and "Xavier" in state.reason
    with pytest.raises(LookupError, match="Xavier"):
        engine_cache.load(tmp_path, KEY)


def test_truncated_engine_is_stale(tmp_path):
    engine_cache.save(tmp_path, KEY, b"0123456789")
    path = engine_cache.engine_path(tmp_path, KEY)
    path.write_bytes(b"01234")
    state = engine_cache.check(tmp_path, KEY)
    assert state.status == "stale" and "damaged" in state.reason


def test_engine_without_sidecar_is_stale(tmp_path):
    path = engine_cache.engine_path(tmp_path, KEY)
    path.write_bytes(b"x")
    assert engine_cache.check(tmp_path, KEY).status == "stale"


def test_calibration_cache_name_depends_on_model_and_version_only():
    a = engine_cache.calibration_cache_path("/e", "detector", "ff" * 32, "8.6.2")
    assert a.name == "detector.ffffffffffffffff.trt8.6.2.calib"
    assert a != engine_cache.calibration_cache_path("/e", "detector", "ff" * 32, "10.3.0")


def test_prune_keeps_only_listed_models(tmp_path):
    new = dataclasses.replace(KEY, model_sha256="cd" * 32)
    engine_cache.save(tmp_path, KEY, b"old")
    engine_cache.save(tmp_path, new, b"new")
    old_calib = engine_cache.calibration_cache_path(tmp_path, "classifier", KEY.model_sha256, "8.6.2")
    old_calib.write_bytes(b"c")
    removed = engine_cache.prune(tmp_path, {new.model_sha256})
    assert engine_cache.engine_path(tmp_path, KEY) in removed and old_calib in removed
    assert not engine_cache.sidecar_path(engine_cache.engine_path(tmp_path, KEY)).exists()
    assert engine_cache.check(tmp_path, new).ok
