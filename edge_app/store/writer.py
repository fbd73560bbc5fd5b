"""The single writer thread: every database write of a live session, in order.

The pipeline never waits on disk: it puts a write on a queue and carries on.
This thread performs each write with its own durable commit
(``synchronous=FULL``) and only then reports it back through ``done()``; the
pipeline adds a cell to the on-screen tally when its commit is reported, so a
SIGKILL or power cut can never lose a cell the screen showed. JPEG encoding of
the crop also happens here, off the hot path.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import sqlite3
import threading
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from edge_app.store.db import Store, StoreError
from edge_app.store.writes import (
    CalibrationWrite,
    CellWrite,
    FramesWrite,
    ManualCellWrite,
    ReclassifyWrite,
    UndoWrite,
    Write,
)

logger = logging.getLogger(__name__)


@dataclass
class Done:
    kind: str  # the write's kind ('cell', 'reclassify', 'manual', 'undo', 'frames', 'calibration'), or 'error'
    tag: Any  # what the caller passed to identify the write (e.g. a Track)
    value: Any  # the write's result (cell id, undone correction row, ...)
    write: Write  # the write itself (a cell's crop dropped: it is stored)


def encode_crop(crop_rgb: np.ndarray | None, size: int, quality: int) -> bytes | None:
    if crop_rgb is None or crop_rgb.size == 0:
        return None
    small = cv2.resize(crop_rgb, (size, size), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(small, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    return buf.tobytes() if ok else None


class StoreWriter(threading.Thread):
    """Owns the Store's connection while a session runs."""

    def __init__(self, store: Store, crop_size: int = 96, jpeg_quality: int = 85):
        super().__init__(name="store-writer", daemon=True)
        self.store = store
        self.crop_size = crop_size
        self.jpeg_quality = jpeg_quality
        self._q: queue.Queue = queue.Queue()
        self._done: queue.Queue = queue.Queue()
        self.error: str | None = None
        self.pending = 0
        self._lock = threading.Lock()

    # -- producer side (pipeline thread) ----------------------------------
    def submit(self, write: Write, tag: Any = None) -> None:
        with self._lock:
            self.pending += 1
        self._q.put((write, tag))

    def done(self) -> list[Done]:
        out = []
        while True:
            try:
                out.append(self._done.get_nowait())
            except queue.Empty:
                return out

    def close(self, timeout: float = 30.0) -> None:
        """Finish every queued write, then stop. Writes still queued after ``timeout`` (a disk
        that hangs) are an error, so the session is left open rather than finalised without them."""
        self._q.put(None)
        if self.is_alive():
            self.join(timeout)
        if self.is_alive() and self.error is None:
            self.error = (f"database writes still pending after {timeout:.0f} s ({self.pending} queued): "
                          "the session is left open; check the disk, then run again to resume it")
            logger.error("%s", self.error)

    # -- writer thread ------------------------------------------------------
    def _apply(self, w: Write):
        s = self.store
        if isinstance(w, CellWrite):
            try:
                crop_jpeg = encode_crop(w.crop_rgb, self.crop_size, self.jpeg_quality)
            except cv2.error as exc:  # the cell still counts; only its gallery picture is lost
                logger.warning("cell crop not stored (%s)", str(exc).strip().splitlines()[-1][:120])
                crop_jpeg = None
            return s.add_cell(w.session_id, label=w.label, probs=w.probs, confidence=w.confidence, box=w.box,
                              slide_xy=w.slide_xy, frame_index=w.frame_index, track_id=w.track_id,
                              flagged=w.flagged, crop_jpeg=crop_jpeg)
        if isinstance(w, ReclassifyWrite):
            s.reclassify(w.session_id, w.cell_id, w.to_label, w.operator)
            return w.cell_id
        if isinstance(w, ManualCellWrite):
            return s.add_manual_cell(w.session_id, w.label, w.operator, w.frame_index)
        if isinstance(w, UndoWrite):
            row = s.undo(w.session_id, w.operator)
            return dict(row) if row is not None else None
        if isinstance(w, FramesWrite):
            s.set_frames(w.session_id, w.frames)
            return w.frames
        if isinstance(w, CalibrationWrite):
            s.update_calibration(w.session_id, w.values)
            return w.values
        raise ValueError(f"unknown write {type(w).__name__}")

    def run(self) -> None:
        while True:
            item = self._q.get()
            if item is None:
                return
            write, tag = item
            kind = getattr(write, "kind", type(write).__name__)
            try:
                value = self._apply(write)
            except (sqlite3.Error, StoreError, OSError) as exc:
                # Disk full, read-only medium, ...: stop accepting counts and say so.
                self.error = f"database write failed: {exc} (free disk space or check --data-dir)"
                logger.error("%s", self.error)
                value = None
                kind = "error"
            except Exception as exc:  # a bug must stop counting visibly, not kill this thread silently
                logger.exception("store writer: unexpected error on a '%s' write", kind)
                self.error = f"database write failed: {type(exc).__name__}: {exc} (report this to service)"
                value = None
                kind = "error"
            finally:
                with self._lock:
                    self.pending -= 1
            if isinstance(write, CellWrite) and write.crop_rgb is not None:
                write = dataclasses.replace(write, crop_rgb=None)  # stored: the caller need not hold it
            self._done.put(Done(kind, tag, value, write))
