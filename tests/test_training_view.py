"""Order of the training augmentation (scripts/augment.py ``training_view``).

With ``photometric_first`` the sensor noise is added to the photo before the
kiosk's framing zooms it, so a framed crop's noise grain is enlarged with the
cell, as in the field; by default (1.5.0's recipe) it is added after the zoom.
A flat grey field, not a cell: only the noise's grain is measured.
"""

from __future__ import annotations

import numpy as np

from scripts import augment


def _grain(view: np.ndarray) -> float:
    """Correlation of horizontally neighbouring pixels of the noise (1 = smooth, 0 = per-pixel grain)."""
    x = view[..., 1].astype(np.float32)
    x = x - x.mean()
    return float((x[:, 1:] * x[:, :-1]).mean() / max((x * x).mean(), 1e-6))


def _views(photometric_first: bool, frame, noise_at_source: bool = False) -> list[np.ndarray]:
    out = []
    flat = np.full((128, 128, 3), 170, np.uint8)
    for seed in range(60):
        rng = np.random.default_rng(seed)
        view = augment.training_view(flat, rng, 1.0, (1.0, 1.0), 0.0, frame, photometric_first, noise_at_source)
        if view[..., 1].std() > 15:  # this draw added strong noise (the others are mostly smooth casts)
            out.append(view)
    return out


def test_noise_added_before_the_framing_zoom_is_enlarged_with_the_cell():
    frame = (64.0, 64.0, 64.0)  # the kiosk's square is half the photo: a zoom of 2
    after = _views(False, frame)
    before = _views(True, frame)
    assert len(after) >= 10 and len(before) >= 10
    # noise added at the crop's scale has little correlation between neighbours;
    # noise enlarged twice by the zoom's interpolation has a lot
    assert np.median([_grain(v) for v in after]) < 0.35
    assert np.median([_grain(v) for v in before]) > 0.6


def test_noise_at_source_is_enlarged_with_the_cell_and_nothing_else_moves():
    frame = (64.0, 64.0, 64.0)
    assert np.median([_grain(v) for v in _views(False, frame, noise_at_source=True)]) > 0.6
    # the same random numbers as 1.5.0's order: a view whose draw added no noise is 1.5.0's view
    photo = np.random.default_rng(0).integers(0, 255, (128, 128, 3), dtype=np.uint8)
    same = differ = 0
    for seed in range(40):
        a = augment.training_view(photo, np.random.default_rng(seed), frame=frame)
        b = augment.training_view(photo, np.random.default_rng(seed), frame=frame, noise_at_source=True)
        same += int(np.array_equal(a, b))
        differ += int(not np.array_equal(a, b) and np.abs(a.astype(int) - b).mean() > 1)
    assert same >= 10 and differ >= 10 and same + differ == 40


def test_without_photometric_first_the_order_is_1_5_0s():
    photo = np.random.default_rng(0).integers(0, 255, (128, 128, 3), dtype=np.uint8)
    frame = (60.0, 70.0, 80.0)
    rng_a, rng_b = np.random.default_rng(5), np.random.default_rng(5)
    expected = augment.photometric(augment.crop_geometry(photo, rng_a, frame=frame), rng_a)
    assert np.array_equal(augment.training_view(photo, rng_b, frame=frame), expected)


def test_crop_set_at_share_0_and_1_replays_1_5_0_and_runs_cls_pf():
    # Training needs PyTorch, which CI does not install: skipped there, run where training is set up.
    import pytest

    pytest.importorskip("torch")
    train = pytest.importorskip("scripts.train")
    from edge_app import preprocess
    from scripts import kiosk_framing

    rng = np.random.default_rng(1)
    images = rng.integers(0, 255, (4, 128, 128, 3), dtype=np.uint8)
    frames = np.tile(np.array([[30.0, 30.0, 100.0, 100.0]], np.float32), (4, 1))
    for share, first in ((0.0, False), (1.0, True)):
        ds = train.CropSet(images, np.zeros(4, int), True, 3, frames=frames, kiosk_framing=0.5,
                           photometric_first=share)
        for i in range(4):
            r = train._worker_rng(3, i)
            frame = kiosk_framing.augment_frame(frames[i]) if r.random() < 0.5 else None
            view = augment.training_view(images[i], r, 1.0, augment.CROP_SCALE, augment.CROP_SHIFT, frame, first)
            assert np.array_equal(ds[i][0].numpy(), preprocess.classifier_input(view)[0])
