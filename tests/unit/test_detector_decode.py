"""Detector decoding: neighbour box voting and the mirrored second pass.

The mirror test runs the real shipped INT8 detector on a real calibration
frame: with ``flip`` on, a network input and its mirror image must give
mirrored heatmaps, distances and boxes (the average of a pass and its mirror
is symmetric by construction, so any slip in mirroring the heatmap or swapping
left/right distances breaks it).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edge_app.config import ConfigError, load_config
from edge_app.imaging import preprocess
from edge_app.model.bundle import Detector, Manifest, ModelBundle, create_backend, decode_detections

ROOT = Path(__file__).resolve().parents[2]
FRAMES = sorted((ROOT / "calibration" / "frames").glob("*.jpg"))
STRIDE = 16


def _grid(h=6, w=8):
    return np.zeros((h, w), np.float32), np.zeros((h, w, 4), np.float32)


def test_lone_peak_decodes_its_own_box():
    heat, ltrb = _grid()
    heat[2, 3] = 0.9
    ltrb[2, 3] = (1.0, 0.5, 2.0, 1.5)
    boxes, scores = decode_detections(heat, ltrb, STRIDE, 0.3, 0.4)
    cx, cy = 3.5 * STRIDE, 2.5 * STRIDE
    assert np.allclose(boxes, [[cx - 16, cy - 8, cx + 32, cy + 24]])
    assert np.allclose(scores, [0.9])


def test_neighbours_vote_by_heat():
    heat, ltrb = _grid()
    heat[2, 3], heat[2, 4] = 0.8, 0.4  # the right neighbour is weaker: one peak
    ltrb[2, 3] = (1.0, 1.0, 1.0, 1.0)  # box centred on cell (3, 2), 32 px wide
    ltrb[2, 4] = (3.0, 1.0, 0.0, 1.0)  # shifted cell predicting a box 16 px further left
    boxes, _ = decode_detections(heat, ltrb, STRIDE, 0.3, 0.4)
    assert len(boxes) == 1
    a = np.array([2.5, 1.5, 4.5, 3.5]) * STRIDE
    b = np.array([1.5, 1.5, 4.5, 3.5]) * STRIDE
    assert np.allclose(boxes[0], (0.8 * a + 0.4 * b) / 1.2, atol=1e-4)


def test_peak_on_the_border_ignores_cells_outside_the_grid():
    heat, ltrb = _grid()
    heat[0, 0] = 0.7
    ltrb[0, 0] = (0.5, 0.5, 0.5, 0.5)
    boxes, _ = decode_detections(heat, ltrb, STRIDE, 0.3, 0.4)
    assert np.allclose(boxes, [[0, 0, 16, 16]])


@pytest.mark.skipif(not FRAMES, reason="calibration frames missing")
def test_flip_pass_is_mirror_symmetric_on_a_real_frame():
    manifest = Manifest.load()
    det = Detector.for_manifest(create_backend(manifest, "detector", "tflite", "int8"), manifest, 0.2, flip=True)
    x, _ = preprocess.detector_input(preprocess.read_rgb(str(FRAMES[0])))
    heat, ltrb = det.raw(x)
    heat_m, ltrb_m = det.raw(np.ascontiguousarray(x[:, :, ::-1]))
    assert np.allclose(heat, heat_m[:, ::-1], atol=1e-6)
    assert np.allclose(ltrb, ltrb_m[:, ::-1][..., [2, 1, 0, 3]], atol=1e-6)
    w = x.shape[2]
    found = decode_detections(heat, ltrb, STRIDE, 0.2, 0.4)[0]
    mirrored = decode_detections(heat_m, ltrb_m, STRIDE, 0.2, 0.4)[0]
    assert len(found) and len(found) == len(mirrored)
    back = np.stack([w - mirrored[:, 2], mirrored[:, 1], w - mirrored[:, 0], mirrored[:, 3]], 1)
    order = lambda b: b[np.lexsort((b[:, 1], np.round(b[:, 0], 2)))]  # noqa: E731
    assert np.allclose(order(found), order(back), atol=1e-3)
    # and the mirrored pass really changed something (else the test proves nothing)
    det.flip = False
    assert not np.allclose(det.raw(x)[0], heat)


def test_manifest_switches_the_mirrored_pass():
    manifest = Manifest.load()
    bundle = ModelBundle(backend="tflite")
    assert bundle.detector.flip is bool(manifest.entry("detector").get("tta_flip", False))
    calls = []

    class Counting:
        def __init__(self, inner):
            self.inner = inner

        def prepare_input(self, x):
            return self.inner.prepare_input(x)

        def infer(self, x):
            calls.append(x.shape)
            return self.inner.infer(x)

    real = bundle.detector.backend
    bundle.detector.backend = Counting(real)
    bundle.detector(np.full((240, 320, 3), 200, np.uint8))
    bundle.detector.backend = real
    bundle.close()
    assert len(calls) == (2 if bundle.detector.flip else 1)


def test_without_vote_the_peak_box_stands_alone():
    heat, ltrb = _grid()
    heat[2, 3], heat[2, 4] = 0.8, 0.4
    ltrb[2, 3] = (1.0, 1.0, 1.0, 1.0)
    ltrb[2, 4] = (3.0, 1.0, 0.0, 1.0)
    boxes, _ = decode_detections(heat, ltrb, STRIDE, 0.3, 0.4, vote=False)
    assert np.allclose(boxes, [np.array([2.5, 1.5, 4.5, 3.5]) * STRIDE])


def test_config_overrides_the_mirrored_pass(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("[model]\ndetector_flip = false\n")
    bundle = ModelBundle.from_config(load_config(cfg), tmp_path)
    assert bundle.detector.flip is False
    bundle.close()
    cfg.write_text("[model]\ndetector_flip = \"sometimes\"\n")
    with pytest.raises(ConfigError, match="detector_flip"):
        load_config(cfg)


@pytest.mark.parametrize("recorded, vote", [(None, True), (True, True), (False, False)])
def test_manifest_switches_the_box_vote(recorded, vote):
    # manifests before box_vote was recorded all voted; a detector validated without it says so
    data = json.loads(json.dumps(Manifest.load().data))
    entry = data["models"]["detector"]
    entry.pop("box_vote", None)
    if recorded is not None:
        entry["box_vote"] = recorded
    det = Detector.for_manifest(backend=None, manifest=Manifest(Path("."), data))
    assert det.vote is vote
    assert det.stride == entry["stride"]
