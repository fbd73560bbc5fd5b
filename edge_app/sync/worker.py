"""The sync worker: deliver due outbox entries, one sender per destination.

A pass takes every due entry, claims it (attempt counted, next attempt booked
with back-off and jitter), sends it and marks it done only when the sender
returns, which senders do only after the receiver confirmed. Transient errors
leave the entry pending until the booked time; permanent ones mark it failed.
A receiver that is down is not retried for its other entries in the same pass.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import random
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, Optional

from edge_app.sync.backoff import backoff_delay
from edge_app.sync.errors import PermanentError, TransientError, redact
from edge_app.sync.outbox import Outbox, OutboxEntry, now_utc

logger = logging.getLogger(__name__)

# A sender takes an entry and returns a short receipt (e.g. "DiagnosticReport/123")
# once the receiver confirmed; it raises TransientError / PermanentError otherwise.
Sender = Callable[[OutboxEntry], str]


@dataclass
class SyncSummary:
    delivered: int = 0
    pending: int = 0
    failed: int = 0
    failed_now: int = 0
    retrying: int = 0
    held: int = 0  # due but held back by the worker's hold rule (unsigned results)
    errors: list = field(default_factory=list)

    def public(self) -> dict:
        """The one-line JSON that scripts read."""
        d = asdict(self)
        return {k: d[k] for k in ("delivered", "pending", "failed")}


class SyncWorker:
    def __init__(self, outbox: Outbox, senders: Dict[str, Sender], *, base_backoff_s: float = 5.0,
                 max_backoff_s: float = 3600.0, rng: Optional[random.Random] = None,
                 hold: Optional[Callable[[OutboxEntry], bool]] = None):
        self.outbox = outbox
        # Entries for which hold(entry) is true are left as they are (not claimed, no attempt).
        self.hold = hold
        self.senders = senders
        self.base_backoff_s = base_backoff_s
        self.max_backoff_s = max_backoff_s
        self.rng = rng or random.Random()

    def _retry_at(self, attempts: int, now: _dt.datetime, hint_s: Optional[float] = None) -> _dt.datetime:
        delay = backoff_delay(attempts, self.base_backoff_s, self.max_backoff_s, self.rng)
        if hint_s is not None:
            delay = max(delay, min(hint_s, self.max_backoff_s))
        return now + _dt.timedelta(seconds=delay)

    def run_once(self) -> SyncSummary:
        summary = SyncSummary()
        down = set()
        for entry in self.outbox.due(destinations=self.senders.keys()):
            if entry.destination in down:
                continue
            if self.hold is not None and self.hold(entry):
                summary.held += 1
                continue
            self._deliver(entry, summary, down)
        counts = self.outbox.counts()
        summary.pending, summary.failed = counts["pending"], counts["failed"]
        return summary

    def deliver_now(self, entry: OutboxEntry) -> SyncSummary:
        """Deliver one entry now (``lis send``): the same bookkeeping as a pass."""
        self.outbox.make_due(entry.id)
        summary = SyncSummary()
        self._deliver(entry, summary, set())
        counts = self.outbox.counts()
        summary.pending, summary.failed = counts["pending"], counts["failed"]
        return summary

    def _deliver(self, entry: OutboxEntry, summary: SyncSummary, down: set) -> None:
        attempt = entry.attempts + 1
        now = now_utc()
        if not self.outbox.claim(entry.id, self._retry_at(attempt, now)):
            return  # someone else finished it meanwhile
        tag = f"result {entry.result_id[:12]} -> {entry.destination} (attempt {attempt})"
        try:
            receipt = self.senders[entry.destination](entry)
        except TransientError as exc:
            msg = redact(str(exc), entry.payload)
            self.outbox.mark_retry(entry.id, msg, self._retry_at(attempt, now_utc(), exc.retry_after_s))
            summary.retrying += 1
            summary.errors.append(f"{entry.destination}: {msg}")
            logger.warning("%s: will retry: %s", tag, msg)
            if exc.receiver_down:
                down.add(entry.destination)
            return
        except PermanentError as exc:
            msg = redact(str(exc), entry.payload)
            self.outbox.mark_failed(entry.id, msg)
            summary.failed_now += 1
            summary.errors.append(f"{entry.destination}: {msg}")
            logger.error("%s: failed, kept in the outbox (requeue with 'wbc-counter sync --retry-failed'): %s",
                         tag, msg)
            return
        except Exception as exc:  # a bug must not lose the entry nor stop the other deliveries
            # Type and code location only: an exception's text may quote a sample id.
            msg = f"internal error {type(exc).__name__} at {_where(exc)} while sending (please report it)"
            self.outbox.mark_retry(entry.id, msg, self._retry_at(attempt, now_utc()))
            summary.retrying += 1
            summary.errors.append(f"{entry.destination}: {msg}")
            logger.error("%s: %s", tag, msg)
            return
        self.outbox.mark_done(entry.id)
        self.outbox.store.log_event("delivered", {"result_id": entry.result_id, "destination": entry.destination,
                                                  "receipt": receipt, "attempts": attempt})
        summary.delivered += 1
        logger.info("%s: delivered (%s)", tag, receipt)


def _where(exc: BaseException) -> str:
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return f"{os.path.basename(tb.tb_frame.f_code.co_filename)}:{tb.tb_lineno}" if tb else "?"
