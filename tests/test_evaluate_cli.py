"""scripts.evaluate's report bookkeeping: re-scoring a new model keeps the LOSO and lever rows."""

import json
import shutil
from pathlib import Path

import pytest

evaluate = pytest.importorskip("scripts.evaluate")

MODELS = Path(__file__).resolve().parent.parent / "models"


def test_carry_studies_keeps_rows_and_their_command():
    earlier = {"command": "python -m scripts.evaluate --loso a.pt:chula --levers runs/levers",
               "loso": [{"source": "chula", "ckpt": "a.pt"}], "levers": [{"run": "levers/x"}],
               "classifier": {"old": 1}}
    r = evaluate.carry_studies({"command": "python -m scripts.evaluate --keep-studies", "classifier": {"new": 1}},
                               earlier)
    assert r["loso"] == earlier["loso"] and r["levers"] == earlier["levers"]
    assert r["command_loso"] == earlier["command"]  # the rows name the command that made them
    assert r["classifier"] == {"new": 1} and r["command"].endswith("--keep-studies")
    earlier["command_loso"] = "python -m scripts.evaluate --skip-main --add-loso b.pt:chula"
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
