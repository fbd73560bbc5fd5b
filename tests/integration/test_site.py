"""Site adaptation: ``wbc-counter adapt``, a profile in use (``--site``, ``[model] site``), its record, revert.

Everything runs the real console script in subprocesses on real shipped images
(the calibration set's PBC crops, CC BY 4.0; frames of the shipped sample video)
with the real TFLite models and a real SQLite store. The profile tests use the
FP32 TFLite models so the held-back comparison does not depend on the CPU's
INT8 kernels.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_app.labels import CLASSES
from edge_app.model.bundle import Manifest
from edge_app.site import head as site_head

ROOT = Path(__file__).resolve().parents[2]
CALIB = ROOT / "calibration"
VIDEO = ROOT / "samples" / "slide_pan_train.mp4"
OTHER = {"ig", "erythroblast", "platelet"}


def wbc(*args, data_dir: Path, check_rc: int | None = None) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "edge_app", *map(str, args), "--data-dir", str(data_dir)],
                       capture_output=True, text=True, timeout=600, cwd=ROOT)
    if check_rc is not None:
        assert r.returncode == check_rc, r.stderr[-2000:]
    return r


def pbc_crops() -> list[tuple[Path, str]]:
    """(file, class) of the calibration set's PBC crops (their origin folder is the PBC class)."""
    manifest = json.loads((CALIB / "manifest.json").read_text())
    out = []
    for e in manifest["crops"]:
        if e["source"] == "pbc":
            c = e["origin"].split("/")[0]
            out.append((CALIB / e["file"], "other" if c in OTHER else c))
    return out


def write_csv(path: Path, rows: list[tuple[Path, str]]) -> Path:
    """A labels CSV with paths relative to its own folder (as the contract says)."""
    lines = ["image,label"] + [f"{Path(_rel(f, path.parent))},{label}" for f, label in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def _rel(f: Path, base: Path) -> str:
    import os
    return os.path.relpath(f, base)


@pytest.fixture
def fp32_config(tmp_path) -> Path:
    cfg = tmp_path / "kiosk.toml"
    cfg.write_text('[inference]\nprecision = "fp32"\n')
    return cfg


# -- the head ------------------------------------------------------------------

def test_head_is_anchored_to_the_network_and_class_balanced():
    """With a huge pull toward the network's head the anchored fit stays there; class weights sum equally per
    class; every head leaves classes without a cell to the network; a prototype head separates its classes."""
    manifest = Manifest.load()
    w0, b0 = site_head.shipped_head(manifest.file("classifier", "onnx"))
    assert w0.shape == (len(CLASSES), 1024)
    rng = np.random.default_rng(0)
    x = rng.random((30, 1024), np.float32) * 0.5
    y = np.array([0] * 20 + [4] * 10)
    h = site_head.fit(x, y, w0, b0, method="anchored", lam=1e6)
    assert np.abs(h.weight - w0).max() < 1e-3 and np.abs(h.bias - b0).max() < 1e-3
    w = site_head.class_weights(y, len(CLASSES))
    assert w[y == 0].sum() == pytest.approx(w[y == 4].sum())
    # classes without a cell are left to the network: their probability is the network's
    shipped = np.full((30, 6), 1 / 6, np.float32)
    for method in site_head.METHODS:
        p = site_head.fit(x, y, w0, b0, method=method).mix(x, shipped)
        assert np.allclose(p[:, [1, 2, 3, 5]], 1 / 6, atol=1e-6)
        assert np.allclose(p.sum(1), 1, atol=1e-5)
    # a prototype head puts each class's own cells on its side (cells of two clearly different kinds)
    x2 = np.concatenate([x[:20] + np.eye(1024, dtype=np.float32)[0], x[20:] + np.eye(1024, dtype=np.float32)[1]])
    h = site_head.fit(x2, y, w0, b0, method="prototype", alpha=1.0)
    assert (h.mix(x2, np.full((30, 6), 1 / 6, np.float32)).argmax(1) == y).all()


# -- bad input -----------------------------------------------------------------

@pytest.mark.parametrize("content, row, words", [
    ("image,lbl\nx.jpg,neutrophil\n", "row 1", "missing column label"),
    ("image,label\n{crop},neutrophil\n{crop},neutrofil\n", "row 3", "unknown label 'neutrofil'"),
    ("image,label\n{crop},neutrophil\nmissing.jpg,monocyte\n", "row 3", "cannot read image missing.jpg"),
    ("image,x1,y1,x2,y2,label\n{frame},10,10,5,40,\n", "row 2", "not inside"),
])
def test_bad_csv_exits_2_naming_the_row(tmp_path, content, row, words):
    crop = pbc_crops()[0][0]
    frame = sorted((CALIB / "frames").glob("bccd_*.jpg"))[0]
    csv = tmp_path / "labels.csv"
    csv.write_text(content.format(crop=_rel(crop, tmp_path), frame=_rel(frame, tmp_path)))
    r = wbc("adapt", "--labels", csv, "--out", tmp_path / "prof", data_dir=tmp_path / "data")
    assert r.returncode == 2
    assert row in r.stderr and words in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "prof").exists()


# -- a profile, end to end -----------------------------------------------------

def _frames_folder(dst: Path, n: int = 40, step: int = 6) -> Path:
    """Every ``step``-th frame of the shipped sample video as PNGs: a short real pan for ``run``."""
    dst.mkdir()
    cap = cv2.VideoCapture(str(VIDEO))
    i = kept = 0
    while kept < n:
        ok, frame = cap.read()
        if not ok:
            break
        if i % step == 0:
            cv2.imwrite(str(dst / f"f{kept:04d}.png"), frame)
            kept += 1
        i += 1
    cap.release()
    assert kept == n
    return dst


@pytest.mark.slow
def test_profile_round_trip(tmp_path, fp32_config):
    """adapt on real crops -> run --site on real frames -> the session records it -> selftest checks it ->
    revert -> the next session counts with the network alone."""
    data = tmp_path / "data"
    csv = write_csv(tmp_path / "labels.csv", pbc_crops())
    prof = tmp_path / "site-a"
    r = wbc("adapt", "--labels", csv, "--out", prof, "--name", "Ward 3 scope", "--config", fp32_config,
            data_dir=data, check_rc=0)
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert set(out) == {"profile", "cells", "frames", "held_back"}
    assert out["profile"] == str(prof) and out["frames"] == 0
    assert list(out["cells"]) == list(CLASSES) and out["cells"]["basophil"] == 20 and out["cells"]["other"] == 60
    assert out["held_back"]["n"] == 40 and out["held_back"]["after"] >= out["held_back"]["before"]
    record = json.loads((prof / "profile.json").read_text())
    assert record["model"]["version"] == Manifest.load().version
    assert record["verified_by"] == {"csv": 160} and len(record["inputs"]["sha256"]) == 64

    # classify --site mixes the head in; without it, the network alone (unchanged output)
    crop = str(pbc_crops()[0][0])
    plain = json.loads(wbc("classify", "--json", "--config", fp32_config, crop, data_dir=data, check_rc=0).stdout)
    sited = json.loads(wbc("classify", "--json", "--config", fp32_config, "--site", prof, crop, data_dir=data,
                           check_rc=0).stdout)
    assert set(sited) == set(plain) and sited["probs"] != plain["probs"]

    # the kiosk's config names the profile; run counts with it and records it
    cfg = tmp_path / "site.toml"
    cfg.write_text(fp32_config.read_text() + f'\n[model]\nsite = "{prof}"\ndetect_threshold = 0.35\n')
    frames = _frames_folder(tmp_path / "frames")
    wbc("run", "--source", frames, "--headless", "--config", cfg, data_dir=data, check_rc=0)
    with sqlite3.connect(data / "wbc.sqlite3") as db:
        cal = json.loads(db.execute("SELECT calibration FROM sessions ORDER BY started_at DESC").fetchone()[0])
    assert cal["site_profile"] == "Ward 3 scope"
    import hashlib
    assert cal["site_profile_sha256"] == hashlib.sha256((prof / "profile.json").read_bytes()).hexdigest()

    st = wbc("selftest", "--no-camera", "--json", "--config", cfg, data_dir=data)
    checks = json.loads(st.stdout.strip().splitlines()[-1])
    assert checks["checks"]["site"] is True, st.stdout

    # bench names the profile and the time its head adds per crop (the figure itself is not asserted: timing)
    b = wbc("bench", "--source", frames, "--frames", "5", "--config", cfg, data_dir=data, check_rc=0)
    site = json.loads(b.stdout.strip().splitlines()[-1])["site"]
    assert site["profile"] == "Ward 3 scope" and site["head_ms_per_crop"] > 0

    # a damaged head file fails the selftest's site check
    head = prof / "head.npz"
    good = head.read_bytes()
    head.write_bytes(good[:-8] + b"\0" * 8)
    st = wbc("selftest", "--no-camera", "--json", "--config", cfg, data_dir=data)
    assert json.loads(st.stdout.strip().splitlines()[-1])["checks"]["site"] is False
    head.write_bytes(good)

    # one command reverts it; the config still loads and the next session has no profile
    rv = wbc("adapt", "--revert", "--config", cfg, data_dir=data, check_rc=0)
    assert json.loads(rv.stdout.strip().splitlines()[-1])["reverted"] is True
    assert "site" not in cfg.read_text() and "detect_threshold = 0.35" in cfg.read_text()
    wbc("run", "--source", frames, "--headless", "--config", cfg, data_dir=data, check_rc=0)
    with sqlite3.connect(data / "wbc.sqlite3") as db:
        cal = json.loads(db.execute("SELECT calibration FROM sessions ORDER BY started_at DESC").fetchone()[0])
    assert cal["site_profile"] is None


@pytest.mark.slow
def test_profile_for_another_model_version_is_refused(tmp_path, fp32_config):
    data = tmp_path / "data"
    rows = [r for r in pbc_crops() if r[1] in ("basophil", "eosinophil")]
    prof = tmp_path / "p"
    wbc("adapt", "--labels", write_csv(tmp_path / "l.csv", rows), "--out", prof, "--config", fp32_config,
        data_dir=data, check_rc=0)
    record = json.loads((prof / "profile.json").read_text())
    record["model"]["version"] = "0.9.0"
    (prof / "profile.json").write_text(json.dumps(record))
    r = wbc("classify", "--json", "--site", prof, str(rows[0][0]), data_dir=data)
    assert r.returncode == 2
    assert "fitted for model" in r.stderr and "0.9.0" in r.stderr and "refused" in r.stderr
    assert r.stdout == ""


@pytest.mark.slow
def test_worse_profile_is_refused(tmp_path, fp32_config):
    """Cells labelled wrongly (every neutrophil called a lymphocyte and back) make a head that is worse than the
    network on correctly labelled held-back cells: refused, exit 1, nothing written, and the message says so."""
    crops = pbc_crops()
    swap = {"neutrophil": "lymphocyte", "lymphocyte": "neutrophil"}
    fit = [(f, swap.get(c, c)) for f, c in crops[::2]]
    held = [(f, c) for f, c in crops[1::2] if c in swap]
    r = wbc("adapt", "--labels", write_csv(tmp_path / "fit.csv", fit), "--held-back",
            write_csv(tmp_path / "held.csv", held), "--out", tmp_path / "p", "--config", fp32_config,
            data_dir=tmp_path / "data")
    assert r.returncode == 1, r.stderr
    assert "worse than the shipped model" in r.stderr and "nothing was written" in r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["profile"] is None and out["held_back"]["after"] < out["held_back"]["before"]
    assert not (tmp_path / "p").exists()


@pytest.mark.slow
def test_adapt_from_store_reads_the_kiosks_verified_cells(tmp_path, fp32_config):
    """Cells the kiosk stored and a person verified are a profile's input (crops as the kiosk saved them)."""
    from edge_app.store import Store

    data = tmp_path / "data"
    crops = [r for r in pbc_crops() if r[1] in ("basophil", "eosinophil", "neutrophil")]
    with Store(data) as store:
        sid = store.open_session(target=100, sample_id="S-1", operator="tech", device="k1", model_version="1.8.0",
                                 backend="tflite", wbc_count=None)
        for f, label in crops:
            bgr = cv2.imread(str(f))
            ok, jpeg = cv2.imencode(".jpg", cv2.resize(bgr, (96, 96), interpolation=cv2.INTER_AREA))
            # the network said "other"; the technician corrected it at the kiosk (the kiosk's own path)
            cell = store.add_cell(sid, label="other", probs={}, confidence=0.5, box=[0, 0, 10, 10],
                                  crop_jpeg=jpeg.tobytes())
            store.reclassify(sid, cell, label, "tech")
    r = wbc("adapt", "--from-store", "--out", tmp_path / "p", "--config", fp32_config, data_dir=data, check_rc=0)
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["cells"]["basophil"] == 20 and out["cells"]["neutrophil"] == 20 and out["cells"]["lymphocyte"] == 0
    assert out["cells"]["other"] == 0
    assert json.loads((tmp_path / "p" / "profile.json").read_text())["verified_by"] == {"tech": 60}


def test_results_carry_the_site_profile_as_device_calibration(tmp_path):
    """A finalised result's payload names the profile (its session's calibration): the FHIR Observations say it
    in their method and a site-profile component, and the bundle is still valid R4; without one, neither."""
    pytest.importorskip("fhir.resources")
    from edge_app.store import Store
    from edge_app.sync.fhir_bundle import build_bundle
    from edge_app.sync.payload import ResultPayload
    from tests.sync_fixtures import IDENT_SYSTEM, finalised_session

    with Store(tmp_path / "data") as store:
        sid, rid = finalised_session(store)
        payload = store.result(sid)
    plain = build_bundle(ResultPayload.parse(rid, payload), IDENT_SYSTEM)
    payload["device_calibration"] = {"box_scale": 1.0, "site_profile": "Ward 3 scope",
                                     "site_profile_sha256": "ab" * 32}
    result = ResultPayload.parse(rid, payload)
    assert result.site_profile == f"Ward 3 scope (sha256 {'ab' * 6})"
    bundle = build_bundle(result, IDENT_SYSTEM)
    obs = [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Observation"]
    assert obs and all("site profile Ward 3 scope" in o["method"]["text"] for o in obs)
    assert all(any(c["code"]["coding"][0]["code"] == "site-profile" and c["valueString"] == result.site_profile
                   for c in o["component"]) for o in obs)
    plain_obs = [e["resource"] for e in plain["entry"] if e["resource"]["resourceType"] == "Observation"]
    assert not any(c["code"]["coding"][0]["code"] == "site-profile" for o in plain_obs for c in o["component"])
    from fhir.resources.R4B.bundle import Bundle
    Bundle.model_validate(bundle)


def test_hud_shows_the_profile_name():
    """The top bar names the profile in force (amber text where the bar is otherwise empty); none, nothing."""
    from edge_app.counting.tally import Tally
    from edge_app.display.hud import AMBER, TOP, HudInfo, render_hud

    class _Pipe:
        tally = Tally(target=100)

        def review_strip(self, n):
            return []

    plain = render_hud(None, _Pipe(), HudInfo(fps=30.0, backend="tflite", session="abcdef12"))
    sited = render_hud(None, _Pipe(), HudInfo(fps=30.0, backend="tflite", session="abcdef12", site="Ward 3"))
    bar = (slice(0, TOP - 4), slice(420, 700))
    amber = lambda img: int((np.abs(img[bar].astype(int) - np.array(AMBER)).sum(axis=2) < 40).sum())  # noqa: E731
    assert amber(plain) == 0 and amber(sited) > 50
    assert np.array_equal(plain[TOP:], sited[TOP:])
