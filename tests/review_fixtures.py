"""Helpers of the review tests: a real ``wbc-counter serve`` subprocess and an HTTP client
that keeps cookies and never goes through a proxy (requests to this machine's LAN address
must reach the server itself)."""

from __future__ import annotations

import http.cookiejar
import json
import re
import select
import socket
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


class Served:
    def __init__(self, proc, url):
        self.proc, self.url = proc, url.rstrip("/")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def serve(data_dir, host: str = "127.0.0.1", *extra) -> Served:
    """Start ``wbc-counter serve --port 0`` and wait for its "review page: URL" line."""
    proc = subprocess.Popen([sys.executable, "-m", "edge_app", "serve", "--data-dir", str(data_dir), "--host", host,
                             "--port", "0", *map(str, extra)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    ready, _, _ = select.select([proc.stdout], [], [], 90)
    line = proc.stdout.readline() if ready else ""
    m = re.search(r"review page: (http://\S+)", line)
    if not m:
        proc.kill()
        raise RuntimeError(f"serve did not start: {line!r} {proc.stderr.read()[-2000:]}")
    return Served(proc, m.group(1))


def lan_ip() -> str | None:
    """An IPv4 address of this machine that is not loopback (eth0's), or None."""
    try:
        out = subprocess.run(["ip", "-4", "-o", "addr", "show", "scope", "global"], capture_output=True,
                             text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        out = ""
    for addr in re.findall(r"inet (\d+\.\d+\.\d+\.\d+)/", out):
        if not addr.startswith("127."):
            return addr
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the outgoing interface
            addr = s.getsockname()[0]
        return None if addr.startswith("127.") else addr
    except OSError:
        return None


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *a, **kw):
        return None


class Client:
    """Cookies kept, no proxy, redirects not followed (so a login redirect is seen as one)."""

    def __init__(self, base: str):
        self.base = base.rstrip("/")
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect(),
                                                  urllib.request.HTTPCookieProcessor(self.jar))

    def request(self, path: str, data: bytes | None = None, headers: dict | None = None):
        """(status, headers, body text)."""
        req = urllib.request.Request(self.base + path, data=data, headers=headers or {})
        try:
            with self.opener.open(req, timeout=60) as r:
                return r.status, r.headers, r.read().decode("utf-8", errors="replace")
        except urllib.error.HTTPError as e:
            return e.code, e.headers, e.read().decode("utf-8", errors="replace")

    def get(self, path: str):
        return self.request(path)

    def form(self, path: str, fields: dict):
        return self.request(path, urllib.parse.urlencode(fields).encode(),
                            {"Content-Type": "application/x-www-form-urlencoded"})

    def post_json(self, path: str, body: dict, csrf: str | None):
        headers = {"Content-Type": "application/json"}
        if csrf is not None:
            headers["X-CSRF-Token"] = csrf
        return self.request(path, json.dumps(body).encode(), headers)

    def login(self, user: str, token: str | None = None):
        status, _, html = self.get("/login")
        assert status == 200, status
        csrf = re.search(r'name="csrf" value="([^"]+)"', html).group(1)
        fields = {"csrf": csrf, "user": user, "next": "/"}
        if token is not None:
            fields["token"] = token
        return self.form("/login", fields)


def page_csrf(html: str) -> str:
    return re.search(r'<meta name="csrf" content="([^"]+)"', html).group(1)
