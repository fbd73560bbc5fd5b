"""The background normalisation of 8-bit images by table is bit-identical to the per-pixel float multiply."""

from __future__ import annotations

import numpy as np

from edge_app.imaging import preprocess


def _per_pixel(image: np.ndarray, background: np.ndarray) -> np.ndarray:
    gain = (preprocess.BACKGROUND_LEVEL / background).astype(np.float32)
    return np.clip(image.astype(np.float32) * gain, 0.0, 255.0)


def test_table_equals_per_pixel_on_frames_and_crops():
    rng = np.random.default_rng(0)
    for shape in ((240, 320, 3), (128, 128, 3), (37, 53, 3)):
        image = rng.integers(0, 256, shape, dtype=np.uint8)
        for bg in (np.array([231.0, 190.5, 250.0], np.float32), np.array([40.0, 300.0, 1.0], np.float32),
                   preprocess.estimate_background(image)):
            got = preprocess.normalise_background(image, bg)
            assert got.dtype == np.float32 and got.shape == shape
            assert np.array_equal(got, _per_pixel(image, bg))


def test_a_view_and_a_float_image_take_the_general_path():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (100, 140, 3), dtype=np.uint8)
    bg = np.array([220.0, 210.0, 200.0], np.float32)
    view = image[:, ::-1]  # not contiguous
    assert np.array_equal(preprocess.normalise_background(view, bg), _per_pixel(view, bg))
    as_float = image.astype(np.float32)
    assert np.array_equal(preprocess.normalise_background(as_float, bg), _per_pixel(as_float, bg))
