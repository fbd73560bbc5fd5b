"""The detector side of a site profile (``edge_app.site.detection``): scoring, the threshold choice and its
held-back guard, and the one-run-per-frame shortcut it rests on, checked on the shipped detector."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edge_app.imaging import preprocess
from edge_app.model.bundle import ModelBundle
from edge_app.site import detection

ROOT = Path(__file__).resolve().parents[2]


def _frame(name, truth, dets):
    """A labelled frame (pixels only feed the held-back hash) and its (boxes, scores) at LOW."""
    rgb = np.full((8, 8, 3), hash(name) % 255, np.uint8)
    boxes = np.array([b for b, _ in dets], np.float32).reshape(-1, 4)
    scores = np.array([s for _, s in dets], np.float32)
    return detection.LabelledFrame(name, rgb, np.array(truth, np.float32).reshape(-1, 4)), (boxes, scores)


CELL = [10, 10, 50, 50]
ELSEWHERE = [100, 100, 140, 140]


def test_score_counts_found_false_and_missed_boxes():
    f, d = _frame("a", [CELL, [60, 60, 90, 90]], [(CELL, 0.8), (ELSEWHERE, 0.5), ([61, 61, 90, 90], 0.2)])
    at_03 = detection.score([d], [f], 0.3)
    assert (at_03["found"], at_03["predicted"], at_03["cells"]) == (1, 2, 2)
    at_01 = detection.score([d], [f], 0.1)
    assert (at_01["found"], at_01["predicted"]) == (2, 3) and at_01["recall"] == 1.0
    assert at_01["f1"] == round(2 * 2 / (2 + 3), 4)


def test_the_best_f1_threshold_is_chosen_and_ties_go_to_the_shipped_one():
    # every cell scores 0.22-0.28 on this camera, and nothing else is found: anything up to 0.20 finds all
    frames, dets = zip(*[_frame(f"f{i}", [CELL], [(CELL, 0.22 + 0.01 * (i % 7))]) for i in range(8)])
    assert detection.choose(list(dets), list(frames), 0.35) == 0.2
    # the cells score high and a false box scores 0.3: every threshold in 0.35-0.70 is as good; 0.35 wins
    frames, dets = zip(*[_frame(f"g{i}", [CELL], [(CELL, 0.9), (ELSEWHERE, 0.3)]) for i in range(8)])
    assert detection.choose(list(dets), list(frames), 0.35) == 0.35


def test_a_fitted_threshold_worse_on_held_back_frames_is_not_kept():
    items = [_frame(f"h{i}", [CELL], [(CELL, 0.25)]) for i in range(12)]
    hold = detection.held_back_frames([f for f, _ in items])
    # the held-back frames' cells score 0.9 beside a false box at 0.25: a low threshold costs them precision
    items = [(f, ((np.array([CELL, ELSEWHERE], np.float32), np.array([0.9, 0.25], np.float32)) if hold[i] else d))
             for i, (f, d) in enumerate(items)]
    frames, dets = [f for f, _ in items], [d for _, d in items]
    rec = detection.threshold_record(dets, frames, 0.35)
    assert rec["chosen"] <= 0.25 and not rec["fitted"] and rec["value"] == 0.35
    assert "shipped threshold is kept" in rec["why"]
    assert rec["held_back"]["after"]["f1"] < rec["held_back"]["before"]["f1"]


def test_too_few_frames_keep_the_shipped_threshold():
    items = [_frame(f"k{i}", [CELL], [(CELL, 0.25)]) for i in range(detection.MIN_FRAMES - 1)]
    rec = detection.threshold_record([d for _, d in items], [f for f, _ in items], 0.35)
    assert rec["value"] == 0.35 and not rec["fitted"] and "labelled frames" in rec["why"]


def test_one_low_run_gives_each_thresholds_boxes():
    """Greedy NMS keeps higher scores first, so the boxes of a run at LOW that score >= t are exactly
    those of a run at t: the grid is scored from one detector run per frame."""
    bundle = ModelBundle(backend="tflite", precision="fp32")
    try:
        frames = sorted((ROOT / "calibration" / "frames").iterdir())[::12]
        checked = 0
        for p in frames:
            rgb = preprocess.read_rgb(str(p))
            low = bundle.detector(rgb, threshold=detection.LOW)
            for t in (0.1, 0.35, 0.6):
                at_t = [(d.box.tolist(), d.score) for d in bundle.detector(rgb, threshold=t)]
                assert [(d.box.tolist(), d.score) for d in low if d.score >= t] == at_t
                checked += len(at_t)
        assert checked > 10
    finally:
        bundle.close()


def test_a_profile_with_a_broken_detector_record_is_refused():
    from edge_app.site.profile import _detector_problem

    assert _detector_problem(None) is None
    assert _detector_problem({"pixel_scale": {"factor": 1.0}, "threshold": {"value": 0.4, "fitted": True}}) is None
    assert "pixel scale" in _detector_problem({"pixel_scale": {"factor": float("nan")}})
    assert "pixel scale" in _detector_problem({"pixel_scale": {"factor": 0}})
    assert "threshold" in _detector_problem({"threshold": {"value": 1.5}})
    assert "not an object" in _detector_problem([1, 2])
