"""scripts.select_model: the val figures a candidate model is chosen by."""

import numpy as np
import pytest

select_model = pytest.importorskip("scripts.select_model")
evaluate = pytest.importorskip("scripts.evaluate")


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
