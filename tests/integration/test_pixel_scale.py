"""Magnification measured from the frames (edge_app.imaging.scale) and used by the detector (tiling).

Real frames only: the shipped calibration frames (BCCD and Chula fields) and,
where ../shared/datasets is present, every detector camera of it, resized by
known factors; the real INT8 TFLite detector.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_app.config import ConfigError, load_config
from edge_app.imaging import preprocess, tiling
from edge_app.imaging.scale import ScaleReference, detector_scale, is_unit, measure_scale, rbc_diameter
from edge_app.model.bundle import Detector, Manifest, create_backend
from scripts.training.eval_metrics import iou_matrix

ROOT = Path(__file__).resolve().parents[2]
FRAMES = ROOT / "calibration" / "frames"
BCCD = [preprocess.read_rgb(str(p)) for p in sorted(FRAMES.glob("bccd_*.jpg"))[:6]]
CHULA = [preprocess.read_rgb(str(p)) for p in sorted(FRAMES.glob("chula_*.jpg"))[:6]]
DATASETS = ROOT.parent / "shared" / "datasets"
MANIFEST = Manifest.load()
REFERENCE = ScaleReference.from_manifest(MANIFEST.data)


def shrink(frames, f):
    return [cv2.resize(x, None, fx=f, fy=f, interpolation=cv2.INTER_AREA) for x in frames]


@pytest.fixture(scope="module")
def detector():
    return Detector.for_manifest(create_backend(MANIFEST, "detector", "tflite", "int8", 2), MANIFEST)


def test_the_shipped_manifest_records_the_trained_size():
    assert REFERENCE is not None
    assert 0 < REFERENCE.lo < REFERENCE.target < REFERENCE.hi
    # the reference sits beside the model's files and leaves their hashes valid
    for net in ("detector", "classifier"):
        for kind in MANIFEST.entry(net)["files"]:
            MANIFEST.file(net, kind)


@pytest.mark.parametrize("name, frames", [("bccd", BCCD), ("chula", CHULA)])
@pytest.mark.parametrize("f", [0.5, 1 / 3, 0.2])
def test_measured_diameter_follows_a_known_magnification(name, frames, f):
    d1, n1, _ = rbc_diameter(frames)
    df, nf, _ = rbc_diameter(shrink(frames, f))
    assert n1 > 100 and nf > 50
    assert df / d1 == pytest.approx(f, rel=0.2), f"{name}: {d1:.1f} px at 1x, {df:.1f} px at {f:.2f}x"


def test_trained_cameras_are_left_as_they_are():
    for frames in (BCCD, CHULA):
        est = measure_scale(frames, REFERENCE)
        assert est.factor == 1.0 and est.n_cells >= 20 and est.confidence > 0


def test_a_camera_with_a_fifth_of_the_magnification_is_enlarged_about_five_times():
    from scripts.training.eval_scale import fifth_field

    empty = np.zeros((0, 4), np.float32)
    fields = [fifth_field([(f, empty) for f in BCCD[k:] + BCCD[:k]])[0] for k in range(2)]
    est = measure_scale(fields, REFERENCE)
    bccd_at_detector = rbc_diameter(BCCD)[0] * detector_scale(BCCD[0].shape)
    assert est.factor == pytest.approx(5 * REFERENCE.target / bccd_at_detector, rel=0.25)


def test_no_reference_or_no_cells_means_no_resizing():
    assert measure_scale(BCCD, None).factor in (1.0, measure_scale(BCCD).factor)  # None = the shipped one
    blank = np.full((480, 640, 3), 220, np.uint8)
    est = measure_scale([blank], REFERENCE)
    assert est.factor == 1.0 and est.n_cells < 20 and est.confidence == 0.0
    assert ScaleReference.from_manifest({"models": {"detector": {}}}) is None
    assert ScaleReference.from_manifest({"models": {"detector": {"rbc_diameter_px": {"lo": 5}}}}) is None


def test_unit_band():
    assert is_unit(1.0) and is_unit(1.1) and is_unit(0.9)
    assert not is_unit(1.3) and not is_unit(0.7) and not is_unit(5.0)


def test_windows_cover_the_enlarged_frame_with_overlap():
    (rw, rh), windows = tiling.plan((480, 640), 2.5)
    tw, th = preprocess.DETECTOR_SIZE
    assert (rw, rh) == (1600, 1200)
    xs, ys = sorted({w.x0 for w in windows}), sorted({w.y0 for w in windows})
    assert xs[0] == 0 and xs[-1] + tw == rw and ys[0] == 0 and ys[-1] + th == rh
    assert all(b - a <= tw - tiling.OVERLAP for a, b in zip(xs, xs[1:]))
    assert all(b - a <= th - tiling.OVERLAP for a, b in zip(ys, ys[1:]))
    # a small frame is one window, padded
    assert tiling.plan((480, 640), 0.3)[1] == [tiling.Window(0, 0, (False, False, False, False))]
    cut = np.array([[1, 50, 40, 90], [100, 50, 160, 100], [290, 10, 319.5, 60]], np.float32)
    inner = tiling.Window(0, 0, (True, False, True, False))
    assert tiling.keep_whole(cut, inner).tolist() == [False, True, False]


def test_scale_one_and_the_unit_band_change_nothing(detector):
    frame = BCCD[0]
    ref = [(d.box.tolist(), d.score) for d in detector(frame)]
    for s in (1.0, 1.1):
        detector.scale = s
        assert [(d.box.tolist(), d.score) for d in detector(frame)] == ref
    detector.scale = 1.0


def test_tiled_boxes_come_back_in_frame_pixels(detector):
    """A Chula field enlarged 2.5x (its cells then BCCD's size) is cut into windows; the cells found are
    those found in the untiled frame, at the same place in the frame's own pixels."""
    for frame in CHULA[:3]:
        detector.scale = 1.0
        plain = np.array([d.box for d in detector(frame)]).reshape(-1, 4)
        detector.scale = 2.5
        tiled = np.array([d.box for d in detector(frame)]).reshape(-1, 4)
        detector.scale = 1.0
        assert len(plain) >= 1 and len(tiled) == len(plain)
        iou = iou_matrix(plain, tiled)
        assert (iou.max(axis=1) >= 0.5).all()
        h, w = frame.shape[:2]
        assert (tiled[:, [0, 2]] <= w).all() and (tiled[:, [1, 3]] <= h).all()


@pytest.mark.parametrize("value, ok", [("auto", True), (4.0, True), (0.5, True), (20.0, False),
                                       ("big", False), (0.1, False)])
def test_pixel_scale_config(tmp_path, value, ok):
    cfg = tmp_path / "c.toml"
    cfg.write_text(f"[capture]\npixel_scale = {json.dumps(value)}\n")
    if ok:
        assert load_config(cfg).capture.pixel_scale == value
    else:
        with pytest.raises(ConfigError, match="capture.pixel_scale"):
            load_config(cfg)


@pytest.mark.datasets
@pytest.mark.skipif(not DATASETS.is_dir(), reason="needs ../shared/datasets")
def test_every_detector_camera_measures_its_known_ratio():
    """BCCD, Chula and TXL-PBC's Kaggle, PBC and Raabin cameras, each at a half and a fifth."""
    from scripts.training.eval_scale import held_out_frames

    cams: dict[str, list] = {}
    for cam, rgb, _ in held_out_frames("val"):
        if len(cams.setdefault(cam, [])) < 12 and (not cams[cam] or cams[cam][0].shape == rgb.shape):
            cams[cam].append(rgb)
    assert {"bccd", "chula", "txl_pbc/pbc", "txl_pbc/raabin", "txl_pbc/kaggle"} <= set(cams)
    for cam, frames in cams.items():
        d1 = rbc_diameter(frames)[0]
        for f in (0.5, 0.2):
            assert rbc_diameter(shrink(frames, f))[0] / d1 == pytest.approx(f, rel=0.35), cam


@pytest.mark.slow
@pytest.mark.datasets
@pytest.mark.skipif(not DATASETS.is_dir(), reason="needs ../shared/datasets")
def test_held_out_frames_at_a_fifth_are_found_once_the_scale_is_measured():
    """scripts.training.eval_scale on a handful of real held-out BCCD frames (25, in the 8 fields a session
    measures from)."""
    from scripts.training.eval_scale import evaluate

    res = evaluate("test", per_camera=25, cameras=["bccd"])["cameras"]["bccd"]
    assert res["1x"]["scale"]["factor"] == 1.0 and res["1x"]["recall"] == res["1x"]["recall_at_scale_1"]
    assert res["fifth_unscaled"]["recall"] < 0.5
    assert res["fifth_measured"]["scale"]["factor"] > 3
    assert res["fifth_measured"]["recall"] >= 0.9


@pytest.mark.slow
def test_a_session_records_the_scale_it_measured(tmp_path):
    """The real `run` on the shipped sample pan (BCCD fields, a trained camera): the scale is measured from
    the first frames, stays 1, and the session's calibration JSON says so."""
    import subprocess
    import sys

    from edge_app.store import Store

    video = ROOT / "samples" / "slide_pan_train.mp4"
    out = tmp_path / "s.json"
    r = subprocess.run([sys.executable, "-m", "edge_app", "run", "--source", str(video), "--backend", "tflite",
                        "--target", "10", "--headless", "--summary-json", str(out), "--data-dir", str(tmp_path / "d")],
                       capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    with Store(tmp_path / "d") as store:
        calibration = json.loads(store.session(json.loads(out.read_text())["session"])["calibration"])
    scale = calibration["pixel_scale"]
    assert scale["mode"] == "auto" and scale["state"] in ("provisional", "measured")
    assert scale["factor"] == 1.0 and scale["n_cells"] >= 20
    assert scale["rbc_diameter_px"] == pytest.approx(rbc_diameter(BCCD)[0], rel=0.25)


@pytest.mark.datasets
@pytest.mark.skipif(not DATASETS.is_dir(), reason="needs ../shared/datasets")
def test_one_frame_of_a_trained_camera_that_misreads_is_left_alone():
    """A single Chula frame (what `detect IMAGE` sees) reads its crowded cells 20% small; one frame must
    leave the trained range by a wider margin than a session's eight before anything is resized."""
    frame = preprocess.read_rgb(str(DATASETS / "chula" / "images" / "L-8_0044.jpg"))
    d = rbc_diameter([frame])[0] * detector_scale(frame.shape)
    assert REFERENCE.lo / 1.45 < d < REFERENCE.lo / 1.15  # outside the 8-frame band, inside the 1-frame one
    assert measure_scale([frame], REFERENCE).factor == 1.0
