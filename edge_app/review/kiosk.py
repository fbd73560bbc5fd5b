"""The review on the kiosk screen (``wbc-counter review SESSION``): the same gallery, drawn with OpenCV.

One class at a time, least confident first, beside the live differential.
Keys: arrows move, ``1``-``6`` reclassify (``edge_app.labels.CLASSES`` order),
``x`` "not a leukocyte", ``enter`` confirms the page and shows the next class,
``s`` twice signs as the kiosk user, ``q`` / ``Esc`` closes. A signed result is
shown frozen; amendments (re-open with a reason) are made on the review page.
Every change goes through ``edge_app.store.review`` with source ``kiosk``.
"""

from __future__ import annotations

import logging
import time

import cv2
import numpy as np

from edge_app.labels import CLASS_COLOURS_BGR, FIVE_PART, NOT_LEUKOCYTE
from edge_app.review import signoff
from edge_app.review.model import GROUP_TITLES, KEYS, ReviewModel
from edge_app.store import review as store_review
from edge_app.store.review import ReviewError

logger = logging.getLogger(__name__)

W, H = 1280, 720
THUMB, GAP, COLS, ROWS = 96, 10, 8, 5
GRID_X, GRID_Y = 20, 110
PANEL_X = GRID_X + COLS * (THUMB + GAP) + 20
_X_COLOUR = (48, 48, 48)


def _colour(label: str) -> tuple:
    return CLASS_COLOURS_BGR.get(label, _X_COLOUR)


def _put(img, text, org, scale=0.55, colour=(235, 235, 235), thick=1):
    cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, colour, thick, cv2.LINE_AA)


class KioskReview:
    """State of the kiosk review of one session; ``handle_key`` then ``render``."""

    def __init__(self, store, session_id: str, user: str):
        self.store = store
        self.user = user
        self.model = ReviewModel(store, session_id)
        self.sid = self.model.session_id
        self.group = self.model.first_group()
        self.sel = 0
        self.page = 0
        self.message = ""
        self.sign_armed = False
        self._crops: dict[int, np.ndarray] = {}
        self.cells = self.model.group(self.group)

    # -- state --------------------------------------------------------------
    def _reload(self, group: str | None = None) -> None:
        self.model = ReviewModel(self.store, self.sid)
        if group is not None:
            self.group, self.sel, self.page = group, 0, 0
            self.cells = self.model.group(group)
        else:  # same cells in the same places until the page changes
            now = {c.cell_id: c for c in self.model.cells}
            self.cells = [now.get(c.cell_id, c) for c in self.cells]

    @property
    def per_page(self) -> int:
        return COLS * ROWS

    def visible(self) -> list:
        return self.cells[self.page * self.per_page:(self.page + 1) * self.per_page]

    def handle_key(self, key: str | None) -> bool:
        """Apply one key; False when the reviewer closes the review."""
        if key is None:
            return True
        if key in ("q", "\x1b"):
            return False
        armed, self.sign_armed = self.sign_armed, False
        n = len(self.cells)
        try:
            if key in ("right", "left", "down", "up") and n:
                step = {"right": 1, "left": -1, "down": COLS, "up": -COLS}[key]
                self.sel = max(0, min(n - 1, self.sel + step))
                self.page = self.sel // self.per_page
            elif key.lower() in KEYS and n:
                cell = self.cells[self.sel]
                frm, to = store_review.set_label(self.store, self.sid, cell.cell_id, KEYS[key.lower()], self.user,
                                                 "kiosk")
                self.message = f"cell {cell.cell_id}: {GROUP_TITLES.get(frm, frm)} -> {GROUP_TITLES[to]}"
                self._reload()
                self.sel = min(n - 1, self.sel + 1)
                self.page = self.sel // self.per_page
            elif key in ("\r", "\n"):
                self._confirm_page()
            elif key == "s":
                if not self.model.state.editable:
                    self.message = "signed and frozen: amend it on the review page (wbc-counter serve)"
                elif armed:
                    p = signoff.sign(self.store, self.sid, self.user)
                    self.message = f"signed by {self.user} (version {p['version']})"
                    self._reload()
                else:
                    self.sign_armed = True
                    self.message = f"press s again to sign as {self.user}"
        except ReviewError as exc:
            self.message = str(exc)
        return True

    def _confirm_page(self) -> None:
        page = self.visible()
        if page:
            store_review.confirm(self.store, self.sid, [c.cell_id for c in page], self.user, "kiosk")
        if (self.page + 1) * self.per_page < len(self.cells):
            self._reload()
            self.page += 1
            self.sel = self.page * self.per_page
        else:
            nxt = self.model.next_group(self.group)
            self._reload(nxt or self.group)
            if nxt is None:
                self.message = "all classes seen: press s twice to sign"
        if page:
            self.message = self.message or f"{len(page)} cells confirmed"

    # -- drawing --------------------------------------------------------------
    def _crop(self, cell_id: int) -> np.ndarray | None:
        if cell_id not in self._crops:
            row = self.store.conn.execute("SELECT crop FROM cells WHERE id=?", (cell_id,)).fetchone()
            img = None
            if row is not None and row["crop"] is not None:
                img = cv2.imdecode(np.frombuffer(row["crop"], np.uint8), cv2.IMREAD_COLOR)
            self._crops[cell_id] = None if img is None else cv2.resize(img, (THUMB, THUMB))
        return self._crops[cell_id]

    def render(self) -> np.ndarray:
        canvas = np.full((H, W, 3), 28, np.uint8)
        st = self.model.state
        row = self.model.row
        _put(canvas, f"Review  session {self.sid[:8]}  sample {row['sample_id'] or '-'}  user {self.user}",
             (20, 32), 0.7, (255, 255, 255), 2)
        status = (f"SIGNED by {st.signed_by} (version {st.version}): frozen" if st.signed else
                  f"version {st.version} re-opened: {st.reason}" if st.version > 1 else "not signed")
        _put(canvas, status, (20, 60), 0.6, (120, 220, 120) if st.signed else (80, 200, 255))
        # class tabs
        x = 20
        for g, items in self.model.groups():
            text = f"{GROUP_TITLES[g]} {len(items)}"
            w = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.5, 1)[0][0] + 16
            cv2.rectangle(canvas, (x, 72), (x + w, 96), _colour(g), -1 if g == self.group else 2)
            _put(canvas, text, (x + 8, 90), 0.5)
            x += w + 8
        # the page of cells
        for i, cell in enumerate(self.visible()):
            idx = self.page * self.per_page + i
            cx = GRID_X + (i % COLS) * (THUMB + GAP)
            cy = GRID_Y + (i // COLS) * (THUMB + GAP + 8)
            img = self._crop(cell.cell_id)
            if img is not None:
                canvas[cy:cy + THUMB, cx:cx + THUMB] = img
            else:
                _put(canvas, "by hand", (cx + 14, cy + 52), 0.45)
            cv2.rectangle(canvas, (cx - 2, cy - 2), (cx + THUMB + 1, cy + THUMB + 1), _colour(cell.label), 3)
            if cell.reviewed:
                cv2.circle(canvas, (cx + 10, cy + 10), 8, (60, 160, 60), -1)
            if idx == self.sel:
                cv2.rectangle(canvas, (cx - 6, cy - 6), (cx + THUMB + 5, cy + THUMB + 5), (255, 255, 255), 2)
            label = "not leuko" if cell.label == NOT_LEUKOCYTE else cell.label[:9]
            conf = f" {cell.confidence:.2f}" if cell.confidence is not None else ""
            _put(canvas, label + conf, (cx, cy + THUMB + 14), 0.4, _colour(cell.label) if cell.label != "x"
                 else (200, 200, 200))
        pages = max(1, -(-len(self.cells) // self.per_page))
        _put(canvas, f"page {self.page + 1} of {pages}", (GRID_X, H - 48), 0.5)
        # differential
        s = self.model.summary()
        y = 130
        _put(canvas, f"Differential (n = {s['total']}, 95% CI {s['ci_method']})", (PANEL_X, y), 0.6,
             (255, 255, 255), 2)
        for k in FIVE_PART:
            y += 34
            d = s["differential"][k]
            _put(canvas, f"{k:<11}{d['count']:>4}{d['percent']:>7.1f}%  [{d['ci95'][0]:.1f}-{d['ci95'][1]:.1f}]",
                 (PANEL_X, y), 0.55, _colour(k))
        y += 40
        _put(canvas, f"other {s['counts']['other']}   not a leukocyte {s['counts'][NOT_LEUKOCYTE]}", (PANEL_X, y))
        y += 30
        _put(canvas, f"reviewed {s['reviewed']} of {s['cells']} cells", (PANEL_X, y))
        _put(canvas, self.message[:150], (20, H - 22), 0.55, (80, 220, 255))
        _put(canvas, "arrows move  1-6 class  x not a leukocyte  enter confirm page  s s sign  q close",
             (PANEL_X - 10, H - 48), 0.45, (170, 170, 170))
        return canvas

    def run(self, sink, max_idle_s: float | None = None) -> None:
        """Show and handle keys until closed (or ``max_idle_s`` without a key, for tests)."""
        last = time.monotonic()
        canvas = self.render()
        while sink.is_open:
            sink.show(canvas)  # also what pumps the window's events
            key = sink.poll_key()
            if key is not None:
                last = time.monotonic()
                if not self.handle_key(key):
                    break
                canvas = self.render()
            elif max_idle_s is not None and time.monotonic() - last > max_idle_s:
                break
            else:
                time.sleep(0.03)
