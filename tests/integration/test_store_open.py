"""Opening the SQLite store: a damaged file and a first boot with several processes at once."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

from edge_app.store import Store, StoreError  # noqa: E402
from edge_app.store.db import DB_NAME, _migrations  # noqa: E402


def test_a_file_that_is_not_a_database_is_a_clear_error_and_is_kept(tmp_path):
    junk = os.urandom(8192)
    (tmp_path / DB_NAME).write_bytes(junk)
    for readonly in (False, True):
        with pytest.raises(StoreError, match="do not delete"):
            Store(tmp_path, readonly=readonly)
    assert (tmp_path / DB_NAME).read_bytes() == junk  # never replaced or truncated


def test_the_cli_says_what_to_do_with_a_damaged_database(tmp_path):
    (tmp_path / DB_NAME).write_bytes(os.urandom(8192))
    r = subprocess.run([sys.executable, "-m", "edge_app", "report", "abc", "--data-dir", str(tmp_path)],
                       capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode != 0 and "do not delete" in r.stderr and "Traceback" not in r.stderr


def _open(data_dir: str, start, out) -> None:
    start.wait()
    try:
        with Store(data_dir) as s:
            out.put(("ok", s.schema_version()))
    except Exception as exc:  # reported to the parent, which asserts on it
        out.put((type(exc).__name__, str(exc)))


@pytest.mark.slow
def test_processes_opening_a_fresh_database_together_all_succeed(tmp_path):
    ctx = multiprocessing.get_context("fork")
    latest = max(n for n, _, _ in _migrations())
    for trial in range(20):
        d = tmp_path / f"t{trial}"
        start, out = ctx.Event(), ctx.Queue()
        procs = [ctx.Process(target=_open, args=(str(d), start, out)) for _ in range(4)]
        for p in procs:
            p.start()
        start.set()
        got = [out.get(timeout=60) for _ in procs]
        for p in procs:
            p.join(timeout=60)
        assert got == [("ok", latest)] * 4, got


def test_a_session_is_found_by_a_unique_prefix_and_only_by_one(tmp_path):
    with Store(tmp_path) as store:
        a, b = store.open_session(target=10), store.open_session(target=10)
        assert store.session(a[:8])["id"] == a and store.session(b)["id"] == b
        with pytest.raises(StoreError, match="no session"):
            store.session("_" * 8)  # not a wildcard
        with pytest.raises(StoreError, match="no session"):
            store.session("%")
        with pytest.raises(StoreError, match="no session"):
            store.session("")
        twin = a[:6] + ("0" if a[6] != "0" else "1") + b[7:]  # shares a's first six characters
        store.conn.execute("UPDATE sessions SET id=? WHERE id=?", (twin, b))
        with pytest.raises(StoreError, match="start of 2 sessions"):
            store.session(a[:6])
        assert store.session(twin[:7])["id"] == twin
