"""Classifier test-time views: dihedral averaging, config and manifest wiring.

The recording backend stands in only to see *which* tensors reach the engine;
the invariance test runs the real shipped INT8 model on real calibration crops.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_app.backends import BackendError
from edge_app.config import ConfigError, load_config
from edge_app.imaging import preprocess
from edge_app.model.bundle import Classifier, Manifest, ModelBundle, create_backend

ROOT = Path(__file__).resolve().parents[2]
CROPS = sorted((ROOT / "calibration" / "crops").glob("pbc_*.jpg"))[:4]


class Recording:
    """Returns a fixed distribution per call and keeps every input it was given."""

    def __init__(self, n_classes: int = 6):
        self.inputs: list[np.ndarray] = []
        self.n = n_classes

    def infer(self, x):
        self.inputs.append(x.copy())
        p = np.zeros((1, self.n), np.float32)
        p[0, len(self.inputs) % self.n] = 1.0
        att = np.full((1, 4, 4, 1), float(len(self.inputs)), np.float32)
        return [p, att]

    def close(self):
        pass


def _crop() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 255, (50, 50, 3), dtype=np.uint8)


@pytest.mark.parametrize("views", [1, 2, 4, 8])
def test_views_are_distinct_dihedral_transforms(views):
    rec = Recording()
    c = Classifier(rec, views)(_crop())
    assert len(rec.inputs) == views
    x = preprocess.classifier_input(_crop())
    assert np.array_equal(rec.inputs[0], x)
    # every view is a different symmetry of the square: no repeats
    assert len({v.tobytes() for v in rec.inputs}) == views
    group = {np.rot90(m, k, axes=(1, 2)).tobytes() for k in range(4) for m in (x, x[:, :, ::-1])}
    assert all(v.tobytes() in group for v in rec.inputs)
    # the mean of the per-view distributions, attention of the crop as seen
    expected = np.zeros(6, np.float32)
    for i in range(1, views + 1):
        expected[i % 6] += 1.0 / views
    np.testing.assert_allclose(c.probs, expected, atol=1e-6)
    assert float(c.attention[0, 0]) == 1.0


def test_bad_view_count_is_refused():
    with pytest.raises(BackendError, match="views"):
        Classifier(Recording(), 3)


def test_config_accepts_only_group_sizes(tmp_path):
    good = tmp_path / "good.toml"
    good.write_text("[model]\ntta_views = 4\n")
    assert load_config(good).model.tta_views == 4
    bad = tmp_path / "bad.toml"
    bad.write_text("[model]\ntta_views = 3\n")
    with pytest.raises(ConfigError, match="tta_views"):
        load_config(bad)


def test_bundle_takes_manifest_views_unless_configured():
    manifest = Manifest.load()
    assert ModelBundle(backend="tflite").classifier.views == manifest.tta_views
    assert ModelBundle(backend="tflite", tta_views=1).classifier.views == 1


@pytest.mark.parametrize("path", CROPS, ids=lambda p: p.name)
def test_eight_views_make_the_real_model_rotation_invariant(path):
    """A quarter turn of the slide must not change the eight-view answer."""
    backend = create_backend(Manifest.load(), "classifier", "tflite", "int8")
    clf = Classifier(backend, 8)
    crop = preprocess.read_rgb(str(path))
    crop = crop[: min(crop.shape[:2]), : min(crop.shape[:2])]  # square, so the resize commutes with the turn
    a = clf(crop).probs
    for k in (1, 2, 3):
        b = clf(np.ascontiguousarray(np.rot90(crop, k))).probs
        # The crop's background estimate uses every pixel, so a turn changes
        # nothing but float rounding and INT8 requantisation: same label.
        np.testing.assert_allclose(a, b, atol=0.03)
        assert a.argmax() == b.argmax()
    backend.close()
