"""Recovery under a supervisor that behaves like systemd (tests/supervisor.py):

- a SIGKILLed counter is restarted (Restart=on-failure) and resumes the same
  session with every committed cell kept;
- a counter whose loop hangs stops pinging the watchdog, is killed with
  SIGABRT and restarted, and the new instance is ready and pinging again.

Children run the real live loop (edge_app.session.runner.LiveRun) and the real
SystemdNotifier on a real notify socket; the fake model (tests/fakes.py)
stands in for the networks, except in the last test, which runs
`wbc-counter run` on the shipped model once it is in models/.
"""

from __future__ import annotations

import signal
import sqlite3
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_app.store import DB_NAME, Store  # noqa: E402
from tests.kiosk_fixtures import SAMPLE_VIDEO, build_synthetic_pan, requires_model  # noqa: E402
from tests.supervisor import Supervisor  # noqa: E402


def _open_session_cells(data: Path) -> tuple[str | None, set[int]]:
    """(open session id, its cell ids), read without disturbing the writer."""
    path = data / DB_NAME
    if not path.is_file():
        return None, set()
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        try:
            row = conn.execute("SELECT id FROM sessions WHERE status='open' ORDER BY started_at DESC").fetchone()
            if row is None:
                return None, set()
            return row[0], {r[0] for r in conn.execute("SELECT id FROM cells WHERE session_id=?", (row[0],))}
        finally:
            conn.close()
    except sqlite3.OperationalError:  # schema not created yet
        return None, set()


@pytest.fixture(scope="module")
def synthetic_pan(tmp_path_factory):
    return build_synthetic_pan(tmp_path_factory.mktemp("pan"))


@pytest.mark.slow
def test_sigkill_restart_resumes_the_session_with_nothing_lost(tmp_path, synthetic_pan):
    data = tmp_path / "data"
    uri = f"replay://{synthetic_pan['video']}?fps=30"
    sup = Supervisor([sys.executable, "-m", "tests.kiosk_child", str(data), uri], tmp_path,
                     watchdog_sec=30).start()
    try:
        sup.wait_for(lambda: sup.current.ready, what="first instance ready")
        sup.wait_for(lambda: len(_open_session_cells(data)[1]) >= 3, what="3 cells committed")
        session, before = _open_session_cells(data)
        sup.kill(signal.SIGKILL)
        sup.wait_for(lambda: len(sup.instances) == 2 and sup.current.ready, what="restarted instance ready")
        # The restarted counter goes on until the video ends, then finalises and exits 0: no further restart.
        sup.wait_for(lambda: sup.current.returncode is not None, timeout=300, what="second instance finished")
    finally:
        sup.stop()
    assert sup.instances[0].returncode == -signal.SIGKILL
    assert ("restart", 2) in sup.events and len(sup.instances) == 2
    assert sup.instances[1].returncode == 0
    with Store(data) as store:
        assert store.integrity_check() == "ok"
        row = store.session(session)
        assert row["status"] == "finalised"  # the same session was resumed and completed
        after = {r["id"] for r in store.cells(session)}
        assert before <= after, f"lost cells: {sorted(before - after)}"
        assert len(store.conn.execute("SELECT id FROM sessions").fetchall()) == 1


def _frames_folder(folder: Path) -> Path:
    folder.mkdir()
    rng = np.random.default_rng(3)
    for i in range(4):
        img = np.full((480, 640, 3), 225, np.uint8)
        for _ in range(60):
            cv2.circle(img, (int(rng.integers(0, 640)), int(rng.integers(0, 480))), 14, (160, 150, 220), -1)
        cv2.imwrite(str(folder / f"f{i}.png"), img)
    return folder


@pytest.mark.slow
def test_hung_loop_stops_pinging_and_is_restarted(tmp_path):
    data, hang = tmp_path / "data", tmp_path / "hang"
    uri = f"replay://{_frames_folder(tmp_path / 'frames')}?fps=15&loop=1"
    sup = Supervisor([sys.executable, "-m", "tests.watchdog_child", str(data), uri, str(hang)],
                     tmp_path, watchdog_sec=2.0).start()
    try:
        sup.wait_for(lambda: sup.current.ready and sup.current.pings >= 2, what="first instance pinging")
        first_session, _ = _open_session_cells(data)
        hang.touch()  # the next inference blocks for good
        sup.wait_for(lambda: ("watchdog-timeout", 1) in sup.events, what="watchdog timeout")
        sup.wait_for(lambda: len(sup.instances) == 2 and sup.current.ready and sup.current.pings >= 1,
                     what="restarted instance pinging")
    finally:
        sup.stop()
    first = sup.instances[0]
    assert first.returncode == -signal.SIGABRT and first.watchdog_timeout
    assert not hang.exists()  # the first instance took the switch and hung on it
    assert sup.instances[1].returncode is not None and len(sup.instances) == 2  # stop() does not restart
    assert _open_session_cells(data)[0] == first_session  # live source: the same session was resumed
    statuses = [m.get("STATUS") for m in first.messages if "STATUS" in m]
    assert "counting" in statuses


@requires_model
@pytest.mark.skipif(not SAMPLE_VIDEO.is_file(), reason="samples/slide_pan_train.mp4 missing")
@pytest.mark.slow
def test_wbc_counter_run_resumes_after_sigkill(tmp_path):
    data = tmp_path / "data"
    # FP32 TFLite: this test is about restart and resume; INT8 agreement is the self-test's job.
    config = tmp_path / "kiosk.toml"
    config.write_text('[inference]\nbackend = "tflite"\nprecision = "fp32"\n')
    cmd = [sys.executable, "-m", "edge_app", "run", "--source", f"replay://{SAMPLE_VIDEO}?fps=10", "--headless",
           "--config", str(config), "--data-dir", str(data)]
    sup = Supervisor(cmd, tmp_path, watchdog_sec=60).start()
    try:
        sup.wait_for(lambda: sup.current.ready, timeout=300, what="counter ready")
        sup.wait_for(lambda: len(_open_session_cells(data)[1]) >= 2, timeout=300, what="2 cells committed")
        session, before = _open_session_cells(data)
        sup.kill(signal.SIGKILL)
        sup.wait_for(lambda: len(sup.instances) == 2 and sup.current.ready, timeout=300, what="restarted")
        # The restarted counter counts on into the same session.
        sup.wait_for(lambda: len(_open_session_cells(data)[1]) > len(before) or sup.current.returncode is not None,
                     timeout=300, what="resumed session counting")
    finally:
        sup.stop()
    with Store(data) as store:
        assert store.integrity_check() == "ok"
        after = {r["id"] for r in store.cells(session)}
        assert before < after, "nothing counted after the restart, or cells lost"
        assert [r["id"] for r in store.conn.execute("SELECT id FROM sessions")] == [session]
