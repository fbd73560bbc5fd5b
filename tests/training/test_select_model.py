"""scripts.training.select_model: the val figures a candidate model is chosen by."""

import numpy as np
import pytest

select_model = pytest.importorskip("scripts.training.select_model")
evaluate = pytest.importorskip("scripts.training.evaluate")


def metrics(truth, pred):
    return evaluate.classification_metrics(np.array(truth), np.eye(6)[pred])


def test_summary_reads_each_camera_the_way_the_kiosk_uses_it():
    # PBC: one "other" photo (label 5) called a monocyte (2) as stored; every cell right at kiosk framing
    pbc = {"photo": metrics([0, 1, 2, 5, 5], [0, 1, 2, 2, 5]), "kiosk": metrics([0, 1, 2, 5, 5], [0, 1, 2, 5, 5])}
    raabin = {"photo": metrics([0, 1, 3, 4], [0, 1, 3, 4]), "kiosk": metrics([0, 1, 3, 4], [0, 1, 3, 0])}
    e2e = {"chula": {"accuracy": 13 / 15}, "bccd": {"accuracy": 27 / 36}}
    row = select_model.summarise("9.9.9", {"pbc": pbc, "raabin": raabin}, e2e)
    assert row["pbc_kiosk"] == 1.0 and row["raabin_kiosk"] == 0.75
    assert row["pbc_photo_five_class"] == 1.0  # the five-class figure ignores "other" truth...
    assert row["pbc_photo_macro_f1_five"] == pytest.approx((1 + 1 + 2 / 3) / 3)  # ...macro-F1 does not
    assert row["pbc_photo_confusion"][5][2] == 1
    assert row["camera_mean"] == pytest.approx((1.0 + 0.75 + 13 / 15 + 27 / 36) / 4)
    assert row["pbc_kiosk_macro_f1_five"] == 1.0


def test_pooled_figures_weigh_every_crop_the_same_and_skip_other_truth():
    big = {"photo": metrics([0] * 9 + [5], [0] * 9 + [2]), "kiosk": metrics([0] * 9 + [5], [0] * 8 + [1, 5])}
    small = {"photo": metrics([1], [2]), "kiosk": metrics([1], [1])}
    tecom = {"photo": metrics([0, 0], [3, 3]), "kiosk": metrics([0, 0], [3, 3])}  # never trained on: not pooled
    res = {"pbc": big, "chula": small, "tecom": tecom}
    assert evaluate.pooled_five(res, "photo") == pytest.approx(9 / 10)
    assert evaluate.pooled_five(res, "kiosk") == pytest.approx(9 / 10)
    assert evaluate.pooled_five({"chula": small}, "kiosk") == 1.0
