"""``wbc-counter bench``: the same loop, headless, one JSON object as the last line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from edge_app.capture import open_source  # noqa: E402
from edge_app.commands.bench import bench  # noqa: E402
from edge_app.config import load_config  # noqa: E402
from edge_app.session.pipeline import DETAIL_STAGES, STAGES, Reservoir, StageTimes  # noqa: E402
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
    assert {"fps", "frames", "backend", "stages"} <= set(out)  # the contract's keys; more may be added
    assert out["frames"] == frames and out["fps"] > 0
    assert set(out["stages"]) == set(STAGES) == {"decode", "detect", "classify", "track", "tally", "log"}
    for v in out["stages"].values():
        assert set(v) == {"p50_ms", "p95_ms"} and 0 <= v["p50_ms"] <= v["p95_ms"]
    # What a speed figure needs to name: the CPU, the precision, the threads; each stage on its own.
    assert out["cpu"]["model"] and set(out["cpu"]["simd"]) == {"avx2", "avx512f", "avx512_vnni", "avx_vnni", "neon"}
    assert isinstance(out["threads"], int) and out["precision"] in ("int8", "fp32", "fp16", None)
    assert set(out["stage_detail"]) == set(DETAIL_STAGES) >= {"decode", "flat_field", "quality", "motion",
                                                               "detect_preprocess", "detect_network",
                                                               "detect_decode", "classify", "track", "tally", "log"}
    for v in out["stage_detail"].values():
        assert 0 <= v["p50_ms"] <= v["p95_ms"] and v["mean_ms"] >= 0
    pf = out["per_frame_ms"]
    assert abs(pf["end_to_end"] - 1000 / out["fps"]) < 0.01 * pf["end_to_end"] + 0.01
    if pf["network"] > 0:
        assert pf["ratio"] == pytest.approx(pf["end_to_end"] / pf["network"], rel=0.01)


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
@pytest.mark.slow
def test_bench_cli_prints_json_last_line(tmp_path):
    assert_model_runs()
    r = subprocess.run([sys.executable, "-m", "edge_app", "bench", "--source", str(SAMPLE_VIDEO), "--backend",
                        "tflite", "--frames", "60", "--data-dir", str(tmp_path)],
                       capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    check_bench(out, 60)
    assert out["backend"] == "tflite"


def test_stage_times_memory_is_bounded_and_the_sample_is_fair():
    times = StageTimes(size=256)
    for i in range(20000):
        times.add("detect", float(i % 100))
    r = times.res["detect"]
    assert len(r.sample()) == 256 and r.values.shape == (256,) and r.count == 20000
    assert r.mean == pytest.approx(49.5)
    # a uniform sample of 0..99: its median is near 50, not the first 256 values' (0..55)
    assert 35 <= times.detail()["detect"]["p50_ms"] <= 65


def test_reservoir_keeps_every_value_until_full():
    r = Reservoir(size=8)
    for v in (3.0, 1.0, 2.0):
        r.add(v)
    assert sorted(r.sample().tolist()) == [1.0, 2.0, 3.0] and r.total == 6.0
