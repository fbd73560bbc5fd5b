"""Flat field, quality, stage motion and the detector's input on the capture thread (``[inference]
overlap_analysis``): the same count, frame for frame, as doing them in the loop; a failure
there ends the run with its reason."""

from __future__ import annotations

import time

import pytest

from edge_app.capture import CaptureState, CaptureThread, open_source
from edge_app.config import load_config
from edge_app.session.pipeline import AnalysedFrame
from edge_app.session.runner import LiveRun
from edge_app.store import Store
from tests.kiosk_fixtures import FakeBundle, build_synthetic_pan


@pytest.fixture(scope="module")
def pan(tmp_path_factory):
    return build_synthetic_pan(tmp_path_factory.mktemp("pan"))


def _run(tmp_path, video, overlap: bool):
    cfg = load_config(None, {"inference.overlap_analysis": overlap})
    store = Store(tmp_path)
    run = LiveRun(cfg=cfg, bundle=FakeBundle(), source=open_source(str(video)), store=store, target=1000)
    assert (run.capture.prepare is not None) is overlap
    res = run.run()
    cells = [(r["label"], r["frame_index"]) for r in store.cells(res.session_id)]
    store.close()
    return res, cells


def test_overlapped_analysis_counts_exactly_as_inline(tmp_path, pan):
    inline, cells_inline = _run(tmp_path / "a", pan["video"], overlap=False)
    overlap, cells_overlap = _run(tmp_path / "b", pan["video"], overlap=True)
    assert inline.reason == overlap.reason == "source-ended"
    assert overlap.payload["counts"] == inline.payload["counts"] and overlap.payload["other"] == inline.payload["other"]
    assert sorted(cells_overlap) == sorted(cells_inline)
    assert overlap.pipeline.paused_frames == inline.pipeline.paused_frames > 0
    # the analysis was timed where it ran, for every frame
    assert overlap.pipeline.times.res["motion"].count == overlap.payload["frames"]


def test_a_failing_analysis_fails_the_capture_with_its_reason(pan):
    def broken(frame):
        raise RuntimeError("bad frame")

    cap = CaptureThread(open_source(str(pan["video"])), prepare=broken)
    cap.start()
    cap.join(30)
    assert cap.state == CaptureState.FAILED and "could not be analysed: bad frame" in cap.error


def test_the_capture_thread_hands_out_analysed_frames_in_order(tmp_path, pan):
    cfg = load_config(None)
    store = Store(tmp_path)
    run = LiveRun(cfg=cfg, bundle=FakeBundle(), source=open_source(str(pan["video"])), store=store, target=1000,
                  max_frames=12)
    run.capture.start()
    got = []
    deadline = time.monotonic() + 60
    while len(got) < 12 and not run.capture.finished and time.monotonic() < deadline:
        f = run.capture.get(timeout=1)  # None on a state change (streaming): ask again
        if f is not None:
            got.append(f)
    run.capture.stop()
    store.close()
    assert all(isinstance(f, AnalysedFrame) for f in got) and [f.index for f in got] == list(range(12))
    # a frame worth counting on arrives with its detector input made, one that fails the gate without
    assert all((f.detector_input is not None) == f.quality.ok for f in got)
    assert any(f.detector_input is not None for f in got)
