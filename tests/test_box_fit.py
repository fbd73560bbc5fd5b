"""scripts/box_fit.py: the detected-to-labelled side ratio behind the Chula looseness figures."""

from __future__ import annotations

import numpy as np

from scripts.box_fit import side_ratios


def test_side_ratio_pairs_each_cell_with_its_best_box():
    gt = np.array([[0, 0, 40, 40], [100, 100, 150, 150], [300, 300, 330, 330]], np.float32)
    boxes = np.array([[-6, -6, 50, 50],      # 1.4x the first cell, IoU 0.51
                      [100, 100, 150, 150],  # the second exactly
                      [200, 200, 210, 210]], np.float32)  # on nothing: the third cell is not matched
    r = side_ratios([(boxes, np.ones(3, np.float32))], [gt])
    assert np.allclose(np.sort(r), [1.0, 1.4])


def test_a_box_below_the_match_iou_is_not_a_ratio():
    gt = np.array([[0, 0, 20, 20]], np.float32)
    far_too_big = np.array([[-20, -20, 40, 40]], np.float32)  # IoU 0.11
    assert side_ratios([(far_too_big, np.ones(1, np.float32))], [gt]).size == 0
    assert side_ratios([(np.zeros((0, 4), np.float32), np.zeros(0, np.float32))], [gt]).size == 0
