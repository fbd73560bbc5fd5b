"""The technician's side of a live count: the review strip, hand-added cells, reclassification, undo.

``Corrections`` owns what the keys change and what the strip shows. It asks the
store writer for every change and applies it only when the writer's commit comes
back (``applied``), so the tally on screen never shows a change the database
does not hold. The per-frame path (``session.pipeline``) only hands it each
counted cell as it is committed (``remember``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from edge_app.counting.tally import Tally
from edge_app.labels import CLASSES
from edge_app.store.writes import ManualCellWrite, ReclassifyWrite, UndoWrite

logger = logging.getLogger(__name__)

KEYS = {str(i + 1): c for i, c in enumerate(CLASSES)}  # 1-6: the classes in the model's order
STRIP_KEEP = 40  # cells (with crops) kept for the strip: flagged and least confident first, plus the latest
EVENTS_KEPT = 4


@dataclass
class ReviewItem:
    cell_id: int
    label: str
    confidence: float
    flagged: bool
    crop: np.ndarray | None = field(default=None, repr=False)
    attention: np.ndarray | None = field(default=None, repr=False)


class Corrections:
    """Keys, strip and corrections of one session. Not thread-safe: the live loop drives it."""

    def __init__(self, writer, tally: Tally, session_id: str, operator: str | None = None):
        self.writer = writer
        self.tally = tally
        self.session_id = session_id
        self.operator = operator
        self.review: list[ReviewItem] = []
        self.events: list[str] = []
        self.last_cell_id: int | None = None
        self.selected: int | None = None  # cell id the technician is correcting
        self.reclassify_pending = False  # 'r' pressed: the next class key relabels the selected cell

    # -- what the counting side hands over ---------------------------------------
    def remember(self, item: ReviewItem) -> None:
        """A counted cell, committed: it may enter the strip (crops kept only for the strip's candidates)."""
        self.last_cell_id = item.cell_id
        self.review.append(item)
        if len(self.review) > STRIP_KEEP:
            latest = self.review[-1]
            ranked = sorted(self.review[:-1], key=lambda r: (not r.flagged, r.confidence or 1.0))[:STRIP_KEEP - 1]
            self.review = ranked + [latest]

    def event(self, text: str) -> None:
        logger.info("%s", text)
        self.events = (self.events + [text])[-EVENTS_KEPT:]

    # -- commits of the changes asked for below ---------------------------------
    def applied(self, d) -> None:
        """Apply one committed writer result of kind manual / reclassify / undo to the tally and strip."""
        if d.kind == "manual":
            self.tally.add(d.value, d.write.label, None, False, "manual")
            self.tally.corrections += 1
            self.last_cell_id = d.value
            self.event(f"added {d.write.label} by hand (cell {d.value})")
        elif d.kind == "reclassify":
            self.tally.relabel(d.value, d.write.to_label)
            self.tally.corrections += 1
            for item in self.review:
                if item.cell_id == d.value:
                    item.label, item.flagged = d.write.to_label, False
            self.event(f"cell {d.value} -> {d.write.to_label}")
        elif d.kind == "undo":
            self._undone(d.value)

    def _undone(self, row: dict | None) -> None:
        if row is None:
            self.event("nothing to undo")
            return
        self.tally.corrections += 1
        if row["action"] == "reclassify":
            self.tally.relabel(row["cell_id"], row["from_label"])
            for item in self.review:
                if item.cell_id == row["cell_id"]:
                    item.label = row["from_label"]
            self.event(f"undo: cell {row['cell_id']} back to {row['from_label']}")
        elif row["action"] == "add":
            self.tally.remove(row["cell_id"])
            self.event(f"undo: removed hand-added cell {row['cell_id']}")

    # -- what the technician asks for ---------------------------------------------
    def review_strip(self, n: int) -> list[ReviewItem]:
        items = [r for r in self.review if r.cell_id in self.tally.cells]
        return sorted(items, key=lambda r: (not r.flagged, r.confidence if r.confidence is not None else 1.0))[:n]

    def add_manual(self, label: str, frame_index: int) -> None:
        self.writer.submit(ManualCellWrite(self.session_id, label, self.operator, frame_index))

    def reclassify(self, cell_id: int | None, label: str) -> None:
        if cell_id is None or cell_id not in self.tally.cells:
            self.event("no cell selected to reclassify")
            return
        self.writer.submit(ReclassifyWrite(self.session_id, cell_id, label, self.operator))

    def undo(self) -> None:
        self.writer.submit(UndoWrite(self.session_id, self.operator))

    def select_next_flagged(self, n: int = 6) -> None:
        strip = self.review_strip(n)
        if not strip:
            self.selected = None
            return
        ids = [r.cell_id for r in strip]
        self.selected = ids[(ids.index(self.selected) + 1) % len(ids)] if self.selected in ids else ids[0]

    def handle_key(self, key: str, frame_index: int) -> bool:
        """Manual-counter keys; returns False when the technician wants to finish.

        1-5 add a neutrophil/lymphocyte/monocyte/eosinophil/basophil by hand, 6 an
        "other"; r then 1-6 reclassifies the selected cell (default: the last one
        counted); Tab/n selects the next flagged cell; u undoes the last
        correction; q or Esc finishes the session.
        """
        if key in ("q", "\x1b"):
            return False
        target = self.selected if self.selected is not None else self.last_cell_id
        if self.reclassify_pending:
            self.reclassify_pending = False
            if key in KEYS:
                self.reclassify(target, KEYS[key])
            return True
        if key in KEYS:
            self.add_manual(KEYS[key], frame_index)
        elif key == "r":
            self.reclassify_pending = True
            self.event(f"reclassify cell {target}: press 1-6" if target else "no cell to reclassify yet")
        elif key in ("\t", "n"):
            self.select_next_flagged()
        elif key == "u":
            self.undo()
        return True
