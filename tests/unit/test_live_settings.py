"""run/bench build the bundle with the live loop's own mirrored pass and crop views; single-image verbs keep
the manifest's (what val chose for one image)."""

from __future__ import annotations

from edge_app.config import load_config
from edge_app.model.bundle import Manifest, ModelBundle
from tests.kiosk_fixtures import assert_model_runs, requires_model


@requires_model
def test_live_and_single_image_bundles(tmp_path):
    assert_model_runs()
    manifest = Manifest.load(None)
    flip = bool(manifest.entry("detector").get("tta_flip", False))
    cfg = load_config(None, {"inference.backend": "tflite", "inference.precision": "int8"})
    single = ModelBundle.from_config(cfg, tmp_path)
    live = ModelBundle.from_config(cfg, tmp_path, live=True)
    assert single.detector.flip is flip and single.classifier.views == manifest.tta_views
    assert live.detector.flip is False and live.classifier.views == manifest.tta_views  # the defaults
    cfg = load_config(None, {"inference.backend": "tflite", "inference.precision": "int8",
                             "model.live_tta_views": 1, "model.detector_flip": True})
    cfg.model.live_detector_flip = None  # unset: as detector_flip
    live = ModelBundle.from_config(cfg, tmp_path, live=True)
    assert live.detector.flip is True and live.classifier.views == 1
    assert ModelBundle.from_config(cfg, tmp_path).classifier.views == manifest.tta_views
    assert not (tmp_path / "precision.json").exists()  # an explicit precision is never measured
