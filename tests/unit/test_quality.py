"""Focus/exposure gate on real BCCD fields (skips without the datasets) and synthetic frames."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from edge_app.config import QualityConfig  # noqa: E402
from edge_app.imaging.quality import QualityGate  # noqa: E402
from scripts.training.splits import DATASETS  # noqa: E402

BCCD = DATASETS / "bccd" / "images"


def real_fields(n=6):
    if not BCCD.is_dir():
        pytest.skip("../shared/datasets not present")
    paths = sorted(BCCD.glob("*.jpg"))[:n]
    return [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in paths]


def test_sharp_real_fields_pass_and_blurred_ones_pause():
    gate = QualityGate(QualityConfig())
    for img in real_fields():
        assert gate.assess(img).ok
    blurred = cv2.GaussianBlur(real_fields(1)[0], (0, 0), 3)
    q = QualityGate(QualityConfig()).assess(blurred)
    assert not q.ok and "focus" in q.reason


def test_focus_slip_is_caught_relative_to_recent_sharp_frames():
    fields = real_fields(6)
    gate = QualityGate(QualityConfig())
    for img in fields:
        gate.assess(img)
    slipped = cv2.GaussianBlur(fields[-1], (0, 0), 2)
    absolute_only = QualityGate(QualityConfig(relative_focus=0.0)).assess(slipped)
    q = gate.assess(slipped)
    assert absolute_only.ok  # above the fixed floor...
    assert not q.ok and "slipped" in q.reason  # ...but a clear drop against the recent frames


def test_long_pause_on_the_relative_rule_resets_the_reference():
    fields = real_fields(6)
    gate = QualityGate(QualityConfig(relative_reset_frames=5))
    for img in fields:
        gate.assess(img)
    soft = cv2.GaussianBlur(fields[-1], (0, 0), 2)
    results = [gate.assess(soft).ok for _ in range(7)]
    assert results[:5] == [False] * 5 and results[-1]


@pytest.mark.parametrize("level,word", [(10, "dark"), (254, "overexposed")])
def test_exposure(level, word):
    img = np.full((480, 640, 3), level, np.uint8)
    img[::8] = np.clip(level + 1, 0, 255)  # a little texture
    q = QualityGate(QualityConfig()).assess(img)
    assert not q.ok and word in q.reason


def test_clipped_histogram_is_badly_exposed():
    rng = np.random.default_rng(0)
    img = rng.integers(60, 200, (480, 640, 3)).astype(np.uint8)
    img[:, :300] = 255  # half the field burnt white
    q = QualityGate(QualityConfig()).assess(img)
    assert not q.ok and "exposed" in q.reason


def test_a_gate_without_a_config_uses_the_configured_exposure_limits():
    """QualityConfig holds the only defaults: a frame too dark for it is too dark for QualityGate()."""
    dark = np.full((240, 320, 3), int(QualityConfig().min_brightness) - 5, np.uint8)
    assert "too dark" in QualityGate().assess(dark).reason
