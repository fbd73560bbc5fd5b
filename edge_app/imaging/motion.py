"""Stage motion: how far the slide moved between two frames.

The technician moves the stage by hand, so every cell in view shifts by the
same amount (a pure translation; the objective does not rotate). Phase
correlation of two downscaled grey frames measures that shift to sub-pixel
precision in a few milliseconds, and summing the shifts gives each frame's
position on the slide: ``slide = frame + origin``. Tracking in slide
coordinates is what lets a cell that leaves the view and comes back (the
technician backs up) be recognised as the same cell.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import cv2
import numpy as np

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Motion:
    dx: float  # content shift in frame pixels (+x = content moved right)
    dy: float
    response: float  # phase-correlation peak strength, 0..1
    ok: bool  # False when the estimate was too weak to trust (shift then taken as 0)


class StageMotion:
    """Accumulates frame-to-frame shifts into the frame's slide origin."""

    def __init__(self, analysis_width: int = 320, min_response: float = 0.03, max_shift_fraction: float = 0.4):
        self.analysis_width = analysis_width
        self.min_response = min_response
        self.max_shift_fraction = max_shift_fraction
        self._prev: np.ndarray | None = None
        self._window: np.ndarray | None = None
        self._scale = 1.0
        self.origin = np.zeros(2, dtype=np.float64)  # slide coords of frame pixel (0, 0)
        self.last = Motion(0.0, 0.0, 1.0, True)

    def reset(self) -> None:
        self._prev = None
        self.origin[:] = 0.0

    def _prepare(self, grey: np.ndarray) -> np.ndarray:
        h, w = grey.shape[:2]
        if w != self.analysis_width:
            self._scale = w / self.analysis_width
            grey = cv2.resize(grey, (self.analysis_width, max(8, round(h / self._scale))),
                              interpolation=cv2.INTER_AREA)
        else:
            self._scale = 1.0
        g = grey.astype(np.float32)
        # Remove the mean so the window edges do not dominate the spectrum.
        g -= float(g.mean())
        if self._window is None or self._window.shape != g.shape:
            self._window = cv2.createHanningWindow((g.shape[1], g.shape[0]), cv2.CV_32F)
        return g

    def update(self, grey: np.ndarray, frame_width: int | None = None) -> Motion:
        """Feed the next grey frame (any size); returns the shift since the last one.

        ``frame_width`` is the width of the full frame the grey image was made
        from, so the shift is returned in full-frame pixels.
        """
        cur = self._prepare(grey)
        to_frame = (frame_width / cur.shape[1]) if frame_width else self._scale
        if self._prev is None or self._prev.shape != cur.shape:
            self._prev = cur
            self.last = Motion(0.0, 0.0, 1.0, True)
            return self.last
        (sx, sy), response = cv2.phaseCorrelate(self._prev, cur, self._window)
        self._prev = cur
        limit = self.max_shift_fraction * cur.shape[1]
        if response < self.min_response or abs(sx) > limit or abs(sy) > limit:
            # Too weak or implausibly large (a bump, an empty field): assume no move
            # rather than teleporting every track.
            self.last = Motion(0.0, 0.0, float(response), False)
            return self.last
        dx, dy = sx * to_frame, sy * to_frame
        self.origin -= (dx, dy)
        self.last = Motion(float(dx), float(dy), float(response), True)
        return self.last

    def to_slide(self, xy: np.ndarray) -> np.ndarray:
        """Frame pixel coordinates (..., 2) -> slide coordinates."""
        return np.asarray(xy, dtype=np.float64) + self.origin
