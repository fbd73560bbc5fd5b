"""The detector's output stride (scripts/training/wbcnet.py, scripts/training/train.py --stride).

Training needs PyTorch, which the runtime and CI do not install: these run
where the training extra is installed and are skipped elsewhere.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
wbcnet = pytest.importorskip("scripts.training.wbcnet")
train = pytest.importorskip("scripts.training.train")

from edge_app.imaging.preprocess import DETECTOR_SIZE  # noqa: E402
from edge_app.model.bundle import decode_detections  # noqa: E402


@pytest.mark.parametrize("stride", [16, 8])
def test_output_grid_is_the_input_over_the_stride(stride):
    w, h = DETECTOR_SIZE
    heat, ltrb = wbcnet.Detector(stride=stride).eval()(torch.zeros(1, 3, h, w))
    assert heat.shape == (1, 1, h // stride, w // stride)
    assert ltrb.shape == (1, 4, h // stride, w // stride)
    assert train.FrameSet([], [], False, 0, stride=stride).grid == (h // stride, w // stride)


def test_stride_16_keeps_the_shipped_checkpoint_layout():
    # checkpoints trained before the stride option must still load into Detector()
    s16 = wbcnet.Detector(stride=16).state_dict().keys()
    s8 = wbcnet.Detector(stride=8).state_dict().keys()
    assert not any(k.startswith("lat8.") for k in s16)
    assert set(s8) - set(s16) == {k for k in s8 if k.startswith("lat8.")} != set()
    with pytest.raises(ValueError, match="stride must be one of"):
        wbcnet.Detector(stride=4)


@pytest.mark.parametrize("stride", [16, 8])
def test_training_targets_decode_back_to_the_boxes(stride):
    # two Chula-sized cells (26 px in the detector's input) side by side: the training targets,
    # read back by the runtime's decoder at the peak cells, give both boxes back at either stride
    boxes = np.array([[100, 100, 126, 126], [126, 102, 152, 128]], np.float32)
    w, h = DETECTOR_SIZE
    heat, ltrb, _ = train.detector_targets(boxes, (h // stride, w // stride), stride)
    found, _ = decode_detections(heat, ltrb.transpose(1, 2, 0), stride, 0.5, 0.4, vote=False)
    assert len(found) == 2
    found = found[np.argsort(found[:, 0])]
    assert np.abs(found - boxes).max() < 1e-3


def test_per_object_mask_weighs_each_cell_once():
    # a BCCD-sized and a Chula-sized cell: with a plain mask the big one owns most regressed grid cells,
    # with per_object each labelled cell sums to one
    boxes = np.array([[20, 20, 124, 124], [200, 100, 233, 133]], np.float32)
    w, h = DETECTOR_SIZE
    grid = (h // 16, w // 16)
    _, ltrb, plain = train.detector_targets(boxes, grid, 16)
    _, ltrb_o, obj = train.detector_targets(boxes, grid, 16, per_object=True)
    assert np.array_equal(ltrb, ltrb_o) and np.array_equal(plain > 0, obj > 0)
    big = np.zeros_like(plain, bool)
    big[1:8, 1:8] = True
    assert plain[big].sum() > 2 * plain[~big].sum()
    assert obj[big].sum() == pytest.approx(1.0) and obj[~big].sum() == pytest.approx(1.0)


def test_relative_l1_costs_a_small_box_what_it_costs_a_big_one():
    # the same 1.4x error on a 2-stride and a 6-stride box: equal loss when relative,
    # three times less for the small box in strides
    small = torch.full((1, 4, 1, 1), 1.0)
    big = torch.full((1, 4, 1, 1), 3.0)
    mask = torch.ones(1, 1, 1)
    rel = [float(train.box_loss(t * 1.4, t, mask, relative=True)) for t in (small, big)]
    cell = [float(train.box_loss(t * 1.4, t, mask)) for t in (small, big)]
    assert rel[0] == pytest.approx(rel[1])
    assert cell[1] - cell[0] > 0.05


@pytest.mark.parametrize("name, per_object, relative", [("cell", False, False), ("object", True, True),
                                                         ("object_stride", True, False)])
def test_box_loss_names_choose_the_mask_weights_and_the_l1_units(name, per_object, relative):
    # 'cell' is the shipped default and must stay the shipped loss; 'object_stride' (a study) takes
    # the per-object weights of 'object' with the shipped L1 in strides
    args = train.parse_args(["detector", "--out", "x"] + (["--box-loss", name] if name != "cell" else []))
    assert args.box_loss == name
    assert train.BOX_LOSSES[args.box_loss] == (per_object, relative)


def test_chula_fold_takes_only_the_named_train_slides_and_rejects_others():
    sources = np.array(["chula", "chula", "chula", "bccd", "chula"])
    splits = np.array(["train", "train", "val", "train", "test"])
    keys = np.array(["L-8_0001.jpg", "M-8_0002.jpg", "L-8_0003.jpg", "L-8_0004.jpg", "N-1B_0001.jpg"])
    assert train.chula_fold(sources, splits, keys, None).tolist() == [False] * 5
    # a val-split frame of the same slide id and another source's key are not moved
    assert train.chula_fold(sources, splits, keys, ["L-8"]).tolist() == [True, False, False, False, False]
    with pytest.raises(SystemExit, match="N-1B"):  # a test slide can never become a study fold
        train.chula_fold(sources, splits, keys, ["N-1B"])
    assert train.parse_args(["detector", "--out", "x", "--fold-slides", "L-8,N-3B"]).fold_slides == ["L-8", "N-3B"]
