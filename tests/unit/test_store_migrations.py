"""Numbered schema migrations: a fresh database and one written by an older release both end at the
latest schema, and the per-device calibration a session was counted with is stored beside it."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

from edge_app.capture import open_source  # noqa: E402
from edge_app.config import load_config  # noqa: E402
from edge_app.session.runner import LiveRun  # noqa: E402
from edge_app.store import Store  # noqa: E402
from edge_app.store.db import DB_NAME, _migrations, _split_sql  # noqa: E402
from tests.kiosk_fixtures import FakeBundle, build_synthetic_pan  # noqa: E402


def _columns(path: Path, table: str) -> set[str]:
    with sqlite3.connect(path) as conn:
        return {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}


def test_a_fresh_database_is_at_the_latest_schema(tmp_path):
    with Store(tmp_path) as s:
        assert s.schema_version() == max(n for n, _, _ in _migrations()) >= 2
    assert "calibration" in _columns(tmp_path / DB_NAME, "sessions")


def test_a_database_from_release_0001_migrates_and_keeps_its_rows(tmp_path):
    number, _, sql = _migrations()[0]
    assert number == 1
    conn = sqlite3.connect(tmp_path / DB_NAME)
    for statement in _split_sql(sql):
        conn.execute(statement)
    conn.execute("PRAGMA user_version=1")
    conn.execute("INSERT INTO sessions (id, target, status, started_at) VALUES ('old', 100, 'finalised', 'x')")
    conn.commit()
    conn.close()
    assert "calibration" not in _columns(tmp_path / DB_NAME, "sessions")
    with Store(tmp_path) as s:
        assert s.schema_version() >= 2
        row = s.session("old")
        assert row["status"] == "finalised" and row["target"] == 100
        assert row["calibration"] is None  # counted before the column existed: unknown, not invented


@pytest.mark.slow
def test_a_run_records_the_box_scale_and_flat_field_it_counted_with(tmp_path):
    pan = build_synthetic_pan(tmp_path)
    bundle = FakeBundle()
    bundle.detector.box_scale = 0.9
    bundle.detector.refine = True
    res = LiveRun(cfg=load_config(None), bundle=bundle, source=open_source(str(pan["video"])),
                  store=Store(tmp_path / "d"), target=1000).run()
    with Store(tmp_path / "d") as s:
        cal = json.loads(s.session(res.session_id)["calibration"])
    # the calibration keys this test was written for, with their values (later keys may sit beside them)
    want = {"box_scale": 0.9, "box_refine": True, "flat_field": None, "flat_field_sha256": None}
    assert {k: cal.get(k, "missing") for k in want} == want
