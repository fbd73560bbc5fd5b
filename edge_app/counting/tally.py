"""The running differential: counts, percentages and 95% confidence intervals.

Only cells whose rows are committed to the database are in the tally (the
store writer reports each commit back), so the screen never shows a cell a
power cut could lose. "other" cells (immature granulocytes, nucleated red
cells, smudges, artefacts) are counted separately and never enter the
five-part denominator.

Confidence interval: **Wilson score interval** (default), 95%, z = 1.959964,
for each class proportion k/n with n = five-part total:

    centre = (k + z²/2) / (n + z²),  half = z·sqrt(k(n−k)/n + z²/4) / (n + z²)

It stays inside 0..100% and keeps near-nominal coverage at the small counts
and rare classes (basophils ~0.5%) of a 100-cell differential, where the
normal approximation fails. ``ci_method = "clopper-pearson"`` gives the exact
(conservative) interval instead.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from edge_app.labels import CLASSES, FIVE_PART, OTHER

logger = logging.getLogger(__name__)

Z95 = 1.959963984540054


def wilson_interval(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for k successes in n trials, as fractions 0..1."""
    if n <= 0:
        return (0.0, 1.0)
    p = k / n
    denom = n + z * z
    centre = (k + z * z / 2) / denom
    half = z * math.sqrt(n * p * (1 - p) + z * z / 4) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def _binom_cdf(k: int, n: int, p: float) -> float:
    """P(X <= k) for X ~ Binomial(n, p), summed in log space (n up to ~10^4)."""
    if p <= 0:
        return 1.0
    if p >= 1:
        return 1.0 if k >= n else 0.0
    lp, lq = math.log(p), math.log1p(-p)
    total = 0.0
    for i in range(0, k + 1):
        total += math.exp(math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * lp + (n - i) * lq)
    return min(1.0, total)


def clopper_pearson_interval(k: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Exact (Clopper-Pearson) interval, by bisection on the binomial CDF."""
    if n <= 0:
        return (0.0, 1.0)

    def bisect(too_low) -> float:
        lo, hi = 0.0, 1.0
        for _ in range(60):
            mid = (lo + hi) / 2
            if too_low(mid):
                lo = mid
            else:
                hi = mid
        return (lo + hi) / 2

    # lower: P(X >= k | p) = alpha/2; upper: P(X <= k | p) = alpha/2.
    lower = 0.0 if k == 0 else bisect(lambda p: 1 - _binom_cdf(k - 1, n, p) < alpha / 2)
    upper = 1.0 if k == n else bisect(lambda p: _binom_cdf(k, n, p) > alpha / 2)
    return (lower, upper)


@dataclass
class CellEntry:
    cell_id: int
    label: str
    confidence: float | None
    flagged: bool
    source: str = "auto"


class Tally:
    """Committed cells of one session and the differential they make."""

    def __init__(self, target: int = 100, ci_method: str = "wilson", wbc_count: float | None = None):
        self.target = target
        self.ci_method = ci_method
        self.wbc_count = wbc_count
        self.cells: dict[int, CellEntry] = {}
        self.corrections = 0
        # Running counts per class: the loop asks for the total every frame, and a session that runs on
        # (a soak, a long pan) must not pay for every cell it has counted each time it asks.
        self._counts = {c: 0 for c in CLASSES}

    # -- changes (called after the store committed them) -----------------
    def add(self, cell_id: int, label: str, confidence: float | None = None, flagged: bool = False,
            source: str = "auto") -> None:
        if label not in CLASSES:
            raise ValueError(f"unknown class {label}")
        old = self.cells.get(cell_id)
        if old is not None:
            self._counts[old.label] -= 1
        self.cells[cell_id] = CellEntry(cell_id, label, confidence, flagged, source)
        self._counts[label] += 1

    def relabel(self, cell_id: int, label: str, flagged: bool = False) -> None:
        if cell_id in self.cells:
            if label not in CLASSES:
                raise ValueError(f"unknown class {label}")
            self._counts[self.cells[cell_id].label] -= 1
            self.cells[cell_id].label = label
            self.cells[cell_id].flagged = flagged
            self._counts[label] += 1

    def remove(self, cell_id: int) -> None:
        old = self.cells.pop(cell_id, None)
        if old is not None:
            self._counts[old.label] -= 1

    @classmethod
    def from_store(cls, store, session_id: str, target: int, ci_method: str = "wilson",
                   wbc_count: float | None = None) -> "Tally":
        """Rebuild from the database (resuming a session after a crash)."""
        tally = cls(target, ci_method, wbc_count)
        for row in store.cells(session_id):
            tally.add(row["id"], row["label"], row["confidence"], bool(row["flagged"]), row["source"])
        tally.corrections = len(store.corrections(session_id))
        return tally

    # -- figures ----------------------------------------------------------
    def counts(self) -> dict[str, int]:
        return dict(self._counts)

    @property
    def total(self) -> int:
        """Five-part cells only: the differential's denominator."""
        c = self.counts()
        return sum(c[k] for k in FIVE_PART)

    @property
    def other(self) -> int:
        return self.counts()[OTHER]

    @property
    def reached(self) -> bool:
        return self.total >= self.target

    def interval(self, k: int, n: int) -> tuple[float, float]:
        if self.ci_method == "clopper-pearson":
            return clopper_pearson_interval(k, n)
        return wilson_interval(k, n)

    def differential(self) -> dict[str, dict]:
        """Per five-part class: count, percent and 95% CI (percent)."""
        c = self.counts()
        n = sum(c[k] for k in FIVE_PART)
        out = {}
        for k in FIVE_PART:
            lo, hi = self.interval(c[k], n)
            out[k] = {"count": c[k], "percent": 100.0 * c[k] / n if n else 0.0,
                      "ci95": [100.0 * lo, 100.0 * hi] if n else [0.0, 100.0]}
        return out

    def absolute(self) -> dict[str, float] | None:
        """x10^9/L per class when the total WBC count was entered."""
        if not self.wbc_count:
            return None
        d = self.differential()
        return {k: round(self.wbc_count * d[k]["percent"] / 100.0, 3) for k in FIVE_PART}

    def flagged(self) -> list[CellEntry]:
        return [c for c in self.cells.values() if c.flagged]

    def payload(self, *, session_id: str, meta: dict, frames: int, fps: float, finalised_at: str) -> dict:
        """The result schema handed to ``Store.finalise_session`` (and the sync engine)."""
        d = self.differential()
        return {
            "session": session_id,
            "sample_id": meta.get("sample_id"),
            "operator": meta.get("operator"),
            "device": meta.get("device"),
            "model_version": meta.get("model_version"),
            "backend": meta.get("backend"),
            "total": self.total,
            "counts": {k: d[k]["count"] for k in FIVE_PART},
            "percent": {k: round(d[k]["percent"], 2) for k in FIVE_PART},
            "ci95": {k: [round(d[k]["ci95"][0], 2), round(d[k]["ci95"][1], 2)] for k in FIVE_PART},
            "ci_method": self.ci_method,
            "other": self.other,
            "frames": int(frames),
            "fps": round(float(fps), 2),
            "target": self.target,
            "wbc_count": self.wbc_count,
            "absolute": self.absolute(),
            "flagged": len(self.flagged()),
            "corrections": self.corrections,
            "finalised_at": finalised_at,
        }
