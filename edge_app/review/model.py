"""The review of one count: its cells grouped by class, and the differential they make now.

Groups are the six classes in ``edge_app.labels.CLASSES`` order, then "not a
leukocyte" (``x``); within a group the least confident cells come first, as those
are the ones a reviewer must look at. The differential is a ``Tally`` rebuilt from
the cells as they are now (``x`` cells are not in it), so the page and the signed
result use the same arithmetic as the kiosk screen.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional

from edge_app.counting.tally import Tally
from edge_app.labels import CLASSES, FIVE_PART, NOT_LEUKOCYTE, REVIEW_LABELS
from edge_app.store import review as store_review
from edge_app.store.db import Store

logger = logging.getLogger(__name__)

GROUP_TITLES = {**{c: c for c in CLASSES}, NOT_LEUKOCYTE: "not a leukocyte"}
# Keys that put a cell into a class: 1-6 in the order of CLASSES, x for "not a leukocyte".
KEYS = {**{str(i + 1): c for i, c in enumerate(CLASSES)}, "x": NOT_LEUKOCYTE}


@dataclass(frozen=True)
class CellView:
    cell_id: int
    label: str
    model_label: Optional[str]
    confidence: Optional[float]
    flagged: bool
    has_crop: bool
    reviewed: bool          # a person confirmed or changed it in the version now open (or signed)


class ReviewModel:
    """A snapshot of one session for review; build a new one after each change."""

    def __init__(self, store: Store, session_id: str):
        self.store = store
        self.row = dict(store.session(session_id))
        self.session_id = self.row["id"]
        self.result = store.result(self.session_id)
        self.state = store_review.state(store, self.session_id)
        reviewed = store_review.reviewed_cell_ids(store, self.session_id, self.state.version)
        self.cells = [CellView(int(c["id"]), c["label"], c["model_label"], c["confidence"], bool(c["flagged"]),
                               c["crop"] is not None, int(c["id"]) in reviewed)
                      for c in store.cells(self.session_id, include_rejected=True)]

    # -- gallery ------------------------------------------------------------
    def groups(self) -> list[tuple[str, list[CellView]]]:
        by: dict[str, list[CellView]] = {g: [] for g in REVIEW_LABELS}
        for c in self.cells:
            by.setdefault(c.label, []).append(c)
        for items in by.values():
            items.sort(key=lambda c: (c.confidence if c.confidence is not None else 2.0, c.cell_id))
        return [(g, by[g]) for g in REVIEW_LABELS]

    def group(self, label: str) -> list[CellView]:
        return dict(self.groups())[label]

    def first_group(self) -> str:
        """The first group with a cell not yet reviewed, else the first non-empty one."""
        groups = self.groups()
        for g, items in groups:
            if any(not c.reviewed for c in items):
                return g
        return next((g for g, items in groups if items), CLASSES[0])

    def next_group(self, label: str) -> Optional[str]:
        order = [g for g, items in self.groups() if items or g == label]
        i = order.index(label) if label in order else -1
        return order[i + 1] if i + 1 < len(order) else None

    @property
    def unreviewed(self) -> int:
        return sum(not c.reviewed for c in self.cells)

    # -- figures --------------------------------------------------------------
    def tally(self) -> Tally:
        return tally_for(self.store, self.session_id, self.result or {}, self.row)

    def summary(self) -> dict:
        """The live differential and counts, as the page's JSON and table show them."""
        t = self.tally()
        d = t.differential()
        counts = {g: 0 for g in REVIEW_LABELS}
        for c in self.cells:
            counts[c.label] = counts.get(c.label, 0) + 1
        return {
            "total": t.total, "ci_method": t.ci_method, "counts": counts,
            "differential": {k: {"count": d[k]["count"], "percent": round(d[k]["percent"], 1),
                                 "ci95": [round(d[k]["ci95"][0], 1), round(d[k]["ci95"][1], 1)]}
                             for k in FIVE_PART},
            "reviewed": len(self.cells) - self.unreviewed, "cells": len(self.cells),
            "version": self.state.version, "signed": self.state.signed, "signed_by": self.state.signed_by,
            "signed_at": self.state.signed_at,
        }


def tally_for(store: Store, session_id: str, result: dict, row: dict) -> Tally:
    """The session's cells now, tallied with the result's own CI method, target and WBC count."""
    return Tally.from_store(store, session_id, int(result.get("target") or row["target"]),
                            result.get("ci_method") or "wilson", result.get("wbc_count", row.get("wbc_count")))
