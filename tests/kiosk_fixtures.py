"""Fixtures of the kiosk tests: the fake bundle, synthetic pan videos, the shipped sample and model.

Imported by each kiosk test module (not a conftest.py: the tests folder is
shared with other components).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent

from tests.fakes import FakeBundle, NoisyDetector, make_slide, write_pan_video  # noqa: E402, F401

SAMPLE_VIDEO = ROOT / "samples" / "slide_pan_train.mp4"
SAMPLE_TRUTH = ROOT / "samples" / "slide_pan_train.json"
MODELS = ROOT / "models"


def build_synthetic_pan(folder: Path) -> dict:
    """A synthetic slide-pan video with back-tracking and focus slips, and its truth.

    Test modules wrap it in their own fixture (``scope="module"``).
    """
    rng = np.random.default_rng(11)
    classes = [0, 0, 0, 1, 1, 2, 3, 0, 1, 4, 0, 5]
    slide, cells = make_slide(rng, size=(2200, 960), n_cells=24, classes=classes)
    path = Path(folder) / "pan.mp4"
    info = write_pan_video(path, slide, rng, speed=16.0, slips=2)
    return {"video": path, "cells": cells, **info}


def model_available() -> bool:
    return (MODELS / "manifest.json").is_file()


requires_model = pytest.mark.skipif(not model_available(), reason="models/manifest.json not there yet")
requires_sample = pytest.mark.skipif(not SAMPLE_VIDEO.is_file(), reason="samples/slide_pan_train.mp4 missing")


def assert_model_runs() -> None:
    """Load the shipped INT8 models on TFLite in a child process first.

    A native abort inside the runtime (seen with an XNNPACK build on one export)
    would otherwise take the whole pytest process down; this turns it into a
    failure that says what broke.
    """
    import subprocess

    code = ("from edge_app.model.bundle import ModelBundle; import numpy as np; "
            "b = ModelBundle(None, backend='tflite', precision='int8'); "
            "b.classifier(np.full((96, 96, 3), 200, np.uint8)); b.detector(np.full((480, 640, 3), 200, np.uint8))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, f"the shipped TFLite INT8 models do not load/run (exit {r.returncode}): {r.stderr[-800:]}"


def sample_truth() -> dict:
    return json.loads(SAMPLE_TRUTH.read_text())
