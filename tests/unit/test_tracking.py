"""Tracker in slide coordinates: confirmation, back-tracking, false positives, voting."""

from __future__ import annotations

import numpy as np

from edge_app.config import TrackingConfig  # noqa: E402
from edge_app.counting.tracker import Tracker  # noqa: E402
from edge_app.detections import Detections

W, H = 640, 480


def box_at(slide_xy, origin, r=40):
    x, y = np.asarray(slide_xy) - origin
    return [x - r, y - r, x + r, y + r]


def step(tracker, cells, origin, frame):
    """Detect every cell whose centre is in view (as a detector would)."""
    boxes = [box_at(c, origin) for c in cells
             if 0 <= c[0] - origin[0] < W and 0 <= c[1] - origin[1] < H]
    dets = Detections(np.array(boxes).reshape(-1, 4), [0.9] * len(boxes))
    return tracker.update(dets, np.array(origin, float), frame, (W, H))


def test_cell_sliding_across_the_view_is_one_confirmed_track():
    t = Tracker(TrackingConfig())
    cell = (600.0, 240.0)
    ids = set()
    for f in range(30):
        ms = step(t, [cell], (f * 15.0, 0.0), f)
        ids |= {m.track.id for m in ms}
    assert len(ids) == 1 and t.tracks[0].confirmed and t.tracks[0].hits >= 3


def test_backtracking_meets_the_old_track_again():
    t = Tracker(TrackingConfig())
    cell = (300.0, 240.0)
    xs = list(range(0, 600, 20)) + list(range(600, 0, -20))  # out of view, then back
    ids = set()
    for f, x in enumerate(xs):
        ids |= {m.track.id for m in step(t, [cell], (float(x), 0.0), f)}
    assert ids == {1}


def test_neighbouring_cells_stay_separate():
    t = Tracker(TrackingConfig())
    cells = [(300.0, 240.0), (390.0, 240.0)]
    for f in range(10):
        step(t, cells, (f * 5.0, 0.0), f)
    assert sorted(tr.id for tr in t.tracks) == [1, 2] and all(tr.confirmed for tr in t.tracks)


def test_single_frame_false_positive_is_dropped():
    t = Tracker(TrackingConfig(drop_unconfirmed_after=3))
    step(t, [(320.0, 240.0)], (0.0, 0.0), 0)
    for f in range(1, 6):
        step(t, [], (0.0, 0.0), f)
    assert t.tracks == []


def test_votes_follow_crop_quality_and_stop_after_enough_clean_crops():
    t = Tracker(TrackingConfig(votes_per_track=3))
    probs = np.array([0.7, 0.1, 0.1, 0.05, 0.03, 0.02], np.float32)
    # A cell entering from the left: box cut (edge), then box inside but crop square not (whole), then clean.
    xs = [0, 0, 10, 30, 34, 38, 42, 46, 50, 54]
    qualities, voted = [], []
    for f, x in enumerate(xs):
        ms = t.update(Detections([[x, 200, x + 80, 280]], [0.9]), np.zeros(2), f, (W, H))
        qualities.append(ms[0].quality)
        if t.wants_vote(ms[0]):
            label = {0: 2, 1: 1, 2: 0}[ms[0].quality]  # edge crops say monocyte, whole lymphocyte, clean neutrophil
            ms[0].track.add_vote(np.roll(probs, label), ms[0].quality)
            voted.append(ms[0].quality)
    assert qualities[:3] == [0, 0, 1] and qualities[-1] == 2
    assert voted == [0, 0, 1, 2, 2, 2]  # no vote from a worse crop once a better one was seen
    tr = t.tracks[0]
    assert tr.clean_votes == 3 and int(np.argmax(tr.probs)) == 0  # only the clean votes count
    assert t.ready(9) == [tr]


def test_confirmed_track_that_left_is_counted_with_its_votes_and_flush_takes_the_rest():
    t = Tracker(TrackingConfig(count_after_lost_frames=4, votes_per_track=3))
    p = np.eye(6, dtype=np.float32)[2]
    for f in range(3):
        ms = step(t, [(320.0, 240.0)], (0.0, 0.0), f)
        if f == 0:
            ms[0].track.add_vote(p, ms[0].quality)
    assert t.ready(3) == []  # one vote, still in view
    for f in range(3, 8):
        step(t, [], (2000.0, 0.0), f)  # the stage moved far away
    assert [tr.id for tr in t.ready(8)] == [1]
    t.tracks[0].counted = True
    assert t.flush() == []


def test_forgotten_after_max_age():
    t = Tracker(TrackingConfig(max_age_frames=10))
    for f in range(4):
        step(t, [(320.0, 240.0)], (0.0, 0.0), f)
    t.tracks[0].counted = True
    step(t, [], (5000.0, 0.0), 20)
    assert t.tracks == []


def test_second_track_on_the_same_cell_is_merged_not_counted_twice():
    t = Tracker(TrackingConfig())  # gate 0.6 x 80 px = 48 px
    t.update(Detections([[300, 200, 380, 280]], [0.9]), np.zeros(2), 0, (W, H))
    t.update(Detections([[352, 200, 432, 280]], [0.9]), np.zeros(2), 1, (W, H))  # 52 px off: a second track
    assert len(t.tracks) == 2
    t.update(Detections([[326, 200, 406, 280]], [0.9]), np.zeros(2), 2, (W, H))  # in between: one cell after all
    assert len(t.tracks) == 1
    tr = t.tracks[0]
    assert tr.id == 1 and tr.hits == 3 and tr.confirmed


def test_two_cells_seen_together_are_never_merged():
    t = Tracker(TrackingConfig())
    for f in range(5):
        t.update(Detections([[300, 200, 380, 280], [345, 200, 425, 280]], [0.9, 0.9]), np.zeros(2), f, (W, H))
    assert len(t.tracks) == 2


def test_a_few_weak_detections_do_not_make_a_cell_but_a_strong_or_persistent_one_does():
    t = Tracker(TrackingConfig(confirm_score=0.6, confirm_hits_weak=10))
    for f in range(9):
        t.update(Detections([[300, 200, 380, 280]], [0.45]), np.zeros(2), f, (W, H))
    assert not t.tracks[0].confirmed
    t.update(Detections([[300, 200, 380, 280]], [0.45]), np.zeros(2), 9, (W, H))
    assert t.tracks[0].confirmed  # ten frames in a row: a real, faint cell
    strong = Tracker(TrackingConfig(confirm_score=0.6))
    for f, s in enumerate([0.45, 0.45, 0.7]):
        strong.update(Detections([[300, 200, 380, 280]], [s]), np.zeros(2), f, (W, H))
    assert strong.tracks[0].confirmed


def confirm(t, box, frames, score=0.9, whole_vote=True):
    ms = None
    for f in frames:
        ms = t.update(Detections([box], [score]), np.zeros(2), f, (W, H))
        if t.wants_vote(ms[0]):
            ms[0].track.add_vote(np.eye(6, dtype=np.float32)[0], ms[0].quality)
    return ms[0].track


def test_a_jumped_box_on_a_counted_cell_is_not_counted_again():
    t = Tracker(TrackingConfig())
    first = confirm(t, [200, 200, 300, 300], range(0, 5))
    assert t.ready(5) == [first]
    first.counted = True
    # 90 px away (beyond the 0.6 x 100 px gate), never seen together with the first: the same cell.
    confirm(t, [290, 200, 390, 300], range(20, 25))
    assert t.ready(25) == [] and t.flush() == []
    assert len(t.tracks) == 1 and t.tracks[0].hits == 10


def test_neighbours_seen_together_are_both_counted():
    t = Tracker(TrackingConfig())
    for f in range(5):
        ms = t.update(Detections([[200, 200, 300, 300], [290, 200, 390, 300]], [0.9, 0.9]), np.zeros(2), f,
                      (W, H))
        for m in ms:
            if t.wants_vote(m):
                m.track.add_vote(np.eye(6, dtype=np.float32)[1], m.quality)
    ready = t.ready(5)
    assert len(ready) == 2
    ready[0].counted = True
    assert t.ready(6) == [ready[1]]


def test_a_tracker_without_a_config_uses_the_shipped_hysteresis():
    """TrackingConfig holds the only defaults: a weak detection seen 4 times is not confirmed."""
    for t in (Tracker(), Tracker(TrackingConfig())):
        origin = np.zeros(2)
        for f in range(4):
            t.update(Detections([box_at((320.0, 240.0), origin)], [0.3]), origin, f, (W, H))
        assert t.tracks[0].hits == 4 and not t.tracks[0].confirmed
