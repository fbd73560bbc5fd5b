"""A failed self-test keeps the counter from reporting results (issue 5).

Real `wbc-counter run` subprocesses on the shipped sample with the real model:
with a failed self-test on record the session is still counted and logged,
but nothing enters the outbox and the reason is in the log; on a machine where
no self-test ever ran (a laptop) results are queued as usual.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from edge_app import selftest
from edge_app.store import Store

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "samples" / "slide_pan_train.mp4"
pytestmark = pytest.mark.skipif(not (ROOT / "models" / "manifest.json").is_file() or not SAMPLE.is_file(),
                                reason="needs the shipped model and sample")


def _run(data_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge_app", "run", "--source", str(SAMPLE), "--backend", "tflite",
                           "--headless", "--target", "3", "--data-dir", str(data_dir)],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)


def _outbox_and_results(data_dir: Path) -> tuple[int, int]:
    conn = sqlite3.connect(data_dir / "wbc.sqlite3")
    try:
        return (conn.execute("SELECT COUNT(*) FROM outbox").fetchone()[0],
                conn.execute("SELECT COUNT(*) FROM results").fetchone()[0])
    finally:
        conn.close()


@pytest.mark.slow
def test_failed_selftest_blocks_reporting(tmp_path):
    with Store(tmp_path) as store:
        selftest.record_started(store)  # a self-test that never finished counts as failed
    r = _run(tmp_path)
    assert r.returncode == 0, r.stderr
    assert "results will not be reported" in r.stderr
    outbox, results = _outbox_and_results(tmp_path)
    assert results == 1 and outbox == 0
    # ... and no later send can deliver it: the refusal travels with the result
    with Store(tmp_path) as store:
        (sid,) = store.conn.execute("SELECT session_id FROM results").fetchone()
        assert "self-test" in store.result(sid)["not_reported"].lower()
    lis = subprocess.run([sys.executable, "-m", "edge_app", "lis", "send", sid, "--hl7", "127.0.0.1:9",
                          "--data-dir", str(tmp_path)], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert lis.returncode == 1 and "never reported" in lis.stderr and "Traceback" not in lis.stderr
    assert _outbox_and_results(tmp_path) == (0, 1)


@pytest.mark.slow
def test_no_selftest_on_record_reports_as_usual(tmp_path):
    r = _run(tmp_path)
    assert r.returncode == 0, r.stderr
    assert "results will not be reported" not in r.stderr
    assert _outbox_and_results(tmp_path) == (1, 1)
