"""``precision = "auto"``: both CPU precisions checked against the reference outputs and timed, the faster kept,
cached per CPU and model in the data dir; an explicit precision and TensorRT never measure."""

from __future__ import annotations

import json

from edge_app import paths
from edge_app.config import load_config
from edge_app.model import precision
from edge_app.model.bundle import Manifest
from edge_app.session.runner import device_calibration
from tests.kiosk_fixtures import FakeBundle, assert_model_runs, requires_model


def test_explicit_precision_and_tensorrt_never_measure(tmp_path):
    manifest = Manifest.load(None)
    assert precision.resolve("fp32", "tflite", manifest, tmp_path, 2) == "fp32"
    assert precision.resolve("int8", "tflite", manifest, tmp_path, 2) == "int8"
    assert precision.resolve("auto", "tensorrt", manifest, tmp_path, 2) == "int8"
    assert not paths.precision_cache(tmp_path).exists()
    assert precision.resolve("auto", "tflite", manifest, tmp_path, 2, measure_if_missing=False) is None


def test_auto_is_the_config_default():
    assert load_config(None).inference.precision == "auto"


@requires_model
def test_auto_measures_once_and_reads_the_cache_after(tmp_path):
    assert_model_runs()
    manifest = Manifest.load(None)
    got = precision.resolve("auto", "tflite", manifest, tmp_path, 2)
    assert got in precision.CPU_CHOICES
    cache = json.loads(paths.precision_cache(tmp_path).read_text())
    key = precision.cache_key(manifest, 2)
    entry = cache[key]
    assert entry["precision"] == got
    # the shipped model passes the self-test's agreement check at both precisions; each was timed
    assert all(c["ok"] for c in entry["selftest"].values()) and set(entry["selftest"]) == {"int8", "fp32"}
    assert all(v > 0 for v in entry["median_ms_frame_plus_crop"].values())
    # the cached choice is what the next start uses (flip it to prove no new measurement ran)
    other = "fp32" if got == "int8" else "int8"
    entry["precision"] = other
    paths.precision_cache(tmp_path).write_text(json.dumps(cache))
    assert precision.resolve("auto", "tflite", manifest, tmp_path, 2) == other
    # another thread count (or another CPU or model file) is another key: not this entry
    assert precision.cached(tmp_path, manifest, 1) is None


def test_a_cache_for_another_model_is_ignored(tmp_path):
    manifest = Manifest.load(None)
    key = precision.cache_key(manifest, 2)
    stale = key.rsplit("|", 1)[0] + "|0000000000000000"
    paths.precision_cache(tmp_path).write_text(json.dumps({stale: {"precision": "fp32"}}))
    assert precision.cached(tmp_path, manifest, 2) is None


def test_the_session_records_the_precision_it_ran():
    bundle = FakeBundle()
    bundle.precision = "fp32"
    cal = device_calibration(load_config(None), 1.0, False, bundle)
    assert cal["precision"] == "fp32" and cal["tta_views"] == bundle.classifier.views
    assert cal["detector_flip"] is bundle.detector.flip
