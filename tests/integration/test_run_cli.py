"""``wbc-counter run``: the scripted contract (real subprocess) and its error messages."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from edge_app.capture import open_source  # noqa: E402
from edge_app.commands.run import SUMMARY_KEYS, write_summary  # noqa: E402
from edge_app.config import load_config  # noqa: E402
from edge_app.labels import FIVE_PART  # noqa: E402
from edge_app.session.runner import LiveRun  # noqa: E402
from edge_app.store import Store  # noqa: E402
from tests.kiosk_fixtures import (  # noqa: E402
    ROOT,
    SAMPLE_VIDEO,
    FakeBundle,
    assert_model_runs,
    build_synthetic_pan,
    requires_model,
    requires_sample,
)


def cli(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "edge_app", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=timeout)


def check_summary(s: dict) -> None:
    assert set(SUMMARY_KEYS) <= set(s)
    assert set(s["counts"]) == set(FIVE_PART) == set(s["percent"]) == set(s["ci95"])
    assert s["total"] == sum(s["counts"].values())
    assert all(len(v) == 2 and 0 <= v[0] <= v[1] <= 100 for v in s["ci95"].values())
    assert isinstance(s["other"], int) and s["frames"] > 0 and s["fps"] > 0
    assert "sample_id" not in s and "operator" not in s  # no identifiers in a scripting artefact


@pytest.mark.slow
def test_summary_json_from_a_real_loop(tmp_path):
    pan = build_synthetic_pan(tmp_path)
    cfg = load_config(None)
    res = LiveRun(cfg=cfg, bundle=FakeBundle(), source=open_source(str(pan["video"])), store=Store(tmp_path / "d"),
                  target=1000).run()
    out = tmp_path / "summary.json"
    write_summary(str(out), res.payload)
    s = json.loads(out.read_text())
    check_summary(s)
    assert s["session"] == res.session_id and s["total"] + s["other"] == len(pan["cells"])


@pytest.mark.parametrize("source,message", [
    ("/no/such/video.mp4", "source not found"),
    ("ftp://host/x.mp4", "unknown source scheme"),
    ("v4l2:///dev/video99", "not found"),
])
def test_bad_sources_fail_with_one_clear_line(tmp_path, source, message):
    r = cli("run", "--source", source, "--headless", "--data-dir", str(tmp_path))
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr


def test_a_bad_wbc_count_is_refused_like_the_config_key(tmp_path):
    r = cli("run", "--source", str(SAMPLE_VIDEO), "--headless", "--wbc-count", "-7", "--data-dir", str(tmp_path))
    assert r.returncode == 2 and "tally.wbc_count" in r.stderr and "Traceback" not in r.stderr


@requires_model
@pytest.mark.slow
def test_wait_for_camera_keeps_the_kiosk_up_until_stopped(tmp_path):
    import signal
    import time

    proc = subprocess.Popen([sys.executable, "-m", "edge_app", "run", "--source", "v4l2:///dev/video99",
                             "--headless", "--wait-for-camera", "--data-dir", str(tmp_path)],
                            cwd=ROOT, stderr=subprocess.PIPE, text=True)
    time.sleep(8)  # model load, then the capture thread retries the missing camera
    assert proc.poll() is None, proc.stderr.read()  # without the flag it exits 2 at once (above)
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=60)[1]
    assert "waiting for it" in err and "Traceback" not in err
    assert proc.returncode == 1 and "left open (signal)" in err  # stopped like systemctl stop, resumable


def test_corrupt_video_fails_clearly(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video at all" * 50)
    r = cli("run", "--source", str(bad), "--headless", "--data-dir", str(tmp_path))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "cannot read video" in r.stderr  # said before any model is loaded


def test_summary_folder_must_exist(tmp_path):
    r = cli("run", "--source", str(SAMPLE_VIDEO), "--headless", "--summary-json", str(tmp_path / "no" / "s.json"),
            "--data-dir", str(tmp_path))
    assert r.returncode == 2 and "does not exist" in r.stderr


@requires_model
@requires_sample
@pytest.mark.slow
def test_run_contract_end_to_end(tmp_path):
    assert_model_runs()
    out = tmp_path / "summary.json"
    r = cli("run", "--source", str(SAMPLE_VIDEO), "--backend", "tflite", "--target", "10", "--sample-id", "S-42",
            "--headless", "--summary-json", str(out), "--data-dir", str(tmp_path / "data"))
    assert r.returncode == 0, r.stderr[-3000:]
    s = json.loads(out.read_text())
    check_summary(s)
    assert s["total"] == 10  # stopped at the target
    with Store(tmp_path / "data") as store:
        row = store.session(s["session"])
        assert row["status"] == "finalised" and row["sample_id"] == "S-42" and row["backend"] == "tflite"
    assert "S-42" not in r.stderr  # never log sample ids
