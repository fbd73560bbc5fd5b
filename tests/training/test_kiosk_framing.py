"""Kiosk framing of single-cell photos (scripts/training/kiosk_framing.py, scripts/training/augment.py).

The detector and the photos are the shipped ones: the INT8 TFLite detector in
models/ and the PBC crops of the shipped calibration set (CC BY 4.0).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_app.imaging import framing, preprocess
from scripts.training import augment, kiosk_framing

ROOT = Path(__file__).resolve().parents[2]
PBC_PHOTOS = sorted((ROOT / "calibration" / "crops").glob("pbc_*.jpg"))[:12]


@pytest.fixture(scope="module")
def detector():
    return kiosk_framing.shipped_detector()


def test_the_photographed_cell_is_found_and_framed_as_the_kiosk_frames_it(detector):
    assert PBC_PHOTOS, "the shipped calibration set has PBC crops"
    sides = []
    for path in PBC_PHOTOS:
        photo = preprocess.read_rgb(str(path))
        h, w = photo.shape[:2]
        sq = framing.kiosk_square(detector, photo)
        if sq is None:
            continue
        cx, cy, side = kiosk_framing.augment_frame(sq)
        # the square sits on the photographed cell, which the dataset centres
        assert abs(cx - w / 2) <= framing.MAX_CENTRE_OFFSET * w
        assert abs(cy - h / 2) <= framing.MAX_CENTRE_OFFSET * h
        crop = framing.kiosk_crop(photo, sq)
        assert crop.shape[:2] == (int(sq[3] - sq[1]), int(sq[2] - sq[0]))
        assert abs(crop.shape[0] - crop.shape[1]) <= 1  # square up to the rounding of square_box
        sides.append(side / w)
    assert len(sides) >= len(PBC_PHOTOS) - 1
    # A PBC cell fills well under half its photo, so the kiosk's square is smaller than the photo.
    assert np.median(sides) < 0.8


def test_without_a_square_the_photo_is_used_as_it_is():
    photo = preprocess.read_rgb(str(PBC_PHOTOS[0]))
    assert framing.kiosk_crop(photo, None) is photo
    assert framing.kiosk_crop(photo, np.full(4, np.nan, np.float32)) is photo
    assert kiosk_framing.augment_frame(np.full(4, np.nan, np.float32)) is None


def test_crop_geometry_moves_the_framed_cell_to_the_centre_and_fills_the_crop():
    # A geometric marker, not a cell: a dark disc off the photo's centre.
    img = np.full((128, 128, 3), 230, np.uint8)
    yy, xx = np.mgrid[:128, :128]
    img[(xx - 40) ** 2 + (yy - 50) ** 2 <= 10 ** 2] = 20
    out = augment.crop_geometry(img, np.random.default_rng(3), scale=(1.0, 1.0), shift=0.0,
                                frame=(40.0, 50.0, 32.0))
    dark = np.argwhere(out[..., 0] < 100)
    centre = dark.mean(0)
    assert np.allclose(centre, (63.5, 63.5), atol=2.0)
    # zoom 128 / 32 = 4: the disc of radius 10 becomes one of radius about 40
    radius = np.sqrt(len(dark) / np.pi)
    assert 36 < radius < 44


def test_crop_geometry_without_a_frame_keeps_the_photo_framing():
    img = np.full((128, 128, 3), 230, np.uint8)
    yy, xx = np.mgrid[:128, :128]
    img[(xx - 64) ** 2 + (yy - 64) ** 2 <= 10 ** 2] = 20
    out = augment.crop_geometry(img, np.random.default_rng(3), scale=(1.0, 1.0), shift=0.0)
    radius = np.sqrt((out[..., 0] < 100).sum() / np.pi)
    assert 9 < radius < 11


def test_squares_of_another_cache_are_refused(tmp_path, monkeypatch):
    f = tmp_path / "kiosk_frames.npz"
    np.savez(f, squares=np.zeros((2, 4), np.float32), keys=np.array(["a", "b"]), sources=np.array(["pbc", "pbc"]))
    monkeypatch.setattr(kiosk_framing, "FRAMES", f)
    assert kiosk_framing.load(np.array(["a", "b"])).shape == (2, 4)
    with pytest.raises(SystemExit, match="belongs to another classifier cache"):
        kiosk_framing.load(np.array(["a", "c"]))
    monkeypatch.setattr(kiosk_framing, "FRAMES", tmp_path / "missing.npz")
    with pytest.raises(SystemExit, match="run `python -m scripts.training.kiosk_framing`"):
        kiosk_framing.load(np.array(["a"]))
