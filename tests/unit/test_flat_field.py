"""Per-device flat-field correction: a blank-field capture removes vignetting and the lamp's colour."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_app.imaging import preprocess

ROOT = Path(__file__).resolve().parents[2]
FRAME = sorted((ROOT / "calibration" / "frames").glob("bccd_*.jpg"))[0]


def _vignette(h: int, w: int, strength: float = 0.6) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    r2 = ((yy - h / 2) ** 2 + (xx - w / 2) ** 2) / ((h / 2) ** 2 + (w / 2) ** 2)
    return (1 - strength * r2)[..., None]


def _corner_to_centre(img: np.ndarray) -> float:
    h, w = img.shape[:2]
    corner = img[: h // 8, : w // 8].mean()
    centre = img[h // 2 - h // 16: h // 2 + h // 16, w // 2 - w // 16: w // 2 + w // 16].mean()
    return float(corner / centre)


def test_blank_field_capture_removes_vignetting():
    frame = preprocess.read_rgb(str(FRAME))
    h, w = frame.shape[:2]
    lens = _vignette(h, w)
    dimmed = np.clip(frame * lens, 0, 255).astype(np.uint8)          # the same field through a vignetting lens
    blank = np.clip(np.full_like(frame, 220) * lens, 0, 255).astype(np.uint8)  # an empty slide through it
    corrected = preprocess.FlatField(blank).apply(dimmed)
    original = _corner_to_centre(frame)
    assert abs(_corner_to_centre(dimmed) - original) > 0.25  # the lens really dims the corners
    assert abs(_corner_to_centre(corrected) - original) < 0.08


def test_gain_map_follows_a_new_resolution():
    frame = preprocess.read_rgb(str(FRAME))
    ff = preprocess.FlatField(np.full((240, 320, 3), 200, np.uint8))
    out = ff.apply(frame)
    assert out.shape == frame.shape and np.abs(out.astype(int) - frame).max() <= 1


def test_unreadable_blank_capture_is_a_clear_error(tmp_path):
    bad = tmp_path / "blank.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(ValueError, match="flat_field"):
        preprocess.FlatField.load(str(bad))
    cv2.imwrite(str(tmp_path / "ok.png"), np.full((48, 64, 3), 200, np.uint8))
    assert preprocess.FlatField.load(str(tmp_path / "ok.png")).gain.shape == (48, 64, 3)


def test_blank_field_capture_is_the_white_reference_for_the_lamp_colour():
    frame = preprocess.read_rgb(str(FRAME)).astype(np.float32)
    lamp = np.array([1.0, 0.87, 0.65], np.float32)  # a warm halogen lamp on the same field
    tinted = np.clip(frame * lamp, 0, 255).astype(np.uint8)
    blank = np.clip(np.full_like(frame, 220) * lamp, 0, 255).astype(np.uint8)
    corrected = preprocess.FlatField(blank).apply(tinted).astype(np.float32)
    ok = (frame > 20).all(axis=2) & (frame < 200).all(axis=2)  # away from clipping at either end
    per_channel = [float(np.median(corrected[..., c][ok] / frame[..., c][ok])) for c in range(3)]
    assert max(per_channel) - min(per_channel) < 0.03, per_channel  # one brightness scale, no colour cast
    tinted_ratio = [float(np.median(tinted[..., c][ok] / frame[..., c][ok])) for c in range(3)]
    assert max(tinted_ratio) - min(tinted_ratio) > 0.3  # the lamp really tinted the frame
