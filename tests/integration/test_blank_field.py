"""Capturing the per-device blank field (``python -m edge_app.imaging.blank_field``) from real sources.

The blank here is real slide background: the flattest patch of plasma in the shipped BCCD sample's
first frame, enlarged to the frame size (no cell in it, nothing drawn). The sample video itself is the
field a technician must not use (cells in view)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[2]

from edge_app.config import load_config  # noqa: E402
from edge_app.imaging import preprocess  # noqa: E402
from edge_app.session.runner import device_calibration  # noqa: E402

SAMPLE = ROOT / "samples" / "slide_pan_train.mp4"


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge_app.imaging.blank_field", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


def _plasma_folder(tmp_path: Path, gain: float = 1.0, frames: int = 5) -> Path:
    """A folder of frames of the sample's flattest 48 px patch of plasma, enlarged to 640x480."""
    ok, bgr = cv2.VideoCapture(str(SAMPLE)).read()
    assert ok
    grey = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY).astype(np.float32)
    _, y, x = min((grey[y:y + 48, x:x + 48].std(), y, x)
                  for y in range(0, grey.shape[0] - 48, 8) for x in range(0, grey.shape[1] - 48, 8))
    field = cv2.resize(bgr[y:y + 48, x:x + 48], (640, 480), interpolation=cv2.INTER_CUBIC)
    field = np.clip(field.astype(np.float32) * gain, 0, 255).astype(np.uint8)
    folder = tmp_path / f"plasma_{gain}"
    folder.mkdir()
    for i in range(frames):
        cv2.imwrite(str(folder / f"{i:03d}.png"), field)
    return folder


def test_an_empty_field_is_written_with_its_sha256_and_loads_as_the_flat_field(tmp_path):
    out = tmp_path / "cal" / "blank.png"
    res = _cli("--source", str(_plasma_folder(tmp_path)), "--out", str(out))
    assert res.returncode == 0, res.stderr
    info = json.loads(res.stdout.strip().splitlines()[-1])
    assert info["out"] == str(out) and info["frames"] == 5
    assert info["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert info["structure"] < 0.02 and 0.5 < info["corner_to_centre"] <= 1.5
    assert "flat_field" in res.stderr  # tells the technician the config line to set
    flat = preprocess.FlatField.load(str(out))
    assert flat.gain.shape == (480, 640, 3)
    assert not list(out.parent.glob(".*tmp*"))  # no temporary file left behind
    # every session counted with it records the same file
    cfg = load_config(None, {"capture.flat_field": str(out)})
    assert device_calibration(cfg, 1.0)["flat_field_sha256"] == info["sha256"]


def test_a_field_with_cells_is_refused_and_the_old_blank_is_kept(tmp_path):
    out = tmp_path / "blank.png"
    out.write_bytes(b"previous blank")
    res = _cli("--source", str(SAMPLE), "--out", str(out), "--frames", "3")
    assert res.returncode == 1
    assert "not empty" in res.stderr and "nothing was written" in res.stderr
    assert "Traceback" not in res.stderr
    assert out.read_bytes() == b"previous blank"


def test_a_dark_field_is_refused_with_what_to_do(tmp_path):
    res = _cli("--source", str(_plasma_folder(tmp_path, gain=0.1)), "--out", str(tmp_path / "b.png"),
               "--no-cell-check")
    assert res.returncode == 1 and "too dark" in res.stderr and "lamp" in res.stderr
    assert not (tmp_path / "b.png").exists()


def test_a_missing_camera_or_a_bad_path_is_a_clear_error(tmp_path):
    res = _cli("--source", str(tmp_path / "nothing.mp4"), "--out", str(tmp_path / "b.png"))
    assert res.returncode == 2 and "error" in res.stderr and "Traceback" not in res.stderr
    res = _cli("--source", str(SAMPLE), "--out", str(tmp_path / "b.jpg"))
    assert res.returncode == 2 and ".png" in res.stderr
