"""The review page in a real headless browser (Debian chromium + chromium-driver, selenium), on a
count made by a real ``wbc-counter run`` of the shipped sample, delivered to the real FHIR engine.

Keyboard only: log in, reclassify three cells, confirm the page, sign; the audit rows are in
SQLite and ``sync`` delivers the report once, ``final``, with the corrected percentages. Then
amend it (re-open with a reason, one more change, sign): one DiagnosticReport, a new version,
``amended``. An unsigned count in the same store is not sent.

Set ``WBC_REVIEW_SCREENSHOT=PATH`` to keep the screenshot of the review page (the README's).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edge_app.labels import CLASSES, FIVE_PART
from edge_app.store import review as store_review
from edge_app.store.db import Store
from tests.review_fixtures import ROOT, serve
from tests.sync_fixtures import (
    IDENT_SYSTEM,
    finalised_session,
    outbox_rows,
    run_cli,
    running_fhir_server,
    summary_line,
    write_config,
    write_token,
)

pytestmark = [pytest.mark.browser, pytest.mark.slow]

SAMPLE = ROOT / "samples" / "slide_pan_train.mp4"
CHROMEDRIVER = "/usr/bin/chromedriver"
USER = "dr.browser"


def _browser(profile: Path):
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None or not Path(CHROMEDRIVER).exists():
        msg = "Debian chromium + chromium-driver not installed: apt-get install -y chromium chromium-driver"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run", "--no-proxy-server",
                "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1400,1000"):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)


@pytest.fixture(scope="module")
def real_count(tmp_path_factory):
    """A count by the real counter on the shipped sample (CPU, TFLite): cells with real crops."""
    if not SAMPLE.is_file():
        pytest.skip(f"{SAMPLE} missing")
    data = tmp_path_factory.mktemp("review") / "data"
    r = subprocess.run([sys.executable, "-m", "edge_app", "run", "--source", str(SAMPLE), "--headless",
                        "--sample-id", "S-REVIEW-1", "--data-dir", str(data)],
                       cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    with Store(data) as store:
        sid = store.conn.execute("SELECT id FROM sessions WHERE status='finalised'").fetchone()[0]
    return data, sid


@pytest.fixture
def fhir_server(tmp_path):
    yield from running_fhir_server(tmp_path)


def _wait(driver, cond, timeout=30, what="the page"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if cond(driver):
                return
        except Exception:  # the page is being replaced
            pass
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}: {driver.current_url}")


def _keys(driver, *keys):
    from selenium.webdriver.common.action_chains import ActionChains
    chain = ActionChains(driver)
    for k in keys:
        chain.send_keys(k)
    chain.perform()


def _sync(tmp_path, data, url, capsys):
    token = tmp_path / "token"
    if not token.exists():
        write_token(token)
    cfg = write_config(tmp_path / "config.toml", "[sync]\nbase_backoff_s = 0.001\nmax_backoff_s = 0.002\n"
                                                 "[fhir]\ntimeout_s = 60.0\n")
    return run_cli(["sync", "--data-dir", data, "--config", cfg, "--fhir", url, "--token-file", token], capsys)


def _observations(server, rid):
    out = {}
    for cls in FIVE_PART:
        from edge_app.sync.loinc import PERCENT_CODES
        found = server.search("Observation", identifier=f"{IDENT_SYSTEM}|{rid}-{PERCENT_CODES[cls][0]}")
        assert len(found) == 1, (cls, len(found))
        out[cls] = found[0]
    return out


def test_review_sign_deliver_and_amend_in_a_real_browser(real_count, fhir_server, tmp_path, capsys):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    src, sid = real_count
    data = tmp_path / "data"
    shutil.copytree(src, data)
    store = Store(data)
    rid = store.conn.execute("SELECT result_id FROM results WHERE session_id=?", (sid,)).fetchone()[0]
    before = store.result(sid)
    unsigned_sid, unsigned_rid = finalised_session(store, sample_id="S-UNSIGNED", signed_by=None)

    # Sign-off required (the default): nothing goes out yet
    rc, out, err = _sync(tmp_path, data, fhir_server.url, capsys)
    assert summary_line(out) == {"delivered": 0, "pending": 2, "failed": 0}
    assert "2 result(s) not sent: not signed off yet" in err
    assert fhir_server.search("DiagnosticReport") == []

    srv = serve(data)
    driver = _browser(tmp_path / "chromium-profile")
    try:
        driver.get(f"{srv.url}/review/{sid}")
        _wait(driver, lambda d: d.find_elements(By.ID, "user"), what="the login page")
        _keys(driver, USER, Keys.ENTER)  # the name field has the focus: keyboard only from here on
        _wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#cells .cell.selected"), what="the gallery")
        group = driver.find_element(By.ID, "review").get_attribute("data-group")
        cells = driver.find_elements(By.CSS_SELECTOR, "#cells .cell")
        assert len(cells) >= 4, f"group {group} has {len(cells)} cells"
        ids = [int(c.get_attribute("data-id")) for c in cells]
        # Three reclassifications by key: 1-6 are CLASSES in order, x is "not a leukocyte".
        # After each one the selection moves on; the arrow skips a cell.
        targets = [c for c in CLASSES if c != group][:2]
        keys = [str(CLASSES.index(targets[0]) + 1), str(CLASSES.index(targets[1]) + 1), Keys.ARROW_RIGHT, "x"]
        expected = {ids[0]: targets[0], ids[1]: targets[1], ids[3]: "x"}
        _keys(driver, *keys)  # typed ahead of the server's answers: each change applies to its own cell
        _wait(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#cells .cell.changed")) == 3,
              what="three changed cells")
        labels = {int(c.get_attribute("data-id")): c.get_attribute("data-label")
                  for c in driver.find_elements(By.CSS_SELECTOR, "#cells .cell")}
        assert {i: labels[i] for i in expected} == expected
        # the live differential on the page is the one the store's cells make now
        live = json.loads(driver.execute_script(
            "return JSON.stringify(Array.from(document.querySelectorAll('#diff tr[id]')).map("
            "r => [r.id.slice(5), Number(r.querySelector('.n').textContent)]))"))
        counts = store.label_counts(sid)
        assert {k: n for k, n in live} == {k: counts.get(k, 0) for k in FIVE_PART}

        shot = tmp_path / "screenshot_review.png"
        driver.save_screenshot(str(shot))
        assert shot.stat().st_size > 20000
        if os.environ.get("WBC_REVIEW_SCREENSHOT"):
            shutil.copyfile(shot, os.environ["WBC_REVIEW_SCREENSHOT"])

        _keys(driver, Keys.ENTER)  # confirm this page: every cell on it, as it now is
        _wait(driver, lambda d: "cells confirmed" in d.find_element(By.ID, "message").text, what="the next page")
        _keys(driver, "s")  # to the sign button
        assert driver.switch_to.active_element.get_attribute("id") == "sign"
        _keys(driver, Keys.ENTER)
        _wait(driver, lambda d: "Signed by dr.browser" in d.find_element(By.ID, "state").text, what="the sign-off")
    finally:
        driver.quit()

    # -- the audit trail in SQLite
    rows = [dict(r) for r in store_review.reviews(store, sid)]
    changes = [r for r in rows if r["from_label"] != r["to_label"] and r["source"] != "kiosk"]
    assert [(r["cell_id"], r["from_label"], r["to_label"], r["user"], r["source"], r["version"]) for r in changes] == [
        (i, group, expected[i], USER, "review", 1) for i in ids[:2] + ids[3:4]]
    confirmed = {r["cell_id"] for r in rows if r["from_label"] == r["to_label"]}
    assert set(ids) <= confirmed  # enter confirmed the whole page
    signed = store.result(sid)
    assert signed["signed_by"] == USER and signed["version"] == 1
    counts = store.label_counts(sid)
    assert signed["counts"] == {k: counts.get(k, 0) for k in FIVE_PART}
    assert signed["counts"] != before["counts"]

    # -- delivered once, final, with the corrected percentages; the unsigned one is held
    rc, out, err = _sync(tmp_path, data, fhir_server.url, capsys)
    assert rc == 0, err
    assert summary_line(out) == {"delivered": 1, "pending": 1, "failed": 0}
    assert "1 result(s) not sent: not signed off yet" in err
    reports = fhir_server.search("DiagnosticReport", identifier=f"{IDENT_SYSTEM}|{rid}")
    assert len(reports) == 1 and len(fhir_server.search("DiagnosticReport")) == 1
    report = reports[0]
    assert report["status"] == "final" and report["resultsInterpreter"] == [{"display": USER}]
    obs = _observations(fhir_server, rid)
    assert {k: o["valueQuantity"]["value"] for k, o in obs.items()} == signed["percent"]
    assert {o["status"] for o in obs.values()} == {"final"}
    rc, out, _ = _sync(tmp_path, data, fhir_server.url, capsys)
    assert summary_line(out) == {"delivered": 0, "pending": 1, "failed": 0}
    assert len(fhir_server.search("DiagnosticReport", identifier=f"{IDENT_SYSTEM}|{rid}")) == 1
    assert fhir_server.search("DiagnosticReport", identifier=f"{IDENT_SYSTEM}|{unsigned_rid}") == []

    # -- amend in the browser: re-open with a reason, one more change, sign
    first_version = report["meta"]["versionId"]
    driver = _browser(tmp_path / "chromium-profile-2")
    try:
        driver.get(f"{srv.url}/review/{sid}?group={group}")
        _wait(driver, lambda d: d.find_elements(By.ID, "user"), what="the login page")
        _keys(driver, USER, Keys.ENTER)
        _wait(driver, lambda d: d.find_elements(By.ID, "reopen-reason"), what="the signed page")
        # a: the classifier's attention on the selected cell, computed from its stored crop
        _keys(driver, "a")
        _wait(driver, lambda d: d.execute_script(
            "var i = document.getElementById('attention-img'); return i.complete && i.naturalWidth;") == 192,
            timeout=120, what="the attention map")
        assert driver.find_element(By.ID, "attention").is_displayed()
        _keys(driver, "a")
        _keys(driver, "r", "second look: one more cell was misread", Keys.ENTER)
        _wait(driver, lambda d: "re-opened" in d.find_element(By.ID, "state").text, what="the re-opened page")
        cell = driver.find_element(By.CSS_SELECTOR, "#cells .cell.selected")
        amended_id = int(cell.get_attribute("data-id"))
        from_label = cell.get_attribute("data-label")
        to_label = next(c for c in FIVE_PART if c != from_label)
        _keys(driver, str(CLASSES.index(to_label) + 1))
        _wait(driver, lambda d: d.find_element(By.ID, f"cell-{amended_id}").get_attribute("data-label") == to_label,
              what="the amendment's change")
        # the mouse works too: click a cell, then a class button
        clicked = driver.find_elements(By.CSS_SELECTOR, "#cells .cell")[1]
        clicked_id = int(clicked.get_attribute("data-id"))
        clicked.click()
        driver.find_element(By.CSS_SELECTOR, '.actions .set[data-label="other"]').click()
        _wait(driver, lambda d: d.find_element(By.ID, f"cell-{clicked_id}").get_attribute("data-label") == "other",
              what="the mouse's change")
        _keys(driver, "s", Keys.ENTER)  # s: to the reason field (filled with the re-open's reason), enter signs
        _wait(driver, lambda d: "Signed by dr.browser" in d.find_element(By.ID, "state").text
              and "version 2" in d.find_element(By.ID, "state").text, what="the amendment's sign-off")
    finally:
        driver.quit()
        srv.stop()

    amended = store.result(sid)
    assert amended["version"] == 2 and amended["amended"] is True
    v2 = [(r["cell_id"], r["to_label"]) for r in store_review.reviews(store, sid) if r["version"] == 2]
    assert v2 == [(amended_id, to_label), (clicked_id, "other")]
    assert amended["amendment_reason"] == "second look: one more cell was misread"
    assert outbox_rows(store)[0]["status"] == "pending"
    rc, out, err = _sync(tmp_path, data, fhir_server.url, capsys)
    assert rc == 0, err
    assert summary_line(out) == {"delivered": 1, "pending": 1, "failed": 0}
    reports = fhir_server.search("DiagnosticReport", identifier=f"{IDENT_SYSTEM}|{rid}")
    assert len(reports) == 1 and len(fhir_server.search("DiagnosticReport")) == 1
    report = reports[0]
    assert report["status"] == "amended" and report["meta"]["versionId"] != first_version
    history = fhir_server.get(f"DiagnosticReport/{report['id']}/_history")
    assert len(history["entry"]) == 2
    assert report["meta"]["tag"][0]["code"] == "2" and "second look" in report["conclusion"]
    obs = _observations(fhir_server, rid)  # still one Observation per class, now amended
    assert {k: o["valueQuantity"]["value"] for k, o in obs.items()} == amended["percent"]
    assert {o["status"] for o in obs.values()} == {"amended"}
    assert amended["percent"] != signed["percent"]
    # once more: nothing new (the amendment went exactly once)
    rc, out, _ = _sync(tmp_path, data, fhir_server.url, capsys)
    assert summary_line(out)["delivered"] == 0
    assert len(fhir_server.get(f"DiagnosticReport/{report['id']}/_history")["entry"]) == 2
    store.close()
