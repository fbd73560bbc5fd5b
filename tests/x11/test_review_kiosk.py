"""``wbc-counter review``: the gallery review in the kiosk's window, under Xvfb, driven by keys."""

from __future__ import annotations

import subprocess
import sys

import cv2
import numpy as np
import pytest

from edge_app.display import open_display
from edge_app.labels import CLASS_COLOURS_BGR
from edge_app.review.kiosk import GRID_X, GRID_Y, THUMB, KioskReview
from edge_app.store import review as store_review
from edge_app.store.db import Store
from tests.review_fixtures import ROOT
from tests.sync_fixtures import finalised_session

pytestmark = pytest.mark.x11




def _count(tmp_path):
    store = Store(tmp_path / "data")
    sid, _ = finalised_session(store, signed_by=None, counts={"neutrophil": 5, "lymphocyte": 3, "monocyte": 1,
                                                              "eosinophil": 1, "basophil": 0})
    for i, cell in enumerate(store.cells(sid)):  # real JPEG crops: a grey disc on a light field
        img = np.full((96, 96, 3), 225, np.uint8)
        cv2.circle(img, (48, 48), 30, (150, 60 + 10 * i, 150), -1)
        store.conn.execute("UPDATE cells SET crop=? WHERE id=?", (cv2.imencode(".jpg", img)[1].tobytes(), cell["id"]))
    return store, sid


def test_kiosk_review_by_keys_under_xvfb(tmp_path, xvfb):
    from PIL import ImageGrab

    store, sid = _count(tmp_path)
    review = KioskReview(store, sid, "tech.kiosk")
    assert review.group == "neutrophil" and len(review.cells) == 5
    first, second = review.cells[0].cell_id, review.cells[1].cell_id
    sink = open_display("opencv", (1280, 720))
    sink.show(review.render())  # mapped and focused, so the generated key events reach it
    sink.root.focus_force()
    sink.root.update()
    try:
        # right, 2 (lymphocyte) on the second cell; x on the third; enter confirms the page
        for key in ("Right", "2", "x", "Return"):
            sink.root.event_generate("<Key>", keysym=key)
        review.run(sink, max_idle_s=0.5)
        screen = cv2.cvtColor(np.array(ImageGrab.grab(xdisplay=xvfb)), cv2.COLOR_RGB2BGR)
        for key in ("s", "s"):  # s twice: sign as the kiosk user
            sink.root.event_generate("<Key>", keysym=key)
        review.run(sink, max_idle_s=0.5)
    finally:
        sink.close()
    rows = [dict(r) for r in store_review.reviews(store, sid)]
    changes = [(r["cell_id"], r["from_label"], r["to_label"], r["user"], r["source"]) for r in rows
               if r["from_label"] != r["to_label"]]
    third = changes[1][0]
    assert changes == [(second, "neutrophil", "lymphocyte", "tech.kiosk", "kiosk"),
                       (third, "neutrophil", "x", "tech.kiosk", "kiosk")]
    confirmed = {r["cell_id"] for r in rows if r["from_label"] == r["to_label"]}
    assert first in confirmed and second in confirmed  # the page, confirmed as it stood
    st = store_review.state(store, sid)
    assert st.signed and st.signed_by == "tech.kiosk"
    assert store.result(sid)["counts"]["lymphocyte"] == 4 and store.result(sid)["total"] == 9
    # what the window showed: the next class (lymphocyte) with its first cell framed in the class colour
    b, g, r = (int(v) for v in screen[GRID_Y + THUMB // 2, GRID_X - 1])
    assert np.abs(np.array([b, g, r]) - np.array(CLASS_COLOURS_BGR["lymphocyte"])).sum() < 60
    assert review.group == "lymphocyte"

    # signed: frozen on the kiosk too
    review.handle_key("1")
    assert "frozen" in review.message


def test_review_verb_needs_a_screen(tmp_path, monkeypatch):
    store, sid = _count(tmp_path)
    store.close()
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    r = subprocess.run([sys.executable, "-m", "edge_app", "review", sid[:8], "--data-dir", str(tmp_path / "data")],
                       cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 2 and "no screen" in r.stderr and "wbc-counter serve" in r.stderr
    assert "Traceback" not in r.stderr
