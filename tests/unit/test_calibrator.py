"""INT8 entropy calibrator on real calibration images (the shipped set, else PBC crops)."""

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from edge_app.backends import BackendError  # noqa: E402
from edge_app.backends import calibrator as calib  # noqa: E402
from edge_app.imaging import preprocess  # noqa: E402
from tests import trt_fakes

CROP_SHAPE = (1, *preprocess.CLASSIFIER_SIZE[::-1], 3)

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(__file__).resolve().parents[3] / "shared" / "datasets"
SHARED_PBC = SHARED / "pbc"


@pytest.fixture(scope="module")
def calib_dir(tmp_path_factory):
    """The shipped calibration/ when present, else a small set of PBC crops + BCCD frames."""
    shipped = REPO / "calibration"
    if (shipped / "manifest.json").is_file():
        return shipped
    if not SHARED_PBC.is_dir():
        pytest.skip("neither calibration/ nor the shared PBC crops are here")
    root = tmp_path_factory.mktemp("calib")
    crops = sorted((SHARED_PBC / "lymphocyte").glob("*.jpg"))[:10]
    frames = sorted((SHARED / "bccd" / "images").glob("*.jpg"))[:10]
    trt_fakes.write_tiny_bundle(root, crops, frames)
    return root / "calibration"


def _fake_cuda_with_context():
    cuda = trt_fakes.make_cuda()
    cuda.Device(0).retain_primary_context().push()
    return cuda


def test_files_listed_per_network_exist(calib_dir):
    crops = calib.calibration_files(calib_dir, "classifier")
    frames = calib.calibration_files(calib_dir, "detector")
    listing = json.loads((calib_dir / "manifest.json").read_text())
    assert len(crops) == len(listing["crops"]) >= calib.MIN_IMAGES
    assert len(frames) == len(listing["frames"]) >= calib.MIN_IMAGES
    assert all(p.is_file() for p in crops + frames)
    assert not set(crops) & set(frames)


def test_get_batch_copies_preprocessed_crops_to_one_device_buffer(calib_dir, tmp_path):
    files = calib.calibration_files(calib_dir, "classifier")[:12]
    cuda = _fake_cuda_with_context()
    batches = calib.CalibrationBatches(files, "classifier", CROP_SHAPE)
    cal = calib.calibrator_for(trt_fakes.make_trt(cuda=cuda))(batches, tmp_path / "c.calib", cuda)
    assert cal.get_batch_size() == 1
    pointers = set()
    for path in files:
        ptrs = cal.get_batch(["image"])
        assert isinstance(ptrs, list) and len(ptrs) == 1
        pointers.add(ptrs[0])
        on_device = np.frombuffer(bytes(cuda.state["memory"][ptrs[0]]), np.float32).reshape(CROP_SHAPE)
        expected = preprocess.classifier_input(preprocess.read_rgb(str(path)))
        np.testing.assert_array_equal(on_device, expected)
    assert cal.get_batch(["image"]) is None
    assert cal.batches_served == len(files) and len(pointers) == 1
    cal.free()
    assert cuda.state["memory"] == {}


def test_detector_batches_are_letterboxed_frames(calib_dir):
    files = calib.calibration_files(calib_dir, "detector")[:calib.MIN_IMAGES]
    xs = list(calib.CalibrationBatches(files, "detector", (1, 240, 320, 3)))
    assert len(xs) == len(files)
    for x, path in zip(xs, files):
        assert x.dtype == np.float32 and x.flags.c_contiguous
        np.testing.assert_array_equal(x, preprocess.detector_input(preprocess.read_rgb(str(path)))[0])


def test_cache_round_trip_through_one_file(tmp_path, calib_dir):
    cuda = _fake_cuda_with_context()
    batches = calib.CalibrationBatches(calib.calibration_files(calib_dir, "classifier"), "classifier", CROP_SHAPE)
    cache = tmp_path / "engines" / "classifier.calib"
    cal = calib.calibrator_for(trt_fakes.make_trt(cuda=cuda))(batches, cache, cuda)
    assert cal.read_calibration_cache() is None
    cal.write_calibration_cache(memoryview(b"TRT-8601-EntropyCalibration2\nimage: 3c010a14\n"))
    assert cache.read_bytes() == b"TRT-8601-EntropyCalibration2\nimage: 3c010a14\n"
    assert [p.name for p in cache.parent.iterdir()] == ["classifier.calib"]  # no temp file left
    again = calib.calibrator_for(trt_fakes.make_trt(cuda=cuda))(batches, cache, cuda)
    assert again.read_calibration_cache() == cache.read_bytes() and again.cache_read
    cache.write_bytes(b"")
    assert again.read_calibration_cache() is None  # an empty file means "recalibrate"


def test_unreadable_image_is_skipped_but_too_few_is_an_error(tmp_path, calib_dir, caplog):
    good = calib.calibration_files(calib_dir, "classifier")[:calib.MIN_IMAGES]
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 truncated")
    batches = calib.CalibrationBatches(good + [broken], "classifier", CROP_SHAPE)
    with caplog.at_level(logging.WARNING):
        assert len(list(batches)) == calib.MIN_IMAGES
    assert "broken.jpg skipped" in caplog.text and batches.skipped == [broken]
    short = calib.CalibrationBatches(good[:3] + [broken], "classifier", CROP_SHAPE)
    with pytest.raises(BackendError, match="only 3 readable calibration images"):
        list(short)


def test_shape_mismatch_names_the_release_problem(calib_dir):
    files = calib.calibration_files(calib_dir, "classifier")[:2]
    with pytest.raises(BackendError, match="different releases"):
        list(calib.CalibrationBatches(files, "classifier", (1, CROP_SHAPE[1] + 32, CROP_SHAPE[2] + 32, 3)))


def test_manifest_problems_are_clear(tmp_path):
    with pytest.raises(BackendError, match="calibration manifest missing"):
        calib.calibration_files(tmp_path, "detector")
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(BackendError, match="unreadable"):
        calib.calibration_files(tmp_path, "detector")
    (tmp_path / "manifest.json").write_text(json.dumps({"crops": [{"file": "a.jpg"}]}))
    with pytest.raises(BackendError, match="lists no files for the detector"):
        calib.calibration_files(tmp_path, "detector")
    assert calib.calibration_files(tmp_path, "classifier") == [tmp_path / "a.jpg"]


def test_find_calibration_dir_inside_or_beside_model_folder(tmp_path, calib_dir):
    versioned = tmp_path / "models" / "v2"
    versioned.mkdir(parents=True)
    with pytest.raises(BackendError, match="no calibration set found"):
        calib.find_calibration_dir(versioned)
    shutil.copy(calib_dir / "manifest.json", tmp_path / "models" / "manifest.json")
    (tmp_path / "models" / "calibration").mkdir()
    shutil.copy(calib_dir / "manifest.json", tmp_path / "models" / "calibration" / "manifest.json")
    assert calib.find_calibration_dir(versioned) == tmp_path / "models" / "calibration"
    (versioned / "calibration").mkdir()
    shutil.copy(calib_dir / "manifest.json", versioned / "calibration" / "manifest.json")
    assert calib.find_calibration_dir(versioned) == versioned / "calibration"


def test_base_class_is_tensorrts_when_it_imports():
    fake = trt_fakes.make_trt()
    cls = calib.calibrator_for(fake)
    assert issubclass(cls, fake.IInt8EntropyCalibrator2)
    assert calib.calibrator_for(fake) is cls  # one class per TensorRT module
    obj = cls(calib.CalibrationBatches([], "classifier", CROP_SHAPE), "/nonexistent/c", None)
    assert obj._trt_base_initialised  # pybind11 needs the base __init__ called
    if calib._trt is None:
        assert calib.EntropyCalibrator.__mro__[-1] is object
    with pytest.raises(BackendError, match="Q/DQ"):
        calib.calibrator_for(trt_fakes.make_trt("11.0.0", implicit_int8=False))
