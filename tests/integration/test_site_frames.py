"""A site profile fitted on whole labelled frames: its detector side (pixel scale, threshold) is recorded,
used by ``run`` and recorded with the session; a threshold set in the config still wins.

Real shipped frames (the calibration set's Chula frames, MIT) with their leukocyte boxes from
``../shared/datasets/chula/boxes.csv``, scaled to the shipped frames' size; the real console script, the
FP32 TFLite models and a real SQLite store.
"""

from __future__ import annotations

import csv
import json
import os
import sqlite3
from pathlib import Path

import pytest

from edge_app.imaging import preprocess
from tests.integration.test_site import _frames_folder, wbc

ROOT = Path(__file__).resolve().parents[2]
DATASETS = ROOT.parent / "shared" / "datasets"

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not (DATASETS / "chula").is_dir(),
                                                   reason="needs ../shared/datasets")]


def chula_frames_csv(dst: Path) -> Path:
    """image,x1,y1,x2,y2,label rows for every leukocyte of the calibration set's Chula frames."""
    manifest = json.loads((ROOT / "calibration" / "manifest.json").read_text())
    boxes: dict[str, list] = {}
    with open(DATASETS / "chula" / "boxes.csv", newline="") as f:
        for r in csv.DictReader(f):
            if r["cell"] == "WBC":
                boxes.setdefault(r["image"], []).append(r)
    lines = ["image,x1,y1,x2,y2,label"]
    for e in manifest["frames"]:
        if e["source"] != "chula":
            continue
        path = ROOT / "calibration" / e["file"]
        w_shipped = preprocess.read_rgb(str(path)).shape[1]
        w_source = preprocess.read_rgb(str(DATASETS / "chula" / e["origin"])).shape[1]
        s = w_shipped / w_source
        for r in boxes[Path(e["origin"]).name]:
            box = ",".join(f"{float(r[k]) * s:.1f}" for k in ("x1", "y1", "x2", "y2"))
            lines.append(f"{os.path.relpath(path, dst.parent)},{box},{r['wbc_type']}")
    dst.write_text("\n".join(lines) + "\n")
    return dst


def _last_calibration(data: Path) -> dict:
    with sqlite3.connect(data / "wbc.sqlite3") as db:
        return json.loads(db.execute("SELECT calibration FROM sessions ORDER BY started_at DESC").fetchone()[0])


def test_frames_profile_records_and_applies_its_detector_side(tmp_path):
    data = tmp_path / "data"
    fp32 = tmp_path / "fp32.toml"
    fp32.write_text('[inference]\nprecision = "fp32"\n')
    labels = chula_frames_csv(tmp_path / "frames.csv")
    prof = tmp_path / "chula-scope"
    r = wbc("adapt", "--labels", labels, "--out", prof, "--config", fp32, data_dir=data, check_rc=0)
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert {"profile", "cells", "frames", "held_back"} <= set(out) and out["frames"] == 60
    det = out["detector"]
    rec = json.loads((prof / "profile.json").read_text())["detector"]
    # the shipped Chula camera is inside the trained range: measured, and left at 1
    assert det["pixel_scale"] == rec["pixel_scale"]["factor"] == 1.0 and rec["pixel_scale"]["confidence"] > 0
    thr = rec["threshold"]
    assert thr["frames"] == 60 and thr["held_back"]["frames"] == 15 and thr["held_back"]["cells"] >= 15
    assert det["threshold"] == thr["value"] and det["threshold_fitted"] == thr["fitted"]
    if thr["fitted"]:
        assert thr["held_back"]["after"]["f1"] >= thr["held_back"]["before"]["f1"]
    else:
        assert thr["value"] == thr["shipped"] and thr["why"]

    frames = _frames_folder(tmp_path / "frames", n=24)  # a short real pan of the shipped sample
    site = tmp_path / "site.toml"
    site.write_text(fp32.read_text() + f'\n[model]\nsite = "{prof}"\n')
    wbc("run", "--source", frames, "--headless", "--config", site, data_dir=data, check_rc=0)
    cal = _last_calibration(data)
    assert cal["site_profile"] == "chula-scope"
    assert cal["pixel_scale"] == {"mode": "fixed", "factor": 1.0}  # the profile's, not measured again
    assert cal["detect_threshold"] == thr["value"]
    assert cal["detect_threshold_source"] == ("site profile" if thr["fitted"] else "default")

    # a threshold the config sets wins over the profile's
    site.write_text(site.read_text().replace("[model]\n", "[model]\ndetect_threshold = 0.42\n"))
    wbc("run", "--source", frames, "--headless", "--config", site, data_dir=data, check_rc=0)
    cal = _last_calibration(data)
    assert cal["detect_threshold"] == 0.42 and cal["detect_threshold_source"] == "config"
