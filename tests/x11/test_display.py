"""The kiosk screen: HUD layout checks, and a real window under Xvfb compared with a screenshot.

CI needs Xvfb: ``apt-get install -y xvfb`` (tests here skip without it).
"""

from __future__ import annotations

import os
import time

import cv2
import numpy as np
import pytest

from edge_app.capture import open_source  # noqa: E402
from edge_app.config import load_config  # noqa: E402
from edge_app.counting.tally import Tally  # noqa: E402
from edge_app.display import HudInfo, Mp4Recorder, open_display, render_hud  # noqa: E402
from edge_app.display.hud import FRAME_BOX, PANEL_X, TOP  # noqa: E402
from edge_app.imaging.quality import FrameQuality  # noqa: E402
from edge_app.labels import CLASS_COLOURS_BGR, FIVE_PART  # noqa: E402
from edge_app.session.pipeline import FrameState  # noqa: E402
from edge_app.session.runner import LiveRun  # noqa: E402
from edge_app.store import Store  # noqa: E402
from tests.kiosk_fixtures import FakeBundle, build_synthetic_pan  # noqa: E402

BAR_X, BAR_W = PANEL_X + 120, 300


def bar_y(i: int) -> int:
    return TOP + 60 + i * 56 + 2  # above the CI whisker


class _Pipe:
    """What render_hud reads from a pipeline: a tally and the review strip."""

    def __init__(self, tally):
        self.tally = tally

    def review_strip(self, n):
        return []


def known_tally():
    t = Tally(target=100)
    counts = {"neutrophil": 30, "lymphocyte": 15, "monocyte": 5, "eosinophil": 0, "basophil": 0}
    i = 0
    for k, n in counts.items():
        for _ in range(n):
            i += 1
            t.add(i, k, 0.9)
    return t, counts


def coloured_run(canvas, y, colour, x0=BAR_X, x1=BAR_X + BAR_W):
    row = canvas[y, x0:x1].astype(int)
    return int((np.abs(row - np.array(colour)).sum(axis=1) < 10).sum())


def test_bars_show_the_differential():
    t, counts = known_tally()
    frame = np.full((480, 640, 3), 200, np.uint8)
    state = FrameState(frame, 0, FrameQuality(30, 180, 0, True, ""), [], True)
    canvas = render_hud(state, _Pipe(t), HudInfo(fps=31.0, backend="tflite", session="abcdef12"))
    assert canvas.shape == (720, 1280, 3)
    for i, k in enumerate(FIVE_PART):
        expected = BAR_W * counts[k] / 50
        assert abs(coloured_run(canvas, bar_y(i), CLASS_COLOURS_BGR[k]) - expected) <= 3, k


def test_paused_banner_when_out_of_focus():
    t, _ = known_tally()
    frame = np.full((480, 640, 3), 200, np.uint8)
    ok = render_hud(FrameState(frame, 0, FrameQuality(30, 180, 0, True, ""), [], True), _Pipe(t), HudInfo())
    paused = render_hud(FrameState(frame, 0, FrameQuality(2, 180, 0, False, "out of focus: adjust the fine focus"),
                                   [], False), _Pipe(t), HudInfo())
    x, y, w, h = FRAME_BOX
    band = (slice(y + 2, y + 30), slice(x + 300, x + 700))
    assert np.abs(ok[band].astype(int) - paused[band].astype(int)).mean() > 40
    assert paused[band][..., 2].mean() > paused[band][..., 1].mean()  # a red banner




def grab(display: str) -> np.ndarray:
    from PIL import ImageGrab

    return cv2.cvtColor(np.array(ImageGrab.grab(xdisplay=display)), cv2.COLOR_RGB2BGR)


@pytest.mark.slow
def test_live_window_under_xvfb_matches_expectations(tmp_path, xvfb):
    pan = build_synthetic_pan(tmp_path)
    cfg = load_config(None)
    sink = open_display("opencv", (1280, 720))
    shown, mid = [], {}
    real_show = sink.show

    def show(canvas):  # keep what the loop asked the window to show; grab the screen mid-run
        shown.append(canvas)
        real_show(canvas)
        if len(shown) == 60:
            time.sleep(0.1)
            real_show(canvas)
            mid["screen"], mid["canvas"] = grab(xvfb), canvas

    sink.show = show
    recorder = Mp4Recorder(tmp_path / "screen.mp4", (1280, 720), fps=30)
    run = LiveRun(cfg=cfg, bundle=FakeBundle(), source=open_source(str(pan["video"])), store=Store(tmp_path / "d"),
                  sink=sink, recorder=recorder, target=8)
    result = run.run()
    recorder.close()
    assert result.reason == "target" and result.payload["total"] == 8
    time.sleep(0.2)
    sink.show(shown[-1])
    screen = grab(xvfb)
    # The window shows exactly the last HUD picture.
    assert screen.shape == shown[-1].shape
    assert np.abs(screen.astype(int) - shown[-1].astype(int)).mean() < 2.0
    # ... and that picture says what it should: the target banner, the bars, the counted boxes.
    assert np.abs(screen[330, 640].astype(int) - (40, 110, 40)).sum() < 30  # "TARGET REACHED" banner
    counts = result.payload["counts"]
    for i, k in enumerate(FIVE_PART[:4]):  # the basophil bar lies under the banner
        expected = BAR_W * counts[k] / 8
        assert abs(coloured_run(screen, bar_y(i), CLASS_COLOURS_BGR[k]) - expected) <= 3, k
    # Mid-run: the live frame with class-coloured boxes of the cells in view.
    assert np.abs(mid["screen"].astype(int) - mid["canvas"].astype(int)).mean() < 2.0
    x, y, w, h = FRAME_BOX
    live = mid["screen"][y:y + h, x:x + w]
    assert any((np.abs(live.astype(int) - np.array(CLASS_COLOURS_BGR[k])).sum(axis=2) < 10).sum() > 100
               for k in FIVE_PART)  # class-coloured boxes drawn on the live frame

    # The recording holds what the screen showed, frame for frame.
    cap = cv2.VideoCapture(str(tmp_path / "screen.mp4"))
    n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    assert n == recorder.frames and n >= result.frames
    sink.close()


@pytest.mark.slow
def test_keys_in_the_window_correct_the_tally(tmp_path, xvfb):
    pan = build_synthetic_pan(tmp_path)
    cfg = load_config(None)
    sink = open_display("opencv", (1280, 720))
    run = LiveRun(cfg=cfg, bundle=FakeBundle(), source=open_source(str(pan["video"])), store=Store(tmp_path / "d"),
                  sink=sink, target=1000)
    before = {}
    real_show = sink.show

    def show(canvas):
        real_show(canvas)
        p = run.pipeline
        if p.frames_this_run == 5:
            before.update(p.tally.counts())
            for key in ("2", "2", "u"):  # two lymphocytes by hand, then undo one
                sink.root.event_generate("<Key>", keysym=key)
            sink.root.update()
        if p.frames_this_run == 200:
            before["last"] = p.last_cell_id
            for key in ("r", "1"):  # reclassify the last counted cell as a neutrophil
                sink.root.event_generate("<Key>", keysym=key)
            sink.root.update()

    sink.show = show
    result = run.run()
    sink.close()
    assert result.payload["corrections"] == 4
    with Store(tmp_path / "d") as store:
        corr = [(c["action"], c["cell_id"] if c["action"] == "reclassify" else None, c["to_label"], c["operator"])
                for c in store.corrections(result.session_id)]
        manual = [r for r in store.cells(result.session_id) if r["source"] == "manual"]
        relabelled = store.conn.execute("SELECT label FROM cells WHERE id=?", (before["last"],)).fetchone()[0]
    op = cfg.kiosk.operator
    assert corr == [("add", None, "lymphocyte", op), ("add", None, "lymphocyte", op), ("undo", None, None, op),
                    ("reclassify", before["last"], "neutrophil", op)]
    assert len(manual) == 1 and relabelled == "neutrophil"


def test_headless_needs_no_display(monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    assert open_display("auto").name == "headless"
    assert os.environ.get("DISPLAY") is None
