"""The whole live loop on real video files: synthetic slides with the fake model, the shipped
real-image sample with the real TFLite INT8 model (once models/ exists)."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from edge_app.capture import open_source  # noqa: E402
from edge_app.config import load_config  # noqa: E402
from edge_app.labels import FIVE_PART  # noqa: E402
from edge_app.session.runner import LiveRun  # noqa: E402
from edge_app.store import Store  # noqa: E402
from tests.kiosk_fixtures import (  # noqa: E402
    ROOT,
    SAMPLE_VIDEO,
    FakeBundle,
    NoisyDetector,
    assert_model_runs,
    build_synthetic_pan,
    requires_model,
    requires_sample,
    sample_truth,
)


@pytest.fixture
def fake_bundle():
    return FakeBundle()


@pytest.fixture(scope="module")
def synthetic_pan(tmp_path_factory):
    return build_synthetic_pan(tmp_path_factory.mktemp("pan"))


def live_run(data_dir, bundle, uri, cfg=None, **kw):
    cfg = cfg or load_config(None)
    store = Store(data_dir)
    run = LiveRun(cfg=cfg, bundle=bundle, source=open_source(str(uri), cfg.capture), store=store, **kw)
    return run.run(), store


def test_synthetic_pan_counts_every_cell_once(tmp_path, fake_bundle, synthetic_pan):
    path = synthetic_pan["path"]
    assert (np.diff(path[:, 0]) < 0).any() and (np.diff(path[:, 0]) > 0).any()  # the pan backs up
    res, store = live_run(tmp_path, fake_bundle, synthetic_pan["video"], target=1000)
    truth = Counter(c["class"] for c in synthetic_pan["cells"])
    assert res.reason == "source-ended"
    assert res.payload["counts"] == {k: truth.get(k, 0) for k in FIVE_PART}
    assert res.payload["other"] == truth["other"]
    assert res.payload["frames"] == len(path)
    assert res.pipeline.paused_frames > 0  # the focus slips paused counting
    rows = store.cells(res.session_id)
    assert len(rows) == len(synthetic_pan["cells"])
    for r in rows:
        assert r["crop"] and json.loads(r["box"]) and r["frame_index"] is not None
        assert abs(sum(json.loads(r["probs"]).values()) - 1) < 1e-2
    assert store.session(res.session_id)["status"] == "finalised"
    assert store.result(res.session_id)["total"] == res.payload["total"]


@pytest.mark.parametrize("seed", [3, 5])
def test_noisy_detector_still_counts_within_5_percent(tmp_path, synthetic_pan, seed):
    """Box jitter (8 px), 30% missed detections, stray one-frame boxes: what a real detector does."""
    bundle = FakeBundle()
    bundle.detector = NoisyDetector(bundle.detector, seed=seed, jitter_px=8, miss=0.3, stray=0.1)
    res, _ = live_run(tmp_path, bundle, synthetic_pan["video"], target=1000)
    counted = res.payload["total"] + res.payload["other"]
    assert abs(counted - len(synthetic_pan["cells"])) <= 0.05 * len(synthetic_pan["cells"])


def test_without_stage_motion_the_count_goes_wrong(tmp_path, fake_bundle, synthetic_pan):
    """The slide-coordinate tracking is what keeps the count right: freeze the stage motion and
    cells met again after back-tracking, or different cells at the same screen spot, are confused."""
    cfg = load_config(None)
    store = Store(tmp_path)
    run = LiveRun(cfg=cfg, bundle=fake_bundle, source=open_source(str(synthetic_pan["video"])), store=store,
                  target=1000)
    run.pipeline.motion.update = lambda grey, w=None: None  # origin stays at 0
    res = run.run()
    assert res.payload["total"] + res.payload["other"] != len(synthetic_pan["cells"])


def test_target_stops_at_exactly_the_target(tmp_path, fake_bundle, synthetic_pan):
    res, store = live_run(tmp_path, fake_bundle, synthetic_pan["video"], target=8)
    assert res.reason == "target" and res.payload["total"] == 8
    assert res.payload["frames"] < len(synthetic_pan["path"])
    assert sum(v for k, v in store.label_counts(res.session_id).items() if k != "other") == 8


def test_live_source_resumes_an_open_session_and_a_file_aborts_it(tmp_path, fake_bundle, synthetic_pan):
    store = Store(tmp_path)
    old = store.open_session(target=1000, sample_id="S-1")
    store.add_cell(old, label="basophil", confidence=0.9)
    store.close()
    res, store = live_run(tmp_path, fake_bundle, f"replay://{synthetic_pan['video']}?fps=240", target=1000,
                          sample_id="S-1")
    assert res.session_id == old  # resumed
    assert res.payload["counts"]["basophil"] >= 1 and store.session(old)["status"] == "finalised"

    again = store.open_session(target=1000, sample_id="S-2")
    store.close()
    res2, store = live_run(tmp_path, fake_bundle, synthetic_pan["video"], target=1000, sample_id="S-2")
    assert res2.session_id != again and store.session(again)["status"] == "aborted"


@pytest.fixture(scope="module")
def real_sample_run(tmp_path_factory):
    """The shipped CLI, real TFLite INT8 model, on the shipped real-image pan (run once)."""
    import subprocess
    import sys as _sys

    from scripts.eval_pan import score

    assert_model_runs()
    tmp = tmp_path_factory.mktemp("real")
    out = tmp / "summary.json"
    r = subprocess.run([_sys.executable, "-m", "edge_app", "run", "--source", str(SAMPLE_VIDEO), "--backend", "tflite",
                        "--headless", "--target", "1000", "--summary-json", str(out), "--data-dir", str(tmp)],
                       capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    return score(sample_truth(), json.loads(out.read_text()))


@requires_model
@requires_sample
@pytest.mark.slow
def test_real_model_counts_the_sample_within_5_percent(real_sample_run):
    """Acceptance: unique leukocyte count (five-part total) within 5% of the truth."""
    assert real_sample_run["count_ok"], real_sample_run


@requires_model
@requires_sample
@pytest.mark.slow
def test_real_model_percentages_inside_the_95_ci(real_sample_run):
    """Acceptance: every true five-part percentage inside the run's 95% Wilson CI."""
    assert real_sample_run["percent_ok"], real_sample_run


def test_unreadable_video_ends_cleanly_without_a_dangling_session(tmp_path, fake_bundle):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00garbage" * 200)
    res, store = live_run(tmp_path / "d", fake_bundle, bad)
    assert res.reason == "error" and "cannot read video" in res.error and res.payload is None
    assert store.session(res.session_id)["status"] == "aborted" and store.open_sessions() == []
