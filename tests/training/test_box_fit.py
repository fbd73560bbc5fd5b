"""scripts/training/box_fit.py: the detected-to-labelled side ratio, and a site fitting its own camera's box scale."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from scripts.training import box_fit
from scripts.training.box_fit import side_ratios

ROOT = Path(__file__).resolve().parents[2]
CHULA = ROOT.parent / "shared" / "datasets" / "chula"
MODELS = str(ROOT / "models")


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


# ------------------------------------------------- a site fitting its own camera

def _site_csv(tmp_path, n_slides=2):
    """Leukocyte rows of the first frames of two Chula *train* slides, as a site would label them."""
    from scripts.training.splits import split_of
    rows = [r for r in csv.DictReader(open(CHULA / "boxes.csv"))
            if split_of("chula", r["image"], r["slide"]) == "train"]
    slides = sorted({r["slide"] for r in rows})[:n_slides]
    keep = [r for r in rows if r["slide"] in slides][:12]
    path = tmp_path / "boxes.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(keep[0]))
        w.writeheader()
        w.writerows(keep)
    return path


@pytest.mark.skipif(not (CHULA / "boxes.csv").is_file(), reason="shared Chula dataset missing")
def test_site_fit_suggests_a_scale_from_labelled_frames(tmp_path, capsys):
    csv_path = _site_csv(tmp_path)
    out = tmp_path / "fit.json"
    rc = box_fit.main([MODELS, "--labels", str(csv_path), "--images", str(CHULA / "images"), "--json", str(out)])
    assert rc == 0
    row = json.loads(out.read_text())["site"]
    assert row["frames"] >= 2 and row["cells"] >= row["frames"] and row["matched"] >= 1
    assert 0.5 <= row["suggested_box_scale"] <= 1.5
    q1, median, q3 = row["side_ratio_quartiles"]
    assert q1 <= median <= q3
    assert row["suggested_box_scale"] == pytest.approx(1 / median, abs=0.006)
    # the site also sees its frames at that scale, as regressed and refined ([model] box_refine)
    at = row["at_suggested_scale"]
    assert set(at) == {"raw", "refined"} and all(0.0 <= at[k]["ap50"] <= 1.0 for k in at)


@pytest.mark.parametrize("text, message", [("image,x1,y1\na.jpg,1,2\n", "missing column"),
                                           ("image,x1,y1,x2,y2\na.jpg,1,2,x,4\n", "line 2: box coordinates"),
                                           ("image,x1,y1,x2,y2\na.jpg,5,5,1,1\n", "line 2: x2/y2"),
                                           ("image,x1,y1,x2,y2\nmissing.jpg,1,1,9,9\n", "cannot read"),
                                           ("image,cell,x1,y1,x2,y2\na.jpg,RBC,1,1,9,9\n", "no leukocyte rows")])
def test_bad_site_labels_get_a_clear_message(tmp_path, capsys, text, message):
    path = tmp_path / "boxes.csv"
    path.write_text(text)
    assert box_fit.main([MODELS, "--labels", str(path)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
