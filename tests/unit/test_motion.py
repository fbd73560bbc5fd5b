"""Stage motion by phase correlation: known shifts, the shipped real video's known path."""

from __future__ import annotations

import json

import cv2
import numpy as np

from edge_app.imaging.motion import StageMotion  # noqa: E402
from edge_app.imaging.quality import grey_small  # noqa: E402
from tests.kiosk_fixtures import SAMPLE_TRUTH, SAMPLE_VIDEO, requires_sample  # noqa: E402


def texture(seed=0, size=(1600, 1200)):
    rng = np.random.default_rng(seed)
    img = np.full((size[1], size[0], 3), 225, np.uint8)
    for _ in range(1500):
        c = (int(rng.integers(0, size[0])), int(rng.integers(0, size[1])))
        cv2.circle(img, c, int(rng.integers(8, 20)), (200, 150, 170), -1)
    return img


def test_shift_sign_and_size():
    big = texture()
    m = StageMotion()
    m.update(grey_small(big[100:580, 100:740]), 640)
    # The view moves 12 px right and 6 px down on the slide: content moves left/up.
    mo = m.update(grey_small(big[106:586, 112:752]), 640)
    assert mo.ok
    assert abs(mo.dx + 12) < 1.5 and abs(mo.dy + 6) < 1.5
    assert np.allclose(m.origin, [12, 6], atol=1.5)
    assert np.allclose(m.to_slide([[0, 0]]), [[12, 6]], atol=1.5)


def test_accumulated_path_stays_accurate():
    big = texture(1)
    rng = np.random.default_rng(2)
    m = StageMotion()
    x, y = 50, 50
    m.update(grey_small(big[y:y + 480, x:x + 640]), 640)
    for _ in range(150):
        x = int(np.clip(x + rng.integers(-6, 14), 0, 900))
        y = int(np.clip(y + rng.integers(-5, 6), 0, 700))
        m.update(grey_small(big[y:y + 480, x:x + 640]), 640)
    assert np.abs(m.origin - [x - 50, y - 50]).max() < 12


def test_blank_field_is_not_trusted():
    m = StageMotion()
    blank = np.full((240, 320), 200, np.uint8)
    m.update(blank, 640)
    mo = m.update(blank, 640)
    assert not mo.ok and (mo.dx, mo.dy) == (0.0, 0.0) and np.allclose(m.origin, 0)


@requires_sample
def test_real_sample_video_path_is_recovered():
    """Real BCCD fields, hand jitter, back-tracking, focus slips: origin within 25 px all along."""
    path = np.array(json.loads(SAMPLE_TRUTH.read_text())["path"])
    cap = cv2.VideoCapture(str(SAMPLE_VIDEO))
    m = StageMotion()
    worst, i = 0.0, 0
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        m.update(grey_small(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)), 640)
        worst = max(worst, float(np.abs(m.origin - (path[i] - path[0])).max()))
        i += 1
    assert i == len(path)
    assert worst < 25, worst
