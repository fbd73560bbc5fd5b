"""Is this frame good enough to count on? Focus and exposure, per frame.

Focus: variance of the Laplacian of a downscaled grey frame (high = sharp
edges). A technician's focus slip shows as a drop against the recent sharp
frames, so besides a fixed floor (``min_focus``) a frame is out of focus when
it falls below ``relative_focus`` x the median of the last sharp frames; the
relative rule copes with cameras whose absolute sharpness differs.
Exposure: mean grey level within [min_brightness, max_brightness] and at most
``max_clipped`` of the pixels burnt white or crushed black (histogram ends).
Counting pauses on a bad frame; the display says why.
"""

from __future__ import annotations

import collections
import logging
from dataclasses import dataclass

import cv2
import numpy as np

from edge_app.config import QualityConfig

logger = logging.getLogger(__name__)

# Width the grey frame is reduced to before measuring (cheap and
# independent of the camera resolution).
ANALYSIS_WIDTH = 320


@dataclass(frozen=True)
class FrameQuality:
    focus: float
    brightness: float
    clipped: float
    ok: bool
    reason: str  # '' when ok, else a short text for the screen


def grey_small(frame_rgb: np.ndarray, width: int = ANALYSIS_WIDTH) -> np.ndarray:
    h, w = frame_rgb.shape[:2]
    if w > width:
        frame_rgb = cv2.resize(frame_rgb, (width, max(1, round(h * width / w))), interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(frame_rgb, cv2.COLOR_RGB2GRAY)


def focus_measure(grey: np.ndarray) -> float:
    """Variance of the Laplacian (sharpness)."""
    return float(cv2.Laplacian(grey, cv2.CV_32F).var())


class QualityGate:
    """Stateful focus/exposure check; ``assess(frame)`` per frame."""

    def __init__(self, cfg: QualityConfig | None = None, history: int = 30):
        # The defaults live in QualityConfig only (one place to change them).
        cfg = cfg or QualityConfig()
        self.min_focus = cfg.min_focus
        self.relative_focus = cfg.relative_focus
        self.min_brightness = cfg.min_brightness
        self.max_brightness = cfg.max_brightness
        self.max_clipped = cfg.max_clipped
        self.reset_frames = cfg.relative_reset_frames
        self._sharp = collections.deque(maxlen=history)
        self._paused_run = 0

    def assess(self, frame_rgb: np.ndarray, grey: np.ndarray | None = None) -> FrameQuality:
        g = grey_small(frame_rgb) if grey is None else grey
        focus = focus_measure(g)
        brightness = float(g.mean())
        hist = np.bincount(g.ravel(), minlength=256)
        clipped = float(hist[:6].sum() + hist[250:].sum()) / max(1, g.size)
        reason = ""
        if brightness < self.min_brightness:
            reason = "too dark: open the iris or raise the lamp"
        elif brightness > self.max_brightness:
            reason = "overexposed: lower the lamp"
        elif clipped > self.max_clipped:
            reason = "badly exposed: too many white/black pixels"
        elif focus < self.min_focus:
            reason = "out of focus: adjust the fine focus"
        elif len(self._sharp) >= 5 and focus < self.relative_focus * float(np.median(self._sharp)):
            reason = "focus slipped: adjust the fine focus"
        if not reason:
            self._sharp.append(focus)
            self._paused_run = 0
        else:
            self._paused_run += 1
            if self._paused_run >= self.reset_frames and self._sharp:
                # A long pause on the relative rule alone means a softer area, not a slip.
                logger.info("focus reference reset after %d paused frames", self._paused_run)
                self._sharp.clear()
        return FrameQuality(focus, brightness, clipped, not reason, reason)
