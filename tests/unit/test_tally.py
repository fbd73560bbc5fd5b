"""Tally: Wilson / Clopper-Pearson intervals, "other" outside the denominator, target, payload."""

from __future__ import annotations

import pytest

from edge_app.counting.tally import Tally, clopper_pearson_interval, wilson_interval  # noqa: E402
from edge_app.labels import FIVE_PART  # noqa: E402


def test_wilson_matches_reference_values():
    # Reference: Wilson score interval, z = 1.96 (Newcombe 1998, Table I style values).
    lo, hi = wilson_interval(10, 100)
    assert lo == pytest.approx(0.0552, abs=1e-4) and hi == pytest.approx(0.1744, abs=1e-4)
    lo, hi = wilson_interval(0, 100)
    assert lo == 0.0 and hi == pytest.approx(0.0370, abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_clopper_pearson_matches_reference_values():
    lo, hi = clopper_pearson_interval(10, 100)
    assert lo == pytest.approx(0.0490, abs=1e-4) and hi == pytest.approx(0.1762, abs=1e-4)
    assert clopper_pearson_interval(0, 100)[1] == pytest.approx(0.0362, abs=1e-4)
    assert clopper_pearson_interval(100, 100)[0] == pytest.approx(0.9638, abs=1e-4)


def filled(counts, other=0, **kw):
    t = Tally(**kw)
    i = 0
    for label, n in counts.items():
        for _ in range(n):
            i += 1
            t.add(i, label, 0.9)
    for _ in range(other):
        i += 1
        t.add(i, "other", 0.9)
    return t


def test_other_is_never_in_the_denominator():
    t = filled({"neutrophil": 60, "lymphocyte": 30, "monocyte": 6, "eosinophil": 3, "basophil": 1}, other=25)
    d = t.differential()
    assert t.total == 100 and t.other == 25
    assert d["neutrophil"]["percent"] == pytest.approx(60.0)
    assert sum(d[k]["percent"] for k in FIVE_PART) == pytest.approx(100.0)
    assert d["neutrophil"]["ci95"] == pytest.approx([100 * v for v in wilson_interval(60, 100)])


def test_target_absolute_counts_and_payload_schema():
    t = filled({"neutrophil": 150, "lymphocyte": 50}, target=200, wbc_count=8.0)
    assert t.reached
    assert t.absolute() == {"neutrophil": 6.0, "lymphocyte": 2.0, "monocyte": 0.0, "eosinophil": 0.0,
                            "basophil": 0.0}
    p = t.payload(session_id="s1", meta={"sample_id": "A1", "operator": "op", "device": "d", "model_version": "m",
                                         "backend": "tflite"}, frames=10, fps=31.234, finalised_at="now")
    assert set(p) == {"session", "sample_id", "operator", "device", "model_version", "backend", "total", "counts",
                      "percent", "ci95", "ci_method", "other", "frames", "fps", "target", "wbc_count", "absolute",
                      "flagged", "corrections", "finalised_at"}
    assert p["ci_method"] == "wilson" and p["total"] == 200 and set(p["counts"]) == set(FIVE_PART)
    assert all(0 <= lo <= p["percent"][k] <= hi <= 100 for k, (lo, hi) in p["ci95"].items())


def test_not_reached_and_no_absolute_without_wbc_count():
    t = filled({"neutrophil": 99}, other=5, target=100)
    assert not t.reached and t.absolute() is None


def test_relabel_remove_and_flagged():
    t = Tally()
    t.add(1, "neutrophil", 0.4, flagged=True)
    t.add(2, "monocyte", 0.95)
    assert [c.cell_id for c in t.flagged()] == [1]
    t.relabel(1, "lymphocyte")
    assert t.counts()["lymphocyte"] == 1 and t.flagged() == []
    t.remove(2)
    assert t.total == 1
    with pytest.raises(ValueError):
        t.add(3, "platelet")


def test_running_counts_match_the_cells_through_every_change():
    """The counts are kept as cells change (the loop reads the total every frame); after any mix of adds,
    re-adds, relabels, removals and refused changes they equal a recount of the cells."""
    import random

    from edge_app.labels import CLASSES

    rng = random.Random(3)
    t = Tally()
    for _ in range(2000):
        op, cid, label = rng.random(), rng.randrange(60), rng.choice(CLASSES)
        if op < 0.5:
            t.add(cid, label)
        elif op < 0.75:
            t.relabel(cid, label)
        elif op < 0.95:
            t.remove(cid)
        else:  # a label outside the six classes changes nothing (relabel: of a cell that is there)
            if op >= 0.975 and cid not in t.cells:
                t.add(cid, label)
            with pytest.raises(ValueError):
                (t.add if op < 0.975 else t.relabel)(cid, "platelet")
        recount = {c: sum(e.label == c for e in t.cells.values()) for c in CLASSES}
        assert t.counts() == recount
    assert t.total == sum(v for k, v in t.counts().items() if k != "other")
