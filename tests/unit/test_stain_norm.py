"""Stain-density referencing of classifier crops (edge_app.imaging.preprocess.normalise_stain)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edge_app.imaging import preprocess

ROOT = Path(__file__).resolve().parents[2]
CROPS = sorted((ROOT / "calibration" / "crops").glob("pbc_*.jpg"))[::30]
WHITE = preprocess.BACKGROUND_LEVEL + 1.0


def _fade(x: np.ndarray, factor: float) -> np.ndarray:
    """The same slide seen with a paler stain / lower-contrast camera: OD times factor."""
    od = np.maximum(-np.log((x + 1.0) / WHITE), 0.0)
    return (WHITE * np.exp(-od * factor) - 1.0).astype(np.float32)


def test_a_paler_copy_of_a_real_crop_normalises_to_the_same_crop():
    assert CROPS
    for path in CROPS:
        x = preprocess.normalise_background(preprocess.read_rgb(str(path)))
        x = np.minimum(x, preprocess.BACKGROUND_LEVEL)  # brighter-than-background pixels carry no stain
        a = preprocess.normalise_stain(x)
        b = preprocess.normalise_stain(_fade(x, 0.5))  # PBC's OD gain ~0.8, the pale copy's ~1.6: inside the limits
        assert np.abs(a - b).mean() < 1.5, path.name
        # and the stretch really did something on the pale copy
        assert np.abs(_fade(x, 0.5) - b).mean() > 5, path.name


def test_empty_background_is_not_blown_up():
    rng = np.random.default_rng(0)
    blank = np.clip(preprocess.BACKGROUND_LEVEL - np.abs(rng.normal(0, 3, (64, 64, 3))), 0, 255).astype(np.float32)
    out = preprocess.normalise_stain(blank)
    # the gain is capped (x3 in OD), so sensor noise stays noise-sized
    level = preprocess.BACKGROUND_LEVEL
    assert np.all(level - out <= preprocess.STAIN_GAIN_LIMITS[1] * 1.1 * (level - blank) + 0.5)


def test_output_range_and_dtype():
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 255, (32, 32, 3)).astype(np.float32)
    out = preprocess.normalise_stain(x)
    assert out.dtype == np.float32 and out.min() >= 0 and out.max() <= 255


def test_classifier_input_applies_it_only_when_asked():
    rgb = preprocess.read_rgb(str(CROPS[0]))
    plain = preprocess.classifier_input(rgb)
    stained = preprocess.classifier_input(rgb, stain_norm=True)
    assert plain.shape == stained.shape == (1, *preprocess.CLASSIFIER_SIZE[::-1], 3)
    np.testing.assert_array_equal(preprocess.model_input("classifier", rgb, True), stained)
    assert not np.array_equal(plain, stained)
