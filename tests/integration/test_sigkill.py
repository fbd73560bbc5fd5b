"""SIGKILL a real counting process mid-session: no cell the screen showed is lost.

The child logs "counted cell N" at the moment a cell enters the displayed
tally. The parent kills it with SIGKILL after a few cells, re-opens the
database, and checks that every such cell is there, that the file is intact,
and that the next run resumes and finalises the same session.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edge_app.store import Store  # noqa: E402
from tests.kiosk_fixtures import (  # noqa: E402
    ROOT,
    SAMPLE_VIDEO,
    assert_model_runs,
    build_synthetic_pan,
    requires_model,
    requires_sample,
)

COUNTED = re.compile(r"counted cell (\d+)")


@pytest.fixture(scope="module")
def synthetic_pan(tmp_path_factory):
    return build_synthetic_pan(tmp_path_factory.mktemp("pan"))


def run_and_kill(cmd, after_cells: int, timeout: float = 120.0) -> list[int]:
    """Start ``cmd``, SIGKILL it once ``after_cells`` cells were shown; the ids it showed."""
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, cwd=ROOT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    shown: list[int] = []
    deadline = time.monotonic() + timeout
    try:
        for line in proc.stderr:
            m = COUNTED.search(line)
            if m:
                shown.append(int(m.group(1)))
                if len(shown) >= after_cells:
                    proc.send_signal(signal.SIGKILL)
                    break
            if time.monotonic() > deadline:
                break
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, f"child ended on its own ({proc.returncode}) before the kill"
    return shown


def check_nothing_lost(data_dir: Path, shown: list[int]) -> str:
    with Store(data_dir) as store:
        assert store.integrity_check() == "ok"
        open_rows = store.open_sessions()
        assert len(open_rows) == 1, "the killed session must still be open (resumable)"
        sid = open_rows[0]["id"]
        ids = {r["id"] for r in store.cells(sid)}
    missing = set(shown) - ids
    assert not missing, f"cells shown on screen but lost by SIGKILL: {sorted(missing)}"
    return sid


@pytest.mark.slow
def test_sigkill_mid_session_loses_no_counted_cell(tmp_path, synthetic_pan):
    data = tmp_path / "data"
    uri = f"replay://{synthetic_pan['video']}?fps=30"
    child = [sys.executable, "-m", "tests.kiosk_child", str(data), uri]
    shown = run_and_kill(child, after_cells=6)
    assert len(shown) == 6
    sid = check_nothing_lost(data, shown)

    # Restart: the camera-like source resumes the same session and finalises it.
    out = subprocess.run(child, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"RESULT {sid} source-ended" in out.stdout
    with Store(data) as store:
        assert store.session(sid)["status"] == "finalised"
        ids = {r["id"] for r in store.cells(sid)}
        result = store.result(sid)
    assert set(shown) <= ids
    assert result["total"] + result["other"] == len(ids)


@requires_model
@requires_sample
def test_sigkill_real_cli_with_real_model(tmp_path):
    assert_model_runs()
    data = tmp_path / "data"
    cmd = [sys.executable, "-m", "edge_app", "run", "--source", f"replay://{SAMPLE_VIDEO}?fps=30", "--headless",
           "--backend", "tflite", "--data-dir", str(data), "-v"]
    shown = run_and_kill(cmd, after_cells=4, timeout=240)
    check_nothing_lost(data, shown)
