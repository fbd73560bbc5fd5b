"""``wbc-counter serve`` as a real server (uvicorn subprocess): logins, CSRF, cookies, and
nothing served to another host without a per-user login (requests to this machine's LAN address)."""

from __future__ import annotations

import re
import stat
import subprocess
import sys

import pytest

from edge_app.store import review as store_review
from edge_app.store.db import Store
from tests.review_fixtures import ROOT, Client, lan_ip, page_csrf, serve
from tests.sync_fixtures import finalised_session

SECRET_SAMPLE = "S-PRIVATE-3141"


@pytest.fixture
def count(tmp_path):
    store = Store(tmp_path / "data")
    sid, _ = finalised_session(store, sample_id=SECRET_SAMPLE, crops=20, signed_by=None,
                               counts={"neutrophil": 12, "lymphocyte": 6, "monocyte": 2, "eosinophil": 0,
                                       "basophil": 0})
    yield store, sid
    store.close()


def _cell_ids(html: str) -> list[int]:
    return [int(i) for i in re.findall(r'data-id="(\d+)"', html)]


def test_loopback_login_csrf_cookies_and_no_outside_resources(count, tmp_path):
    store, sid = count
    srv = serve(tmp_path / "data")
    try:
        c = Client(srv.url)
        status, headers, body = c.get(f"/review/{sid}")
        assert status == 303 and headers["location"].startswith("/login") and SECRET_SAMPLE not in body
        assert c.get(f"/api/review/{sid}")[0] == 401
        assert c.get("/static/review.js")[0] == 200  # code only, no result data
        # a page elsewhere whose host name resolves to 127.0.0.1 (DNS rebinding) gets nothing
        status, _, body = c.request("/login", headers={"Host": "attacker.example"})
        assert status == 400 and "csrf" not in body

        status, headers, _ = c.login("dr.local")
        assert status == 303
        cookie = headers["set-cookie"]
        assert "HttpOnly" in cookie and "samesite=strict" in cookie.lower() and "Path=/" in cookie

        status, headers, html = c.get(f"/review/{sid}")
        assert status == 200 and SECRET_SAMPLE in html
        csp = headers["content-security-policy"]
        assert "default-src 'self'" in csp and "script-src 'self'" in csp and "http" not in csp
        assert headers["x-frame-options"] == "DENY"
        # nothing is loaded from elsewhere: no absolute URLs in the page, its script or its style
        for path in ("/static/review.js", "/static/review.css"):
            html += c.get(path)[2]
        assert not re.search(r"(src|href)=\"(https?:)?//", html) and "https://" not in html
        assert "<script>" not in html  # no inline script (the CSP forbids it anyway)

        cell = _cell_ids(html)[0]
        csrf = page_csrf(html)
        assert c.post_json(f"/api/review/{sid}/label", {"cell_id": cell, "label": "basophil"}, None)[0] == 403
        assert c.post_json(f"/api/review/{sid}/label", {"cell_id": cell, "label": "basophil"}, "forged")[0] == 403
        assert store_review.reviews(store, sid) == []
        status, _, body = c.post_json(f"/api/review/{sid}/label", {"cell_id": cell, "label": "basophil"}, csrf)
        assert status == 200, body
        rows = [dict(r) for r in store_review.reviews(store, sid)]
        assert [(r["cell_id"], r["to_label"], r["user"], r["source"]) for r in rows] == [
            (cell, "basophil", "dr.local", "review")]

        # a form post without the token changes nothing
        status, _, _ = c.form(f"/review/{sid}/sign", {"reason": ""})
        assert status == 403 and not store_review.state(store, sid).signed
        status, headers, _ = c.form(f"/review/{sid}/sign", {"csrf": csrf})
        assert status == 303 and store_review.state(store, sid).signed_by == "dr.local"

        # a second client without the cookie sees nothing, and a cookie of its own does not help
        other = Client(srv.url)
        other.get("/login")
        assert other.post_json(f"/api/review/{sid}/label", {"cell_id": cell, "label": "other"}, csrf)[0] == 401
    finally:
        srv.stop()


def test_lan_needs_per_user_tokens_and_serves_nothing_without_login(count, tmp_path):
    store, sid = count
    data = tmp_path / "data"
    ip = lan_ip()
    if ip is None:
        pytest.skip("this machine has no non-loopback IPv4 address")
    refused = subprocess.run([sys.executable, "-m", "edge_app", "serve", "--data-dir", str(data), "--host", "0.0.0.0",
                              "--port", "0"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "per-user logins" in refused.stderr and "--add-user" in refused.stderr
    assert "Traceback" not in refused.stderr

    made = subprocess.run([sys.executable, "-m", "edge_app", "serve", "--data-dir", str(data), "--add-user",
                           "dr.lan"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip().splitlines()[-1]
    users = data / "review_users"
    assert stat.S_IMODE(users.stat().st_mode) == 0o600 and token not in users.read_text()

    srv = serve(data, "0.0.0.0")
    try:
        port = srv.url.rsplit(":", 1)[1]
        lan = Client(f"http://{ip}:{port}")
        cell = store.cells(sid)[0]["id"]
        for path in ("/", f"/review/{sid}", f"/api/review/{sid}", f"/crop/{sid}/{cell}.jpg",
                     f"/attention/{sid}/{cell}.png"):
            status, headers, body = lan.get(path)
            assert status in (303, 401), (path, status)
            assert SECRET_SAMPLE not in body and "neutrophil" not in body, path
        assert lan.post_json(f"/api/review/{sid}/label", {"cell_id": cell, "label": "other"}, None)[0] == 401
        # the login page asks for the token; a name alone, or a wrong token, is refused
        status, _, html = lan.get("/login")
        assert status == 200 and 'name="token"' in html and SECRET_SAMPLE not in html
        assert lan.login("dr.lan")[0] == 403
        assert lan.login("dr.lan", "not-the-token")[0] == 403
        assert lan.login("dr.nobody", token)[0] == 403
        assert lan.get(f"/review/{sid}")[0] == 303

        status, _, _ = lan.login("dr.lan", token)
        assert status == 303
        status, _, html = lan.get(f"/review/{sid}")
        assert status == 200 and SECRET_SAMPLE in html
        status, _, body = lan.post_json(f"/api/review/{sid}/label", {"cell_id": cell, "label": "other"},
                                        page_csrf(html))
        assert status == 200, body
        row = dict(store_review.reviews(store, sid)[-1])
        assert (row["user"], row["source"]) == ("dr.lan", "remote")
    finally:
        srv.stop()


def test_serve_errors_are_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "edge_app", "serve", "--data-dir", str(tmp_path / "none")],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "no database" in r.stderr and "Traceback" not in r.stderr
