"""``wbc-counter bench``: the same loop, headless, one JSON object as the last line."""

from __future__ import annotations

import json
import subprocess
import sys

from edge_app.capture import open_source  # noqa: E402
from edge_app.commands.bench import bench  # noqa: E402
from edge_app.config import load_config  # noqa: E402
from edge_app.session.pipeline import STAGES  # noqa: E402
from tests.kiosk_fixtures import (  # noqa: E402
    ROOT,
    SAMPLE_VIDEO,
    FakeBundle,
    assert_model_runs,
    build_synthetic_pan,
    requires_model,
    requires_sample,
)


def check_bench(out: dict, frames: int) -> None:
    assert set(out) == {"fps", "frames", "backend", "stages"}
    assert out["frames"] == frames and out["fps"] > 0
    assert set(out["stages"]) == set(STAGES) == {"decode", "detect", "classify", "track", "tally", "log"}
    for v in out["stages"].values():
        assert set(v) == {"p50_ms", "p95_ms"} and 0 <= v["p50_ms"] <= v["p95_ms"]


def test_bench_runs_the_live_loop_and_cleans_up(tmp_path):
    pan = build_synthetic_pan(tmp_path)
    out = bench(load_config(None), FakeBundle(), open_source(str(pan["video"])), tmp_path / "data", 120)
    check_bench(out, 120)
    assert out["backend"] == "fake"
    assert out["stages"]["detect"]["p95_ms"] > 0
    assert not (tmp_path / "data" / "bench").exists()  # the throw-away database is gone


def test_bench_rejects_bad_frames_and_source(tmp_path):
    r = subprocess.run([sys.executable, "-m", "edge_app", "bench", "--source", "/nope.mp4", "--data-dir",
                        str(tmp_path)], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "nope.mp4" in r.stderr


@requires_model
@requires_sample
def test_bench_cli_prints_json_last_line(tmp_path):
    assert_model_runs()
    r = subprocess.run([sys.executable, "-m", "edge_app", "bench", "--source", str(SAMPLE_VIDEO), "--backend",
                        "tflite", "--frames", "60", "--data-dir", str(tmp_path)],
                       capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    check_bench(out, 60)
    assert out["backend"] == "tflite"
