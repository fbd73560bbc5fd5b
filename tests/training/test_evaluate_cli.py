"""scripts.training.evaluate's report bookkeeping: re-scoring a new model keeps the LOSO and lever rows."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

evaluate = pytest.importorskip("scripts.training.evaluate")

MODELS = Path(__file__).resolve().parents[2] / "models"


def test_carry_studies_keeps_rows_and_their_command():
    earlier = {"command": "python -m scripts.training.evaluate --loso a.pt:chula --levers runs/levers",
               "loso": [{"source": "chula", "ckpt": "a.pt"}], "levers": [{"run": "levers/x"}],
               "classifier": {"old": 1}}
    cmd = "python -m scripts.training.evaluate --keep-studies"
    r = evaluate.carry_studies({"command": cmd, "classifier": {"new": 1}},
                               earlier)
    assert r["loso"] == earlier["loso"] and r["levers"] == earlier["levers"]
    assert r["command_loso"] == earlier["command"]  # the rows name the command that made them
    assert r["classifier"] == {"new": 1} and r["command"].endswith("--keep-studies")
    earlier["command_loso"] = "python -m scripts.training.evaluate --skip-main --add-loso b.pt:chula"
    assert evaluate.carry_studies({}, earlier)["command_loso"] == earlier["command_loso"]


def test_keep_studies_refuses_combinations(capsys):
    with pytest.raises(SystemExit) as e:
        evaluate.main(["--keep-studies", "--skip-main"])
    assert e.value.code == 2 and "cannot be combined" in capsys.readouterr().err


def test_keep_studies_needs_rows_to_keep(tmp_path, capsys):
    model_dir = tmp_path / "models"
    shutil.copytree(MODELS, model_dir, ignore=shutil.ignore_patterns("*.png", "reference", "parity", "training"))
    report = json.loads((model_dir / "evaluation.json").read_text())
    report.pop("loso", None)
    (model_dir / "evaluation.json").write_text(json.dumps(report))
    with pytest.raises(SystemExit) as e:
        evaluate.main(["--keep-studies", "--model-dir", str(model_dir)])
    assert e.value.code == 2 and "holds no LOSO rows" in capsys.readouterr().err


class _SideClassifier:
    """Calls every crop by its side: 128 px (the photo whole) is class 0, anything else class 1."""

    def probs(self, crops, views=1):
        out = np.zeros((len(crops), 6))
        for i, c in enumerate(crops):
            out[i, 0 if c.shape[0] == 128 else 1] = 1.0
        return out


def test_loso_framed_scores_the_kiosk_square(monkeypatch):
    # Three PBC photos: two with a kiosk square, one without (scored whole); one Raabin photo and one unlabelled
    # PBC photo that must not be counted; a frame source gets no framed figure at all.
    images = np.zeros((5, 128, 128, 3), np.uint8)
    cache = {"images": images, "labels": np.array([1, 1, 0, -1, 1]),
             "sources": np.array(["pbc", "pbc", "pbc", "pbc", "raabin"]),
             "splits": np.array(["train", "test", "val", "train", "test"]), "keys": np.arange(5).astype(str)}
    squares = np.array([[20, 20, 100, 100], [10, 12, 90, 92], [np.nan] * 4, [0, 0, 50, 50], [0, 0, 60, 60]],
                       np.float32)
    monkeypatch.setattr(evaluate.data, "load", lambda name: cache)
    monkeypatch.setattr(evaluate.kiosk_framing, "load", lambda keys: squares)
    m = evaluate.eval_checkpoint_framed(_SideClassifier(), "pbc", ("train", "val", "test"), 8)
    assert m["n_five"] == 3 and m["five_class_accuracy"] == 1.0  # framed crops -> 1, the unframed photo -> 0
    monkeypatch.setattr(evaluate.kiosk_framing, "load", lambda keys: np.full_like(squares, np.nan))
    # no square anywhere: every photo is scored whole (class 0), so the train photo labelled 1 is wrong
    assert evaluate.eval_checkpoint_framed(_SideClassifier(), "pbc", ("train",), 8)["five_class_accuracy"] == 0.0
    assert evaluate.eval_checkpoint_framed(_SideClassifier(), "chula", ("test",), 8) is None


def test_unseen_slides_row_scores_only_val_and_test_slides_with_or_without_a_style_bank(monkeypatch):
    # Chula crops on train/val/test slides; the classifier calls every crop class 0, so the unseen-slide
    # accuracy is the share of class-0 crops among val+test only (the train crop, labelled 1, is left out).
    images = np.zeros((5, 128, 128, 3), np.uint8)
    cache = {"images": images, "labels": np.array([1, 0, 0, 1, 0]),
             "sources": np.array(["chula", "chula", "chula", "chula", "tecom"]),
             "splits": np.array(["train", "val", "test", "test", "test"]), "keys": np.arange(5).astype(str)}
    monkeypatch.setattr(evaluate.data, "load", lambda name: cache)
    clf = _SideClassifier()
    clf.style_sources = []  # the control run: no bank, the same slice, so the pair compares like with like
    row = evaluate.unseen_slides_row(clf, "chula", 8)
    assert row["n_unseen"] == 3 and row["acc_tta_unseen"] == pytest.approx(2 / 3) and row["tecom_tta"] == 1.0
    assert evaluate.unseen_slides_row(clf, "pbc", 8) == {}  # a photo source left out without a bank: all unseen
    clf.style_sources = ["bccd", "chula", "pbc"]
    row = evaluate.unseen_slides_row(clf, "chula", 8)
    assert row["n_unseen"] == 3 and row["acc_tta_unseen"] == pytest.approx(2 / 3)
    assert row["tecom_tta"] == 1.0 and row["style_sources"] == ["bccd", "chula", "pbc"]


def test_unseen_slides_paragraph_says_whether_the_bank_held_the_left_out_source():
    from scripts.training.eval_report import unseen_slides_paragraph
    row = {"source": "chula", "ckpt": "runs/x/classifier.pt", "views": 8, "n_unseen": 62, "acc_unseen": 0.5,
           "acc_tta_unseen": 0.6, "f1_tta_unseen": 0.55, "tecom_tta": 0.59}
    control = " ".join(unseen_slides_paragraph(dict(row, style_sources=[])))
    assert "left out chula entirely" in control and "0.600 with 8 views" in control and "0.590" in control
    mixed = " ".join(unseen_slides_paragraph(dict(row, style_sources=["bccd", "chula"])))
    assert "never seen even unlabelled" in mixed and "bccd, chula in the style bank" in mixed
    assert unseen_slides_paragraph({"source": "pbc", "ckpt": "c"}) == []
