"""``edge_app.detections.Detections``: the one type from the detector to the tracker."""

from __future__ import annotations

import numpy as np
import pytest

from edge_app.detections import Detection, Detections


def test_columns_rows_and_subsets():
    d = Detections([[0, 0, 10, 10], [5, 5, 20, 25], [30, 30, 40, 40]], [0.9, 0.4, 0.7])
    assert len(d) == 3 and d.xyxy.dtype == np.float32 and d.score.dtype == np.float32
    row = d[1]
    assert isinstance(row, Detection) and row.box.tolist() == [5, 5, 20, 25] and row.score == pytest.approx(0.4)
    assert isinstance(row.score, float)  # a Python float: it goes into JSON and the store as it is
    assert [r.score for r in d] == [float(np.float32(s)) for s in (0.9, 0.4, 0.7)]
    keep = d[[0, 2]]
    assert isinstance(keep, Detections) and keep.xyxy[:, 0].tolist() == [0, 30]
    assert len(d[d.score > 0.5]) == 2 and len(d[[]]) == 0 and len(d[1:]) == 2


def test_empty_and_mismatched():
    e = Detections.empty()
    assert len(e) == 0 and not e and list(e) == [] and e.xyxy.shape == (0, 4)
    with pytest.raises(ValueError, match="2 boxes but 1 scores"):
        Detections([[0, 0, 1, 1], [1, 1, 2, 2]], [0.5])
