"""`wbc-counter classify` / `detect`: the scripting contract, bad input included.

Runs the real console script in a subprocess on real shipped images (the
calibration set: PBC crops, BCCD/Chula frames) with the real TFLite models.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edge_app.labels import CLASSES

ROOT = Path(__file__).resolve().parents[2]
CROPS = sorted((ROOT / "calibration" / "crops").glob("pbc_*.jpg"))[:3]
FRAMES = sorted((ROOT / "calibration" / "frames").glob("bccd_*.jpg"))[:2]


def wbc(*args: str, tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge_app", *args, "--data-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)


def lines(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def test_classify_json_contract(tmp_path):
    r = wbc("classify", "--json", *map(str, CROPS), tmp_path=tmp_path)
    assert r.returncode == 0, r.stderr
    rows = lines(r.stdout)
    assert [row["image"] for row in rows] == [str(p) for p in CROPS]
    for row in rows:
        assert {"image", "label", "probs"} <= set(row)  # the contract's keys; added ones may follow
        assert row["no_leukocyte"] is False and "no_leukocyte_reason" not in row  # real cell crops
        assert list(row["probs"]) == list(CLASSES)
        assert abs(sum(row["probs"].values()) - 1) < 0.02
        assert row["label"] == max(row["probs"], key=row["probs"].get)


def test_classify_default_precision_is_the_measured_choice(tmp_path):
    # default "auto": measured once on this CPU (both checked, the faster kept) and cached in the data dir
    default = lines(wbc("classify", "--json", str(CROPS[0]), tmp_path=tmp_path).stdout)
    chosen = next(iter(json.loads((tmp_path / "precision.json").read_text()).values()))["precision"]
    int8 = lines(wbc("classify", "--json", "--precision", "int8", str(CROPS[0]), tmp_path=tmp_path).stdout)
    fp32 = lines(wbc("classify", "--json", "--precision", "fp32", str(CROPS[0]), tmp_path=tmp_path).stdout)
    assert default == {"int8": int8, "fp32": fp32}[chosen]
    assert int8[0]["label"] == fp32[0]["label"]


def test_detect_json_contract(tmp_path):
    r = wbc("detect", "--json", *map(str, FRAMES), tmp_path=tmp_path)
    assert r.returncode == 0, r.stderr
    rows = lines(r.stdout)
    assert len(rows) == len(FRAMES)
    found = 0
    for row, path in zip(rows, FRAMES):
        assert set(row) == {"image", "cells"} and row["image"] == str(path)
        for cell in row["cells"]:
            found += 1
            assert set(cell) == {"box", "label", "score", "probs"}
            x1, y1, x2, y2 = cell["box"]
            assert 0 <= x1 < x2 <= 640 and 0 <= y1 < y2 <= 480  # BCCD frames are 640x480
            assert cell["label"] in CLASSES and 0 <= cell["score"] <= 1
    assert found >= 1  # every BCCD frame holds at least one leukocyte


def test_bad_files_are_reported_per_file_and_the_rest_processed(tmp_path):
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(CROPS[0].read_bytes()[:200])  # a truncated JPEG
    text = tmp_path / "notes.jpg"
    text.write_text("this is not an image")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    missing = tmp_path / "missing.jpg"
    good = tmp_path / "good.jpg"
    shutil.copy(CROPS[1], good)
    for verb in ("classify", "detect"):
        r = wbc(verb, "--json", str(missing), str(corrupt), str(good), str(text), str(empty), str(tmp_path),
                tmp_path=tmp_path)
        assert r.returncode != 0
        assert "Traceback" not in r.stderr
        assert [row["image"] for row in lines(r.stdout)] == [str(good)]
        for bad in (missing, corrupt, text, empty, tmp_path):
            assert f"{bad}: error:" in r.stderr


def test_broken_model_file_is_refused_with_a_clear_message(tmp_path):
    models = tmp_path / "models"
    shutil.copytree(ROOT / "models", models, ignore=shutil.ignore_patterns("parity", "*.png", "*.md"))
    (models / "classifier_int8.tflite").write_bytes(b"\0" * 100)
    r = wbc("classify", "--json", "--model-dir", str(models), str(CROPS[0]), tmp_path=tmp_path)
    assert r.returncode == 2
    assert "corrupt" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("damage, words", [
    (lambda m: m["models"]["classifier"]["sha256"].clear(), "models.classifier.sha256 has no hash"),
    (lambda m: m["models"]["detector"].pop("stride"), "models.detector.stride"),
    (lambda m: m["models"].pop("detector"), "no 'detector' entry"),
])
def test_an_incomplete_manifest_is_refused_with_a_clear_message(tmp_path, damage, words):
    models = tmp_path / "models"
    shutil.copytree(ROOT / "models", models, ignore=shutil.ignore_patterns("parity", "*.png", "*.md"))
    manifest = json.loads((models / "manifest.json").read_text())
    damage(manifest)
    (models / "manifest.json").write_text(json.dumps(manifest))
    r = wbc("detect", "--json", "--model-dir", str(models), str(FRAMES[0]), tmp_path=tmp_path)
    assert r.returncode == 2 and words in r.stderr and "Traceback" not in r.stderr, r.stderr


@pytest.mark.parametrize("verb", ["classify", "detect"])
def test_bad_config_key_names_the_key(tmp_path, verb):
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[inference]\nthreds = 4\n")
    r = wbc(verb, "--json", "--config", str(cfg), str(CROPS[0]), tmp_path=tmp_path)
    assert r.returncode == 2 and "inference.threds" in r.stderr
