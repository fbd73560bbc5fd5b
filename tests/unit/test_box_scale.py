"""Per-camera box calibration (``[model] box_scale``): what it changes and where.

The scale is applied by the detector itself, in frame pixels, so every
consumer (``detect``'s JSON, the tracker, the classifier's crop, the screen)
sees the same boxes. Checked on a real shipped Chula frame with the real INT8
detector, through the real console script, and against the config's limits.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_app.config import ConfigError, load_config
from edge_app.imaging import preprocess
from edge_app.model.bundle import ModelBundle, scale_boxes
from scripts.training import box_fit
from tests.detect_cli import detect_boxes

ROOT = Path(__file__).resolve().parents[2]
FRAME = next(iter(sorted((ROOT / "calibration" / "frames").glob("chula_*.jpg"))), None)


def test_scaling_keeps_the_centre_and_scales_both_sides():
    boxes = np.array([[10, 20, 50, 40], [100, 100, 130, 190]], np.float32)
    out = scale_boxes(boxes, 0.5)
    assert np.allclose((out[:, :2] + out[:, 2:]) / 2, (boxes[:, :2] + boxes[:, 2:]) / 2)
    assert np.allclose(out[:, 2:] - out[:, :2], (boxes[:, 2:] - boxes[:, :2]) * 0.5)
    assert scale_boxes(boxes, 1.0) is boxes


@pytest.mark.skipif(FRAME is None, reason="calibration frames missing")
def test_detector_scales_its_boxes_on_a_real_frame():
    bundle = ModelBundle(backend="tflite")
    frame = preprocess.read_rgb(str(FRAME))
    h, w = frame.shape[:2]
    plain = np.array([d.box for d in bundle.detector(frame)], np.float32).reshape(-1, 4)
    bundle.detector.box_scale = 0.8
    scaled = np.array([d.box for d in bundle.detector(frame)], np.float32).reshape(-1, 4)
    bundle.close()
    assert len(plain) and len(plain) == len(scaled)
    # boxes clear of the frame's edge were not clipped, so they must be exactly the scaled ones
    inside = (plain[:, 0] > 0) & (plain[:, 1] > 0) & (plain[:, 2] < w - 1) & (plain[:, 3] < h - 1)
    assert inside.any()
    assert np.allclose(scaled[inside], scale_boxes(plain[inside], 0.8), atol=1e-3)


def test_config_limits_and_passes_the_scale(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("[model]\nbox_scale = 0.89\n")
    bundle = ModelBundle.from_config(load_config(cfg), tmp_path)
    assert bundle.detector.box_scale == pytest.approx(0.89)
    bundle.close()
    assert load_config().model.box_scale == 1.0  # as regressed unless a device is calibrated
    for bad in ("2.0", "0.1", '"small"'):
        cfg.write_text(f"[model]\nbox_scale = {bad}\n")
        with pytest.raises(ConfigError, match="model.box_scale"):
            load_config(cfg)


@pytest.mark.skipif(FRAME is None, reason="calibration frames missing")
def test_detect_verb_reports_the_scaled_boxes(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("[model]\nbox_scale = 0.7\n")
    plain, scaled = detect_boxes(FRAME, tmp_path), detect_boxes(FRAME, tmp_path, "--config", str(cfg))
    assert len(plain) and len(plain) == len(scaled)
    side = lambda b: (b[:, 2:] - b[:, :2]).max(1)  # noqa: E731
    assert np.all(side(scaled) < side(plain) * 0.75)


def test_suggested_scale_undoes_the_median_ratio():
    assert box_fit.suggested_scale(np.array([1.0, 1.12, 1.3])) == pytest.approx(0.89)
    assert box_fit.suggested_scale(np.array([3.0])) == 0.5  # clipped to what the config accepts
    with pytest.raises(ValueError, match="no labelled cell"):
        box_fit.suggested_scale(np.array([]))


@pytest.mark.parametrize("spec, message", [("chula", "CAMERA=FACTOR"), ("pbc=0.9", "CAMERA=FACTOR"),
                                           ("chula=x", "not a number"), ("chula=1.6", "outside")])
def test_bad_scale_specs_are_refused(spec, message):
    with pytest.raises(ValueError, match=message):
        box_fit.parse_scales([spec])
    assert box_fit.parse_scales(["chula=0.89", "bccd=1.0"]) == {"chula": 0.89, "bccd": 1.0}
