"""``wbc-counter report``: text result, one-page PNG and HTML with the crop gallery, from a real loop."""

from __future__ import annotations

import re
import subprocess
import sys

import cv2
import numpy as np
import pytest

from edge_app.capture import open_source  # noqa: E402
from edge_app.config import load_config  # noqa: E402
from edge_app.labels import FIVE_PART  # noqa: E402
from edge_app.session.runner import LiveRun  # noqa: E402
from edge_app.store import Store  # noqa: E402
from tests.kiosk_fixtures import ROOT, FakeBundle, build_synthetic_pan  # noqa: E402


def cli(*args):
    return subprocess.run([sys.executable, "-m", "edge_app", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=300)


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    pan = build_synthetic_pan(tmp)
    data = tmp / "data"
    res = LiveRun(cfg=load_config(None), bundle=FakeBundle(), source=open_source(str(pan["video"])),
                  store=Store(data), target=1000).run()
    with Store(data) as store:
        first = store.cells(res.session_id)[0]["id"]
        store.reclassify(res.session_id, first, "monocyte", "tech-a")
    return data, res


@pytest.mark.slow
def test_report_prints_result_and_writes_png_and_html(tmp_path, session):
    data, res = session
    r = cli("report", res.session_id[:10], "--out", str(tmp_path), "--data-dir", str(data))
    assert r.returncode == 0, r.stderr
    for k in FIVE_PART:
        assert re.search(rf"^{k}\s+{res.payload['counts'][k]}\s", r.stdout, re.M), k
    png = next(tmp_path.glob("report-*.png"))
    page = cv2.imread(str(png))
    assert page.shape == (1754, 1240, 3)
    assert (page < 250).mean() > 0.03  # not a blank page: text, bars and crops
    html = next(tmp_path.glob("report-*.html")).read_text()
    n_crops = html.count("data:image/jpeg;base64,")
    assert n_crops == min(res.payload["total"] + res.payload["other"], 16 * 6)
    assert "reclassify" in html and "tech-a" in html and "wilson" in html


def test_gallery_crops_decode_to_real_cells(tmp_path, session):
    data, res = session
    with Store(data) as store:
        rows = store.cells(res.session_id)
    img = cv2.imdecode(np.frombuffer(rows[0]["crop"], np.uint8), cv2.IMREAD_COLOR)
    centre = img[img.shape[0] // 2, img.shape[1] // 2].astype(int)
    assert centre[1] < 90  # the dark leukocyte sits in the middle of its crop


def test_open_session_is_preliminary(tmp_path):
    store = Store(tmp_path / "d")
    sid = store.open_session(target=100)
    store.add_cell(sid, label="neutrophil", confidence=0.9)
    store.close()
    r = cli("report", sid, "--out", str(tmp_path / "out"), "--data-dir", str(tmp_path / "d"))
    assert r.returncode == 0 and "PRELIMINARY" in r.stdout


def test_an_open_session_uses_the_configured_interval(tmp_path):
    store = Store(tmp_path / "d")
    sid = store.open_session(target=100)
    for _ in range(3):
        store.add_cell(sid, label="neutrophil", confidence=0.9)
    store.close()
    cfg = tmp_path / "c.toml"
    cfg.write_text('[tally]\nci_method = "clopper-pearson"\n')
    r = cli("report", sid, "--out", str(tmp_path / "out"), "--data-dir", str(tmp_path / "d"), "--config", str(cfg))
    assert r.returncode == 0, r.stderr
    assert "95% CI (clopper-pearson)" in r.stdout  # as the kiosk's screen shows it


def test_unknown_session_and_missing_db_are_clear(tmp_path):
    r = cli("report", "nope", "--data-dir", str(tmp_path / "empty"))
    assert r.returncode == 2 and "no database" in r.stderr and "Traceback" not in r.stderr
    Store(tmp_path / "d").close()
    r = cli("report", "nope", "--data-dir", str(tmp_path / "d"))
    assert r.returncode == 2 and "no session" in r.stderr and "Traceback" not in r.stderr
