"""The review page (``wbc-counter serve``): a Starlette app, server-rendered HTML and one plain JS file.

Pages: ``/`` (counts to review), ``/review/SESSION?group=CLASS`` (one class's
cells, the live differential, sign-off and re-open forms), ``/login``. JSON:
``/api/review/SESSION`` (the live differential), ``POST .../label`` and
``POST .../confirm``. Everything but ``/login`` and the static JS/CSS needs a
login (see ``edge_app.review.auth``); every POST needs the session's CSRF token.
Nothing is loaded from elsewhere: the kiosk is offline, and the
Content-Security-Policy allows this origin only.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Optional
from urllib.parse import parse_qs, quote

import cv2
import numpy as np
from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from edge_app.labels import CLASS_COLOURS_BGR, CLASSES, FIVE_PART, NOT_LEUKOCYTE, REVIEW_LABELS
from edge_app.review import signoff
from edge_app.review.auth import COOKIE, Sessions, Users, csrf_ok, is_loopback, valid_name
from edge_app.review.model import GROUP_TITLES, KEYS, ReviewModel
from edge_app.store import review as store_review
from edge_app.store.db import Store, StoreError
from edge_app.store.review import ReviewError

logger = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"
LOOPBACK_NAMES = ["127.0.0.1", "localhost", "::1", "[::1]"]
_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self'; script-src 'self'; style-src 'self'; "
                               "frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def _hex(label: str) -> str:
    b, g, r = CLASS_COLOURS_BGR.get(label, (40, 40, 40))
    return f"#{r:02x}{g:02x}{b:02x}"


class _Headers(BaseHTTPMiddleware):
    async def dispatch(self, request, call_next):
        response = await call_next(request)
        for k, v in _HEADERS.items():
            response.headers.setdefault(k, v)
        return response


class ReviewApp:
    """State of one server: the store, the login rule and the sessions."""

    def __init__(self, data_dir: Path, *, require_token: bool, cfg=None):
        self.data_dir = Path(data_dir)
        self.store = Store(self.data_dir)
        self.users = Users(_users_path(self.data_dir))
        self.require_token = require_token
        self.sessions = Sessions()
        self.cfg = cfg
        self._bundle = None
        self._bundle_failed: Optional[str] = None
        self._lock = asyncio.Lock()  # one change at a time: the sign-off checks see a still database
        self.env = Environment(loader=PackageLoader("edge_app.review", "templates"),
                               autoescape=select_autoescape(["html"]))
        self.env.globals.update(colour=_hex, titles=GROUP_TITLES, five=FIVE_PART, classes=CLASSES,
                                labels=REVIEW_LABELS, keys=KEYS, x=NOT_LEUKOCYTE)

    # -- helpers --------------------------------------------------------------
    def session(self, request: Request):
        return self.sessions.get(request.cookies.get(COOKIE))

    def user(self, request: Request) -> Optional[str]:
        s = self.session(request)
        return s.user if s is not None else None

    def source(self, request: Request) -> str:
        host = request.client.host if request.client else ""
        return "review" if is_loopback(host) else "remote"

    def page(self, name: str, **ctx) -> HTMLResponse:
        return HTMLResponse(self.env.get_template(name).render(**ctx))

    @staticmethod
    def cookie(response: Response, sid: str) -> Response:
        response.set_cookie(COOKIE, sid, httponly=True, samesite="strict", path="/")
        return response

    def login_redirect(self, request: Request) -> Response:
        target = request.url.path + (("?" + request.url.query) if request.url.query else "")
        return RedirectResponse("/login?next=" + quote(target, safe=""), status_code=303)

    async def form(self, request: Request) -> dict:
        body = (await request.body()).decode("utf-8", errors="replace")
        return {k: v[0] for k, v in parse_qs(body, keep_blank_values=True).items()}

    def check_csrf(self, request: Request, sent: Optional[str]) -> bool:
        return csrf_ok(self.session(request), sent or request.headers.get("x-csrf-token"))

    # -- login ----------------------------------------------------------------
    async def login_page(self, request: Request, error: str = "", status: int = 200) -> Response:
        s = self.session(request) or self.sessions.new()
        nxt = request.query_params.get("next", "/")
        resp = self.page("login.html", csrf=s.csrf, error=error, token=self.require_token,
                         next=nxt if nxt.startswith("/") and not nxt.startswith("//") else "/")
        resp.status_code = status
        return self.cookie(resp, s.id)

    async def login(self, request: Request) -> Response:
        f = await self.form(request)
        if not self.check_csrf(request, f.get("csrf")):
            return PlainTextResponse("login form expired: reload the page", status_code=403)
        name = (f.get("user") or "").strip()
        if not valid_name(name):
            return await self.login_page(request, "Enter your name (letters, digits, ._@- and spaces).", 400)
        if self.require_token and not self.users.check(name, f.get("token", "")):
            logger.warning("review login refused (client %s)", request.client.host if request.client else "?")
            return await self.login_page(request, "Name or token not recognised.", 403)
        self.sessions.drop(request.cookies.get(COOKIE))  # a new id at login: no session fixation
        s = self.sessions.new()
        s.user = name
        nxt = f.get("next") or "/"
        nxt = nxt if nxt.startswith("/") and not nxt.startswith("//") else "/"
        return self.cookie(RedirectResponse(nxt, status_code=303), s.id)

    async def logout(self, request: Request) -> Response:
        f = await self.form(request)
        if not self.check_csrf(request, f.get("csrf")):
            return PlainTextResponse("forbidden", status_code=403)
        self.sessions.drop(request.cookies.get(COOKIE))
        return RedirectResponse("/login", status_code=303)

    # -- pages ----------------------------------------------------------------
    async def index(self, request: Request) -> Response:
        if not self.user(request):
            return self.login_redirect(request)
        rows = self.store.conn.execute(
            "SELECT s.id, s.sample_id, s.operator, s.started_at, s.status FROM sessions s"
            " JOIN results r ON r.session_id = s.id ORDER BY s.started_at DESC LIMIT 200").fetchall()
        items = [(dict(r), store_review.state(self.store, r["id"])) for r in rows]
        return self.page("index.html", items=items, user=self.user(request), csrf=self.session(request).csrf)

    def _model(self, sid: str) -> ReviewModel:
        return ReviewModel(self.store, sid)

    async def review(self, request: Request) -> Response:
        if not self.user(request):
            return self.login_redirect(request)
        try:
            m = self._model(request.path_params["sid"])
        except StoreError as exc:
            return PlainTextResponse(str(exc), status_code=404)
        if m.result is None:
            return PlainTextResponse(f"session {m.session_id[:8]} has no result yet: finish the count first",
                                     status_code=409)
        group = request.query_params.get("group") or m.first_group()
        if group not in REVIEW_LABELS:
            group = m.first_group()
        nxt = m.next_group(group)
        return self.page("review.html", m=m, group=group, cells=m.group(group), groups=m.groups(),
                         summary=m.summary(), next_group=nxt, user=self.user(request),
                         csrf=self.session(request).csrf, versions=store_review.versions(self.store, m.session_id),
                         attention=self.attention_available(), message=request.query_params.get("msg", ""),
                         result_state=signoff.result_state(self.store, m.session_id))

    async def summary(self, request: Request) -> Response:
        if not self.user(request):
            return JSONResponse({"error": "log in first"}, status_code=401)
        try:
            return JSONResponse(self._model(request.path_params["sid"]).summary())
        except StoreError as exc:
            return JSONResponse({"error": str(exc)}, status_code=404)

    async def _json_change(self, request: Request, action) -> Response:
        user = self.user(request)
        if not user:
            return JSONResponse({"error": "log in first"}, status_code=401)
        if not self.check_csrf(request, None):
            return JSONResponse({"error": "missing or wrong CSRF token: reload the page"}, status_code=403)
        try:
            body = json.loads(await request.body() or b"{}")
            if not isinstance(body, dict):
                raise ValueError("not an object")
        except ValueError:
            return JSONResponse({"error": "the request body must be a JSON object"}, status_code=400)
        async with self._lock:
            try:
                sid = self.store.session(request.path_params["sid"])["id"]
                extra = action(sid, body, user, self.source(request))
                return JSONResponse({**self._model(sid).summary(), **extra})
            except (ReviewError, StoreError) as exc:
                return JSONResponse({"error": str(exc)}, status_code=409)
            except (KeyError, TypeError, ValueError) as exc:
                return JSONResponse({"error": f"bad request: {exc}"}, status_code=400)

    async def label(self, request: Request) -> Response:
        def act(sid, body, user, source):
            frm, to = store_review.set_label(self.store, sid, int(body["cell_id"]), str(body["label"]), user, source)
            return {"cell": {"id": int(body["cell_id"]), "from": frm, "label": to}}
        return await self._json_change(request, act)

    async def confirm(self, request: Request) -> Response:
        def act(sid, body, user, source):
            ids = [int(i) for i in body["cell_ids"]]
            return {"confirmed": store_review.confirm(self.store, sid, ids, user, source)}
        return await self._json_change(request, act)

    async def _form_change(self, request: Request, action) -> Response:
        user = self.user(request)
        if not user:
            return self.login_redirect(request)
        f = await self.form(request)
        if not self.check_csrf(request, f.get("csrf")):
            return PlainTextResponse("missing or wrong CSRF token: reload the page", status_code=403)
        sid = request.path_params["sid"]
        async with self._lock:
            try:
                sid = self.store.session(sid)["id"]
                msg = action(sid, f, user)
            except (ReviewError, StoreError) as exc:
                msg = str(exc)
        return RedirectResponse(f"/review/{sid}?msg={quote(msg)}", status_code=303)

    async def sign(self, request: Request) -> Response:
        def act(sid, f, user):
            p = signoff.sign(self.store, sid, user, f.get("reason") or None,
                             incomplete_ok=f.get("incomplete") == "yes")
            return f"signed by {user} (version {p['version']})"
        return await self._form_change(request, act)

    async def reopen(self, request: Request) -> Response:
        def act(sid, f, user):
            v = signoff.reopen(self.store, sid, user, f.get("reason", ""))
            return f"re-opened as version {v}: change the cells, then sign again"
        return await self._form_change(request, act)

    # -- images -----------------------------------------------------------------
    def _crop(self, request: Request) -> Optional[bytes]:
        row = self.store.conn.execute("SELECT crop FROM cells WHERE id=? AND session_id=?",
                                      (int(request.path_params["cell"]), request.path_params["sid"])).fetchone()
        return bytes(row["crop"]) if row is not None and row["crop"] is not None else None

    async def crop(self, request: Request) -> Response:
        if not self.user(request):
            return PlainTextResponse("log in first", status_code=401)
        jpeg = self._crop(request)
        return Response(jpeg, media_type="image/jpeg") if jpeg else PlainTextResponse("no crop", status_code=404)

    def attention_available(self) -> bool:
        return self.cfg is not None and self._bundle_failed is None

    def _classifier(self):
        if self._bundle is None and self._bundle_failed is None:
            try:
                from edge_app.model.bundle import ModelBundle
                self._bundle = ModelBundle.from_config(self.cfg, self.data_dir)
            except Exception as exc:  # no model here: the page simply offers no attention maps
                self._bundle_failed = str(exc)
                logger.warning("attention maps unavailable: %s", exc)
        return self._bundle.classifier if self._bundle is not None else None

    async def attention(self, request: Request) -> Response:
        """The classifier's attention on the stored crop, computed on demand (maps are not stored)."""
        if not self.user(request):
            return PlainTextResponse("log in first", status_code=401)
        jpeg = self._crop(request)
        classifier = self._classifier() if jpeg and self.cfg is not None else None
        if classifier is None:
            return PlainTextResponse("no attention map available", status_code=404)
        bgr = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
        if bgr is None:
            return PlainTextResponse("crop cannot be decoded", status_code=404)
        async with self._lock:
            att = classifier(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)).attention
        if att is None:
            return PlainTextResponse("this model has no attention output", status_code=404)
        return Response(attention_png(bgr, att), media_type="image/png")

    # -- the app ------------------------------------------------------------------
    def asgi(self) -> Starlette:
        routes = [
            Route("/", self.index),
            Route("/login", self.login_page, methods=["GET"]),
            Route("/login", self.login, methods=["POST"]),
            Route("/logout", self.logout, methods=["POST"]),
            Route("/review/{sid}", self.review, methods=["GET"]),
            Route("/review/{sid}/sign", self.sign, methods=["POST"]),
            Route("/review/{sid}/reopen", self.reopen, methods=["POST"]),
            Route("/api/review/{sid}", self.summary, methods=["GET"]),
            Route("/api/review/{sid}/label", self.label, methods=["POST"]),
            Route("/api/review/{sid}/confirm", self.confirm, methods=["POST"]),
            Route("/crop/{sid}/{cell:int}.jpg", self.crop),
            Route("/attention/{sid}/{cell:int}.png", self.attention),
            Mount("/static", app=StaticFiles(directory=STATIC), name="static"),
        ]
        middleware = [Middleware(_Headers)]
        if not self.require_token:
            # Served on loopback, where a name is the whole login: a web page elsewhere that
            # points its own host name at 127.0.0.1 (DNS rebinding) must not reach it.
            middleware.insert(0, Middleware(TrustedHostMiddleware, allowed_hosts=LOOPBACK_NAMES, www_redirect=False))
        return Starlette(routes=routes, middleware=middleware)


def attention_png(crop_bgr: np.ndarray, attention: np.ndarray, side: int = 192) -> bytes:
    """The crop with the attention map laid over it (jet colours, half transparent)."""
    crop = cv2.resize(crop_bgr, (side, side), interpolation=cv2.INTER_LINEAR)
    a = np.asarray(attention, dtype=np.float32)
    a = (a - a.min()) / (a.max() - a.min() + 1e-6)
    heat = cv2.applyColorMap((cv2.resize(a, (side, side)) * 255).astype(np.uint8), cv2.COLORMAP_JET)
    ok, buf = cv2.imencode(".png", cv2.addWeighted(crop, 0.55, heat, 0.45, 0))
    return buf.tobytes() if ok else b""


def _users_path(data_dir: Path) -> Path:
    from edge_app import paths
    return paths.review_users_path(data_dir)
