"""`wbc-counter classify` frames the cell as the kiosk does (edge_app/imaging/framing.py).

The real console script and the shipped TFLite models on shipped PBC photos
(the calibration set, CC BY 4.0): the JSON must be the classifier's answer on
the kiosk's square around the detected cell, not on the whole photo, unless
``--as-given`` is passed; an image without a cell is classified whole.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_app.imaging import framing, preprocess
from edge_app.model.bundle import ModelBundle

ROOT = Path(__file__).resolve().parents[2]
PHOTOS = sorted((ROOT / "calibration" / "crops").glob("pbc_*.jpg"))[:4]


def classify(*args: str, tmp_path: Path) -> list[dict]:
    # INT8 like the in-process bundle below: the default (auto) picks whichever precision this CPU runs faster.
    r = subprocess.run([sys.executable, "-m", "edge_app", "classify", "--json", "--precision", "int8", *args,
                        "--data-dir", str(tmp_path)],
                       capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    return [json.loads(line) for line in r.stdout.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def bundle():
    b = ModelBundle()  # the shipped models, INT8 TFLite on a CPU: what classify runs by default
    yield b
    b.close()


def probs(rows: list[dict]) -> np.ndarray:
    return np.array([list(r["probs"].values()) for r in rows])


def test_classify_types_the_kiosk_square_around_the_detected_cell(tmp_path, bundle):
    paths = [str(p) for p in PHOTOS]
    framed, whole = classify(*paths, tmp_path=tmp_path), classify("--as-given", *paths, tmp_path=tmp_path)
    want_framed, want_whole = [], []
    for p in paths:
        rgb = preprocess.read_rgb(p)
        assert framing.kiosk_square(bundle.detector, rgb) is not None, f"the detector finds the cell in {p}"
        want_framed.append(bundle.classifier(framing.frame_cell(bundle.detector, rgb)).probs)
        want_whole.append(bundle.classifier(rgb).probs)
    assert np.allclose(probs(framed), want_framed, atol=6e-5)  # probs are printed to 4 decimals
    assert np.allclose(probs(whole), want_whole, atol=6e-5)
    # A PBC cell fills about 40% of its photo: framing it changes what the classifier sees.
    assert not np.allclose(probs(framed), probs(whole), atol=1e-3)


def test_an_image_without_a_cell_is_classified_whole(tmp_path, bundle):
    # The plasma of a real smear photo, with no cell in it: the top-left corner of a PBC photo, tiled.
    rgb = preprocess.read_rgb(str(PHOTOS[0]))
    patch = rgb[:24, :24]
    blank = np.tile(patch, (6, 6, 1))
    assert framing.kiosk_square(bundle.detector, blank) is None
    path = tmp_path / "plasma.png"
    cv2.imwrite(str(path), cv2.cvtColor(blank, cv2.COLOR_RGB2BGR))
    assert probs(classify(str(path), tmp_path=tmp_path)) == pytest.approx(
        probs(classify("--as-given", str(path), tmp_path=tmp_path)))


def test_the_cell_nearest_the_centre_is_chosen_and_edge_cells_are_not():
    from edge_app.model.bundle import Detection

    def det(cx, cy, s=0.9):
        return Detection(np.array([cx - 20, cy - 20, cx + 20, cy + 20], np.float32), s)

    shape = (200, 200, 3)
    assert np.allclose(framing.centred_box([det(20, 20), det(110, 95), det(130, 100)], shape), [90, 75, 130, 115])
    assert framing.centred_box([det(20, 20), det(180, 100)], shape) is None  # both beyond a quarter of the side
    assert framing.centred_box([det(100, 100, s=0.1)], shape) is None  # too weak to be the cell
