"""Run the real ``wbc-counter detect --json`` on one image and read its boxes (shared by box calibration tests)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def detect_boxes(image: Path, data_dir: Path, *extra: str) -> np.ndarray:
    """(N, 4) boxes the console verb prints for ``image``; fails the test on a non-zero exit."""
    r = subprocess.run([sys.executable, "-m", "edge_app", "detect", "--json", str(image), "--data-dir", str(data_dir),
                        *extra], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    return np.array([c["box"] for c in json.loads(r.stdout)["cells"]], np.float32).reshape(-1, 4)
