"""The outbox table: what is due, claimed, delivered, retried or failed.

Every state change is its own committed transaction, so a kill at any point
leaves the table describing what was (or may have been) sent. An entry is
claimed *before* the send (attempts+1, next attempt pushed into the future):
a crash mid-send then retries after the back-off instead of at once, and the
receiver's idempotency (FHIR ``ifNoneExist``, HL7/ASTM control ids derived
from the result id) absorbs the repeat.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
from dataclasses import dataclass
from typing import Iterable, Optional

from edge_app.store.db import Store

logger = logging.getLogger(__name__)

DESTINATIONS = ("fhir", "hl7", "astm")
# Errors are stored for the operator; keep them to a screenful.
_MAX_ERROR = 1000


def iso(t: _dt.datetime) -> str:
    """Same text form as ``Store.utcnow`` so timestamps compare as strings."""
    return t.astimezone(_dt.timezone.utc).isoformat(timespec="milliseconds")


def now_utc() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


@dataclass(frozen=True)
class OutboxEntry:
    id: int
    result_id: str
    destination: str
    attempts: int
    session_id: str
    payload: dict
    status: str = "pending"


class Outbox:
    """Reads and updates outbox rows of one ``Store``."""

    def __init__(self, store: Store):
        self.store = store
        self.conn = store.conn

    def enqueue(self, result_id: str, destination: str) -> bool:
        """Queue a result for one more destination; False if it was queued already."""
        if destination not in DESTINATIONS:
            raise ValueError(f"unknown destination {destination!r} (one of {', '.join(DESTINATIONS)})")
        now = iso(now_utc())
        cur = self.conn.execute(
            "INSERT OR IGNORE INTO outbox (result_id, destination, next_attempt_at, created_at) VALUES (?,?,?,?)",
            (result_id, destination, now, now))
        return cur.rowcount == 1

    def get(self, result_id: str, destination: str) -> Optional[OutboxEntry]:
        rows = self._select("o.result_id=? AND o.destination=?", (result_id, destination))
        return rows[0] if rows else None

    def status_of(self, entry_id: int) -> str:
        return self.conn.execute("SELECT status FROM outbox WHERE id=?", (entry_id,)).fetchone()[0]

    def due(self, now: Optional[_dt.datetime] = None, destinations: Optional[Iterable[str]] = None,
            limit: int = 500) -> list:
        """Pending entries whose next attempt time has come, oldest first."""
        where, params = "o.status='pending' AND o.next_attempt_at<=?", [iso(now or now_utc())]
        if destinations is not None:
            dests = list(destinations)
            if not dests:
                return []
            where += " AND o.destination IN (%s)" % ",".join("?" * len(dests))
            params += dests
        return self._select(where + " ORDER BY o.next_attempt_at, o.id LIMIT ?", (*params, limit))

    def _select(self, where: str, params) -> list:
        rows = self.conn.execute(
            "SELECT o.id, o.result_id, o.destination, o.attempts, o.status, r.session_id, r.payload FROM outbox o"
            " JOIN results r ON r.result_id=o.result_id WHERE " + where, params).fetchall()
        return [OutboxEntry(r["id"], r["result_id"], r["destination"], r["attempts"], r["session_id"],
                            json.loads(r["payload"]), r["status"]) for r in rows]

    def claim(self, entry_id: int, retry_at: _dt.datetime) -> bool:
        """Count an attempt and book the next one before sending; False if no longer pending."""
        cur = self.conn.execute(
            "UPDATE outbox SET attempts=attempts+1, next_attempt_at=? WHERE id=? AND status='pending'",
            (iso(retry_at), entry_id))
        return cur.rowcount == 1

    def mark_done(self, entry_id: int) -> None:
        self.conn.execute("UPDATE outbox SET status='done', done_at=?, last_error=NULL WHERE id=?",
                          (iso(now_utc()), entry_id))

    def mark_retry(self, entry_id: int, error: str, retry_at: _dt.datetime) -> None:
        self.conn.execute("UPDATE outbox SET last_error=?, next_attempt_at=? WHERE id=? AND status='pending'",
                          (error[:_MAX_ERROR], iso(retry_at), entry_id))

    def mark_failed(self, entry_id: int, error: str) -> None:
        self.conn.execute("UPDATE outbox SET status='failed', last_error=? WHERE id=?",
                          (error[:_MAX_ERROR], entry_id))

    def make_due(self, entry_id: int) -> None:
        """A pending or failed entry becomes pending and due now (an operator asked to send it)."""
        self.conn.execute("UPDATE outbox SET status='pending', next_attempt_at=? WHERE id=? AND status!='done'",
                          (iso(now_utc()), entry_id))

    def requeue_failed(self, destination: Optional[str] = None) -> int:
        """Failed entries become pending and due now (attempts restart at 0)."""
        q = ("UPDATE outbox SET status='pending', attempts=0, next_attempt_at=?, last_error="
             "'requeued after: ' || COALESCE(last_error, '') WHERE status='failed'")
        params: list = [iso(now_utc())]
        if destination:
            q += " AND destination=?"
            params.append(destination)
        return self.conn.execute(q, params).rowcount

    def counts(self, destination: Optional[str] = None) -> dict:
        q = "SELECT status, COUNT(*) FROM outbox" + (" WHERE destination=?" if destination else "") + " GROUP BY status"
        out = {"pending": 0, "done": 0, "failed": 0}
        out.update({r[0]: r[1] for r in self.conn.execute(q, (destination,) if destination else ())})
        return out

    def pending_destinations(self) -> set:
        return {r[0] for r in self.conn.execute("SELECT DISTINCT destination FROM outbox WHERE status='pending'")}

    def next_due_at(self, signed_only: bool = False) -> Optional[_dt.datetime]:
        """When the next pending entry falls due; ``signed_only`` skips results nobody signed off
        (they wait for a person, so a sync loop must not spin on them)."""
        q = "SELECT MIN(o.next_attempt_at) FROM outbox o"
        if signed_only:
            q += (" JOIN results r ON r.result_id=o.result_id WHERE o.status='pending'"
                  " AND json_extract(r.payload, '$.signed_by') IS NOT NULL")
        else:
            q += " WHERE o.status='pending'"
        row = self.conn.execute(q).fetchone()
        return _dt.datetime.fromisoformat(row[0]) if row and row[0] else None
