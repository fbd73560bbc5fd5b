"""The local log: SQLite in WAL mode with numbered schema migrations.

One connection per process writes (the pipeline hands its writes to a single
writer thread, see ``edge_app.store.writer``); readers (report, sync, status)
open their own connections. ``synchronous=FULL`` makes every commit survive a
power cut, not only a process kill: a counted cell is on disk once
``add_cell`` returns.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import sqlite3
import time
import uuid
from importlib import resources
from pathlib import Path

from edge_app import fsutil, paths
from edge_app.labels import NOT_LEUKOCYTE
from edge_app.store import review

logger = logging.getLogger(__name__)

DB_NAME = paths.DB_NAME
# Who the audit trail names for a kiosk correction made without an operator name.
KIOSK_USER = "kiosk"


# What a result is (results.state, migration 0003): 'final' results are sent; 'incomplete' ones only
# once a person signed them knowing so; 'no-result' never.
RESULT_STATES = ("final", "incomplete", "no-result")
NO_CELL_REASON = "no leukocyte was counted"


class StoreError(RuntimeError):
    """The database cannot be used; the message says what to do."""


# SQLite's own companions of the database file: a link at any of them would be followed by SQLite.
_COMPANIONS = ("", "-wal", "-shm", "-journal")
SQLITE_FULL = 13
SQLITE_IOERR = 10


def damaged_message(path: str | Path, exc: BaseException | str) -> str:
    """What to tell a user whose database file is damaged: it is kept, and how to recover it."""
    p = Path(path)
    return (f"the database {p} is damaged ({exc}). It has been left as it is: do not delete it, results not "
            f"yet sent may be inside. To recover: stop the kiosk and sync, then in {p.parent} run "
            f"sqlite3 {p.name} \".recover\" | sqlite3 recovered.sqlite3 ; keep the damaged file "
            f"(mv {p.name} {p.name}.damaged) and move recovered.sqlite3 into place as {p.name}; "
            "call service if it fails")


def is_disk_full(exc: BaseException, folder: str | Path | None = None) -> bool:
    """SQLite's 'database or disk is full' (the OSError side is ``fsutil.is_disk_full``); with ``folder``,
    also an I/O error while the disk there is full (SQLite cannot create the -shm/-wal file then)."""
    if not isinstance(exc, sqlite3.Error):
        return False
    code = getattr(exc, "sqlite_errorcode", None)
    if code == SQLITE_FULL or "disk is full" in str(exc):
        return True
    io_error = (code is not None and code & 0xFF == SQLITE_IOERR) or "disk I/O error" in str(exc)
    return bool(folder is not None and io_error and fsutil.nearly_full(folder))


def is_damaged(exc: BaseException) -> bool:
    """A file that is not a database, or one with broken pages (not a lock, not a full disk)."""
    if not isinstance(exc, sqlite3.DatabaseError) or is_disk_full(exc):
        return False
    text = str(exc)
    # "no such table": the file says it is migrated (user_version) but its tables are gone
    return not isinstance(exc, sqlite3.OperationalError) or any(
        s in text for s in ("malformed", "not a database", "no such table"))


def _refuse_links(path: Path) -> None:
    for suffix in _COMPANIONS:
        p = path.with_name(path.name + suffix)
        if p.is_symlink():
            raise StoreError(f"{p} is a symbolic link: the database must be a plain file in the data dir "
                             f"(move the real file into {path.parent} in place of the link)")


def _create_private(path: Path) -> None:
    """Create a new database file 0640 (O_EXCL, no link followed), so SQLite never creates it wider."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o640)
    except FileExistsError:
        return
    os.close(fd)


def utcnow() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


def _migrations() -> list[tuple[int, str, str]]:
    """(number, name, sql) for every ``NNNN_name.sql`` file, in order."""
    out = []
    for entry in resources.files("edge_app.store.migrations").iterdir():
        name = entry.name
        if name.endswith(".sql") and name[:4].isdigit():
            out.append((int(name[:4]), name, entry.read_text(encoding="utf-8")))
    return sorted(out)


class Store:
    """Sessions, cells, corrections, results and outbox in one SQLite file."""

    def __init__(self, data_dir: str | Path, readonly: bool = False):
        self.data_dir = Path(data_dir)
        self.path = self.data_dir / DB_NAME
        _refuse_links(self.path)
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o750)
            if not readonly:
                _create_private(self.path)
            uri = f"file:{self.path}?mode=ro" if readonly else f"file:{self.path}"
            self.conn = sqlite3.connect(uri, uri=True, timeout=30, check_same_thread=False,
                                        isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open the database at {self.path}: {exc} "
                             "(check --data-dir exists and is writable)") from exc
        self.conn.row_factory = sqlite3.Row
        try:
            self.conn.execute("PRAGMA busy_timeout=30000")
            if not readonly:
                self._journal_wal()
                self.conn.execute("PRAGMA synchronous=FULL")
                self.conn.execute("PRAGMA foreign_keys=ON")
                self.migrate()
            else:
                self.schema_version()  # a file that is not a database fails here, not in the caller
        except sqlite3.Error as exc:
            self.conn.close()
            if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
                raise StoreError(f"the database at {self.path} stayed locked by another wbc-counter process "
                                 "for 30 s: try again in a minute") from exc
            if is_disk_full(exc, self.data_dir):
                raise StoreError(f"{fsutil.disk_full_message(self.data_dir)} ({exc})") from exc
            if is_damaged(exc):
                raise StoreError(damaged_message(self.path, exc)) from exc
            raise StoreError(f"the database at {self.path} cannot be read ({exc}): call service and do not "
                             "delete it, results not yet sent may be inside") from exc

    def _journal_wal(self, patience_s: float = 30.0) -> None:
        """Switch to WAL. SQLite answers BUSY to this at once, without the busy handler, while
        another process holds the fresh file (first boot: selftest, sync and the counter
        together), so it is retried here for as long as busy_timeout would wait."""
        deadline = time.monotonic() + patience_s
        while True:
            try:
                self.conn.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    # -- schema ---------------------------------------------------------
    def schema_version(self) -> int:
        return self.conn.execute("PRAGMA user_version").fetchone()[0]

    def migrate(self) -> None:
        for number, name, sql in _migrations():
            if number <= self.schema_version():
                continue
            try:
                self.conn.execute("BEGIN IMMEDIATE")
                # Read again under the write lock: another process opening the same fresh
                # database (selftest, sync and the counter at first boot) may have applied it.
                if number <= self.schema_version():
                    self.conn.execute("COMMIT")
                    continue
                logger.info("applying schema migration %s", name)
                for statement in _split_sql(sql):
                    self.conn.execute(statement)
                self.conn.execute(f"PRAGMA user_version={number}")
                self.conn.execute("COMMIT")
            except sqlite3.Error as exc:
                if self.conn.in_transaction:
                    self.conn.execute("ROLLBACK")
                raise StoreError(f"schema migration {name} failed: {exc}") from exc

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def integrity_check(self) -> str:
        return self.conn.execute("PRAGMA integrity_check").fetchone()[0]

    # -- sessions -------------------------------------------------------
    def open_session(self, *, target: int, sample_id: str | None = None, operator: str | None = None,
                     device: str | None = None, model_version: str | None = None,
                     backend: str | None = None, wbc_count: float | None = None,
                     calibration: dict | None = None) -> str:
        sid = uuid.uuid4().hex
        self.conn.execute(
            "INSERT INTO sessions (id, sample_id, operator, device, model_version, backend, target,"
            " wbc_count, calibration, started_at) VALUES (?,?,?,?,?,?,?,?,?,?)",
            (sid, sample_id, operator, device, model_version, backend, target, wbc_count,
             None if calibration is None else json.dumps(calibration, sort_keys=True), utcnow()))
        return sid

    def open_sessions(self) -> list[sqlite3.Row]:
        return self.conn.execute("SELECT * FROM sessions WHERE status='open' ORDER BY started_at").fetchall()

    def session(self, session_id: str) -> sqlite3.Row:
        row = self.conn.execute("SELECT * FROM sessions WHERE id=?", (session_id,)).fetchone()
        if row is None:
            # Accept a unique prefix, as technicians read ids off the screen.
            # substr, not LIKE: '_' and '%' typed by hand must not act as wildcards.
            rows = self.conn.execute("SELECT * FROM sessions WHERE substr(id, 1, ?) = ?",
                                     (len(session_id), session_id)).fetchall() if session_id else []
            if len(rows) == 1:
                return rows[0]
            if len(rows) > 1:
                raise StoreError(f"'{session_id}' is the start of {len(rows)} sessions: give more of the id "
                                 "(list them with 'wbc-counter status')")
            raise StoreError(f"no session '{session_id}' in {self.path} (list them with 'wbc-counter status')")
        return row

    def set_frames(self, session_id: str, frames: int) -> None:
        self.conn.execute("UPDATE sessions SET frames=? WHERE id=?", (frames, session_id))

    def update_calibration(self, session_id: str, values: dict) -> None:
        """Merge ``values`` into the session's calibration JSON (a setting measured after the session opened,
        such as the camera's pixel scale)."""
        row = self.conn.execute("SELECT calibration FROM sessions WHERE id=?", (session_id,)).fetchone()
        if row is None:
            raise StoreError(f"no session '{session_id}' in {self.path}")
        calibration = json.loads(row[0]) if row[0] else {}
        calibration.update(values)
        self.conn.execute("UPDATE sessions SET calibration=? WHERE id=?",
                          (json.dumps(calibration, sort_keys=True), session_id))

    def abort_session(self, session_id: str) -> None:
        self.conn.execute("UPDATE sessions SET status='aborted', ended_at=? WHERE id=? AND status='open'",
                          (utcnow(), session_id))

    # -- cells ----------------------------------------------------------
    def add_cell(self, session_id: str, *, label: str, probs: dict | None = None, confidence: float | None = None,
                 box=None, slide_xy=None, frame_index: int | None = None, track_id: int | None = None,
                 flagged: bool = False, source: str = "auto", crop_jpeg: bytes | None = None) -> int:
        """Insert one counted cell and commit it durably; returns its id."""
        sx, sy = (slide_xy if slide_xy is not None else (None, None))
        cur = self.conn.execute(
            "INSERT INTO cells (session_id, track_id, label, model_label, probs, confidence, box, slide_x,"
            " slide_y, frame_index, flagged, source, crop, created_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (session_id, track_id, label, label if source == "auto" else None,
             json.dumps(probs) if probs is not None else None, confidence,
             json.dumps([round(float(v), 1) for v in box]) if box is not None else None,
             None if sx is None else float(sx), None if sy is None else float(sy),
             frame_index, int(flagged), source, crop_jpeg, utcnow()))
        return int(cur.lastrowid)

    def cells(self, session_id: str, include_deleted: bool = False,
              include_rejected: bool = False) -> list[sqlite3.Row]:
        """The session's counted cells; ``include_rejected`` adds those a reviewer marked
        "not a leukocyte" (label ``x``), which are never part of a count."""
        q = "SELECT * FROM cells WHERE session_id=?" + ("" if include_deleted else " AND deleted=0")
        q += "" if include_rejected else f" AND label!='{NOT_LEUKOCYTE}'"
        return self.conn.execute(q + " ORDER BY id", (session_id,)).fetchall()

    def label_counts(self, session_id: str) -> dict[str, int]:
        rows = self.conn.execute(
            "SELECT label, COUNT(*) FROM cells WHERE session_id=? AND deleted=0 AND label!=? GROUP BY label",
            (session_id, NOT_LEUKOCYTE))
        return {r[0]: r[1] for r in rows}

    # -- corrections ----------------------------------------------------
    def reclassify(self, session_id: str, cell_id: int, to_label: str, operator: str | None) -> int:
        with self.transaction():
            row = self.conn.execute("SELECT label FROM cells WHERE id=? AND session_id=?",
                                    (cell_id, session_id)).fetchone()
            if row is None:
                raise StoreError(f"cell {cell_id} is not part of session {session_id}")
            self.conn.execute("UPDATE cells SET label=?, flagged=0 WHERE id=?", (to_label, cell_id))
            cur = self.conn.execute(
                "INSERT INTO corrections (session_id, cell_id, action, from_label, to_label, operator, at)"
                " VALUES (?,?,?,?,?,?,?)", (session_id, cell_id, "reclassify", row[0], to_label, operator, utcnow()))
            review.audit(self, session_id, cell_id, row[0], to_label, operator or KIOSK_USER, "kiosk")
            return int(cur.lastrowid)

    def add_manual_cell(self, session_id: str, label: str, operator: str | None, frame_index: int | None = None) -> int:
        with self.transaction():
            cell_id = self.add_cell(session_id, label=label, source="manual", frame_index=frame_index)
            self.conn.execute(
                "INSERT INTO corrections (session_id, cell_id, action, from_label, to_label, operator, at)"
                " VALUES (?,?,?,?,?,?,?)", (session_id, cell_id, "add", None, label, operator, utcnow()))
            review.audit(self, session_id, cell_id, None, label, operator or KIOSK_USER, "kiosk")
            return cell_id

    def undo(self, session_id: str, operator: str | None) -> sqlite3.Row | None:
        """Revert the latest not-yet-undone correction; record the undo itself."""
        with self.transaction():
            last = self.conn.execute(
                "SELECT * FROM corrections WHERE session_id=? AND action!='undo' AND undone=0"
                " ORDER BY id DESC LIMIT 1", (session_id,)).fetchone()
            if last is None:
                return None
            if last["action"] == "reclassify":
                self.conn.execute("UPDATE cells SET label=? WHERE id=?", (last["from_label"], last["cell_id"]))
                review.audit(self, session_id, last["cell_id"], last["to_label"], last["from_label"],
                             operator or KIOSK_USER, "kiosk", "undo")
            elif last["action"] == "add":
                self.conn.execute("UPDATE cells SET deleted=1 WHERE id=?", (last["cell_id"],))
            self.conn.execute("UPDATE corrections SET undone=1 WHERE id=?", (last["id"],))
            self.conn.execute(
                "INSERT INTO corrections (session_id, cell_id, action, from_label, to_label, operator, at)"
                " VALUES (?,?,?,?,?,?,?)",
                (session_id, last["cell_id"], "undo", last["to_label"], last["from_label"], operator, utcnow()))
            return last

    def corrections(self, session_id: str) -> list[sqlite3.Row]:
        return self.conn.execute("SELECT * FROM corrections WHERE session_id=? ORDER BY id", (session_id,)).fetchall()

    # -- results and outbox ---------------------------------------------
    def finalise_session(self, session_id: str, payload: dict, destinations: tuple[str, ...] = ("fhir",),
                         frames: int | None = None, state: str = "final", reason: str | None = None) -> str:
        """Close a session: result + outbox entries + status in ONE transaction.

        ``state`` says what the result is (``RESULT_STATES``); a payload with no five-part cell is
        'no-result' whatever is asked, and is never queued. An 'incomplete' one is queued like a
        final one, but no sender delivers it until a person signs it knowing it is incomplete
        (``sync.payload.refuse_unsendable``; the sign-off hold keeps it untouched till then). The
        session must still be open and have no result: a second counter, or a second finalise,
        raises StoreError and changes nothing (a result row is never overwritten).
        Returns the stable result id used for idempotent delivery.
        """
        if state not in RESULT_STATES:
            raise ValueError(f"unknown result state {state!r} (one of {', '.join(RESULT_STATES)})")
        if state == "final" and not int(payload.get("total") or 0):
            state, reason = "no-result", reason or NO_CELL_REASON
        result_id = uuid.uuid5(uuid.NAMESPACE_URL, f"wbc-counter:result:{session_id}").hex
        now = utcnow()
        with self.transaction():
            cur = self.conn.execute(
                "UPDATE sessions SET status='finalised', ended_at=?, frames=COALESCE(?, frames) WHERE id=?"
                " AND status='open'", (now, frames, session_id))
            if cur.rowcount != 1:
                row = self.conn.execute("SELECT status FROM sessions WHERE id=?", (session_id,)).fetchone()
                raise StoreError(f"session {session_id} is no longer open (status "
                                 f"'{row[0] if row else 'missing'}'): another counter finished or aborted it; "
                                 "its result was not changed (see 'wbc-counter report')")
            try:
                self.conn.execute(
                    "INSERT INTO results (session_id, result_id, payload, created_at, state, reason)"
                    " VALUES (?,?,?,?,?,?)",
                    (session_id, result_id, json.dumps(payload, sort_keys=True), now, state, reason))
            except sqlite3.IntegrityError as exc:  # rolled back with the status change above
                raise StoreError(f"session {session_id} already has a result; it was not changed") from exc
            for dest in destinations if state != "no-result" else ():
                self.conn.execute(
                    "INSERT OR IGNORE INTO outbox (result_id, destination, next_attempt_at, created_at)"
                    " VALUES (?,?,?,?)", (result_id, dest, now, now))
        return result_id

    def result_state(self, session_id: str) -> tuple[str, str | None] | None:
        """(state, reason) of a session's result, or None when it has none."""
        row = self.conn.execute("SELECT state, reason FROM results WHERE session_id=?", (session_id,)).fetchone()
        return (row[0], row[1]) if row else None

    def result(self, session_id: str) -> dict | None:
        row = self.conn.execute("SELECT payload FROM results WHERE session_id=?", (session_id,)).fetchone()
        return json.loads(row[0]) if row else None

    # -- review -----------------------------------------------------------
    def verified_cells(self, since=None, signed_only: bool = False) -> list:
        """Counted cells whose class a person confirmed or corrected, for learning from them.

        One ``edge_app.store.review.VerifiedCell`` per cell (not per review), oldest
        verdict first, with:
        ``cell_id``, ``session_id``;
        ``crop_jpeg``: the cell's stored crop, JPEG bytes as the kiosk saved them
        (``[store] crop_size``), or None for a cell added by hand (no crop);
        ``label``: the final class, one of ``edge_app.labels.REVIEW_LABELS`` (the six
        classes, or ``"x"`` for "not a leukocyte": a negative, never counted);
        ``model_label``: what the classifier said (None for a hand-added cell);
        ``user``, ``at`` (ISO 8601 UTC, ms), ``source`` (``kiosk``, ``review``, ``remote``):
        who gave the latest verdict on the cell, when, and where.

        ``since`` (ISO text as stored, or a datetime) keeps cells whose latest verdict
        is later than it: pass the ``at`` of the last cell already read to fetch only
        what is new. ``signed_only`` keeps cells of results that were signed at least once.
        Cells a hand-added-cell undo removed are never returned.
        """
        return review.verified_cells(self, since=since, signed_only=signed_only)

    # -- events ---------------------------------------------------------
    def log_event(self, kind: str, detail: dict) -> None:
        self.conn.execute("INSERT INTO events (at, kind, detail) VALUES (?,?,?)",
                          (utcnow(), kind, json.dumps(detail, sort_keys=True)))

    def last_event(self, kind: str) -> sqlite3.Row | None:
        return self.conn.execute("SELECT * FROM events WHERE kind=? ORDER BY id DESC LIMIT 1", (kind,)).fetchone()

    # -- helpers --------------------------------------------------------
    def transaction(self):
        return _Transaction(self.conn)


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT/ROLLBACK; nested use joins the outer one."""

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn
        self.owner = False

    def __enter__(self):
        if not self.conn.in_transaction:
            self.conn.execute("BEGIN IMMEDIATE")
            self.owner = True
        return self.conn

    def __exit__(self, exc_type, exc, tb):
        if self.owner:
            self.conn.execute("ROLLBACK" if exc_type else "COMMIT")
        return False


def _split_sql(sql: str) -> list[str]:
    """Statements of a migration file (no triggers with inner ';' here)."""
    body = "\n".join(line.split("--", 1)[0] for line in sql.splitlines())
    return [s.strip() for s in body.split(";") if s.strip()]
