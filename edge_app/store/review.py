"""The review tables (migration 0004): the audit trail of cells and the result's versions.

``cell_reviews`` holds one row per change or confirmation of a counted cell by a
person, from any surface (``kiosk`` live strip, ``review`` page on this machine,
``remote`` review from another desk). ``result_versions`` holds each version of a
session's result and its sign-off. The rules kept here, inside one transaction
each, so that no surface can bypass them:

- a signed version is frozen: a change needs ``reopen`` (with a reason) first,
  which opens version + 1;
- signing stores the payload as signed, makes it the session's result and puts
  its outbox entries back in the queue when it is an amendment (version > 1).

These functions take a ``Store`` and use its connection; ``edge_app.review``
is what the surfaces call.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from dataclasses import dataclass
from typing import Iterable, Optional

from edge_app.labels import REVIEW_LABELS

logger = logging.getLogger(__name__)

SOURCES = ("kiosk", "review", "remote")


class ReviewError(RuntimeError):
    """A review action that cannot be done; the message says what to do instead."""


@dataclass(frozen=True)
class VersionState:
    """Where a session's result stands: the version being worked on or last signed."""

    version: int
    signed: bool
    signed_by: Optional[str] = None
    signed_at: Optional[str] = None
    reason: Optional[str] = None      # why this version was opened (re-open), None for version 1
    opened_by: Optional[str] = None
    opened_at: Optional[str] = None

    @property
    def editable(self) -> bool:
        return not self.signed


@dataclass(frozen=True)
class VerifiedCell:
    """A counted cell whose class a person confirmed or corrected (see ``verified_cells``)."""

    cell_id: int
    session_id: str
    crop_jpeg: Optional[bytes]
    label: str
    model_label: Optional[str]
    user: str
    at: str
    source: str


def versions(store, session_id: str) -> list[sqlite3.Row]:
    return store.conn.execute("SELECT * FROM result_versions WHERE session_id=? ORDER BY version",
                              (session_id,)).fetchall()


def state(store, session_id: str) -> VersionState:
    row = store.conn.execute("SELECT * FROM result_versions WHERE session_id=? ORDER BY version DESC LIMIT 1",
                             (session_id,)).fetchone()
    if row is None:
        return VersionState(1, False)
    return VersionState(row["version"], row["signed_at"] is not None, row["signed_by"], row["signed_at"],
                        row["reason"], row["opened_by"], row["opened_at"])


def _check_label(label: str) -> None:
    if label not in REVIEW_LABELS:
        raise ReviewError(f"unknown class '{label}' (one of {', '.join(REVIEW_LABELS)})")


def _check_source(source: str) -> None:
    if source not in SOURCES:
        raise ReviewError(f"unknown review source '{source}' (one of {', '.join(SOURCES)})")


def _check_user(user: Optional[str]) -> str:
    name = (user or "").strip()
    if not name:
        raise ReviewError("a review needs a named user (who did it goes into the audit trail)")
    return name


def audit(store, session_id: str, cell_id: int, from_label: Optional[str], to_label: str, user: str,
          source: str, reason: Optional[str] = None, version: Optional[int] = None) -> int:
    """Append one audit row (inside the caller's transaction for kiosk corrections)."""
    _check_label(to_label)
    _check_source(source)
    v = version if version is not None else state(store, session_id).version
    cur = store.conn.execute(
        "INSERT INTO cell_reviews (cell_id, session_id, version, from_label, to_label, user, at, source, reason)"
        " VALUES (?,?,?,?,?,?,?,?,?)",
        (cell_id, session_id, v, from_label, to_label, user, _now(), source, reason))
    return int(cur.lastrowid)


def _editable(store, session_id: str) -> VersionState:
    st = state(store, session_id)
    if st.signed:
        raise ReviewError(f"the result of session {session_id[:8]} was signed by {st.signed_by} at "
                          f"{st.signed_at[:19]} (version {st.version}) and is frozen: re-open it with a reason "
                          "to amend it")
    return st


def set_label(store, session_id: str, cell_id: int, to_label: str, user: str, source: str,
              reason: Optional[str] = None) -> tuple[str, str]:
    """Reclassify (or, with the same label, confirm) one cell; returns (from, to)."""
    user = _check_user(user)
    _check_label(to_label)
    _check_source(source)
    with store.transaction():
        st = _editable(store, session_id)
        row = store.conn.execute("SELECT label FROM cells WHERE id=? AND session_id=? AND deleted=0",
                                 (cell_id, session_id)).fetchone()
        if row is None:
            raise ReviewError(f"cell {cell_id} is not a counted cell of session {session_id[:8]}")
        from_label = row["label"]
        if from_label != to_label:
            store.conn.execute("UPDATE cells SET label=?, flagged=0 WHERE id=?", (to_label, cell_id))
        audit(store, session_id, cell_id, from_label, to_label, user, source, reason, st.version)
    return from_label, to_label


def confirm(store, session_id: str, cell_ids: Iterable[int], user: str, source: str) -> int:
    """Confirm cells as they are now (one audit row each, from == to); returns how many."""
    user = _check_user(user)
    _check_source(source)
    n = 0
    with store.transaction():
        st = _editable(store, session_id)
        for cell_id in cell_ids:
            row = store.conn.execute("SELECT label FROM cells WHERE id=? AND session_id=? AND deleted=0",
                                     (int(cell_id), session_id)).fetchone()
            if row is None:
                raise ReviewError(f"cell {cell_id} is not a counted cell of session {session_id[:8]}")
            audit(store, session_id, int(cell_id), row["label"], row["label"], user, source, None, st.version)
            n += 1
    return n


def reviews(store, session_id: str) -> list[sqlite3.Row]:
    return store.conn.execute("SELECT * FROM cell_reviews WHERE session_id=? ORDER BY id", (session_id,)).fetchall()


def reviewed_cell_ids(store, session_id: str, version: Optional[int] = None) -> set[int]:
    q = "SELECT DISTINCT cell_id FROM cell_reviews WHERE session_id=?"
    params: list = [session_id]
    if version is not None:
        q += " AND version=?"
        params.append(version)
    return {r[0] for r in store.conn.execute(q, params)}


def reopen(store, session_id: str, user: str, reason: str) -> int:
    """Open version + 1 of a signed result; returns the new version."""
    user = _check_user(user)
    reason = (reason or "").strip()
    if not reason:
        raise ReviewError("re-opening a signed result needs a reason (it is part of the amendment)")
    with store.transaction():
        st = state(store, session_id)
        if not st.signed:
            raise ReviewError(f"the result of session {session_id[:8]} is not signed (version {st.version} is "
                              "open for review): change it and sign it, no re-open needed")
        version = st.version + 1
        store.conn.execute("INSERT INTO result_versions (session_id, version, opened_by, opened_at, reason)"
                           " VALUES (?,?,?,?,?)", (session_id, version, user, _now(), reason))
    logger.info("session %s re-opened as version %d", session_id[:8], version)
    return version


def store_signoff(store, session_id: str, version: int, user: str, payload: dict,
                  reason: Optional[str] = None) -> None:
    """Freeze ``version`` with its payload, make it the session's result, requeue an amendment.

    The caller computed ``payload`` from the cells as they are; this checks in the same
    transaction that nobody signed or re-opened meanwhile.
    """
    user = _check_user(user)
    now = payload.get("signed_at") or _now()
    text = json.dumps(payload, sort_keys=True)
    with store.transaction():
        st = state(store, session_id)
        if st.signed or st.version != version:
            raise ReviewError(f"session {session_id[:8]} changed meanwhile (now version {st.version}, "
                              f"{'signed' if st.signed else 'open'}): reload and sign again")
        res = store.conn.execute("SELECT result_id FROM results WHERE session_id=?", (session_id,)).fetchone()
        if res is None:
            raise ReviewError(f"session {session_id[:8]} has no result yet: finish the count before signing it")
        if version == 1:
            store.conn.execute(
                "INSERT OR IGNORE INTO result_versions (session_id, version, opened_at) VALUES (?,?,?)",
                (session_id, 1, now))
        cur = store.conn.execute(
            "UPDATE result_versions SET signed_by=?, signed_at=?, sign_reason=?, payload=?"
            " WHERE session_id=? AND version=? AND signed_at IS NULL",
            (user, now, reason, text, session_id, version))
        if cur.rowcount != 1:
            raise ReviewError(f"session {session_id[:8]} version {version} could not be signed: reload")
        store.conn.execute("UPDATE results SET payload=? WHERE session_id=?", (text, session_id))
        if version > 1:
            # The amendment is a new message to every destination the result went to:
            # the same outbox rows, due again, so each still delivers (once) per version.
            store.conn.execute(
                "UPDATE outbox SET status='pending', attempts=0, next_attempt_at=?, done_at=NULL, last_error=NULL"
                " WHERE result_id=?", (now, res["result_id"]))
    logger.info("session %s version %d signed", session_id[:8], version)


def verified_cells(store, since: Optional[str] = None, signed_only: bool = False) -> list[VerifiedCell]:
    """See ``Store.verified_cells``."""
    q = ("SELECT c.id, c.session_id, c.crop, c.label, c.model_label, r.user, r.at, r.source FROM cells c"
         " JOIN cell_reviews r ON r.id = (SELECT MAX(id) FROM cell_reviews WHERE cell_id = c.id)"
         " WHERE c.deleted = 0")
    params: list = []
    if since is not None:
        q += " AND r.at > ?"
        params.append(_iso(since))
    if signed_only:
        q += (" AND EXISTS (SELECT 1 FROM result_versions v WHERE v.session_id = c.session_id"
              " AND v.signed_at IS NOT NULL)")
    rows = store.conn.execute(q + " ORDER BY r.at, c.id", params).fetchall()
    return [VerifiedCell(r["id"], r["session_id"], bytes(r["crop"]) if r["crop"] is not None else None,
                         r["label"], r["model_label"], r["user"], r["at"], r["source"]) for r in rows]


def _iso(since) -> str:
    import datetime as _dt
    if isinstance(since, _dt.datetime):
        t = since if since.tzinfo else since.replace(tzinfo=_dt.timezone.utc)
        return t.astimezone(_dt.timezone.utc).isoformat(timespec="milliseconds")
    return str(since)


def _now() -> str:
    from edge_app.store.db import utcnow
    return utcnow()
