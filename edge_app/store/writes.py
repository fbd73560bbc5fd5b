"""The writes a live session hands the store writer thread (``edge_app.store.writer``), one type each.

Each is a frozen dataclass: its fields are named and checked where the write is made, on the loop's
thread, not found missing as a dict key in the writer thread. ``kind`` names it in ``Done`` and the logs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Union

import numpy as np


@dataclass(frozen=True)
class CellWrite:
    """One counted cell; its crop is JPEG-encoded in the writer thread, off the hot path."""

    kind: ClassVar[str] = "cell"
    session_id: str
    label: str
    probs: dict | None = None
    confidence: float | None = None
    box: Any = None  # x1, y1, x2, y2 frame px
    slide_xy: tuple[float, float] | None = None
    frame_index: int | None = None
    track_id: int | None = None
    flagged: bool = False
    crop_rgb: np.ndarray | None = field(default=None, repr=False)


@dataclass(frozen=True)
class ReclassifyWrite:
    kind: ClassVar[str] = "reclassify"
    session_id: str
    cell_id: int
    to_label: str
    operator: str | None = None


@dataclass(frozen=True)
class ManualCellWrite:
    """A cell the technician added by hand."""

    kind: ClassVar[str] = "manual"
    session_id: str
    label: str
    operator: str | None = None
    frame_index: int | None = None


@dataclass(frozen=True)
class UndoWrite:
    """Take back the last correction of the session."""

    kind: ClassVar[str] = "undo"
    session_id: str
    operator: str | None = None


@dataclass(frozen=True)
class FramesWrite:
    """The session's frame count so far (a resumed session continues from it)."""

    kind: ClassVar[str] = "frames"
    session_id: str
    frames: int


@dataclass(frozen=True)
class CalibrationWrite:
    """Values merged into the session's calibration record (e.g. the measured pixel scale)."""

    kind: ClassVar[str] = "calibration"
    session_id: str
    values: dict


Write = Union[CellWrite, ReclassifyWrite, ManualCellWrite, UndoWrite, FramesWrite, CalibrationWrite]
