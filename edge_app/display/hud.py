"""Draws the kiosk screen (1280x720 BGR) from the pipeline's state.

Layout: top bar (status, fps, backend); live frame on the left with boxes in
class colours (thin = still being voted on, thick = counted) and track ids;
on the right the five-part differential as bars with 95% CI whiskers, the
"other" count, progress to the target; along the bottom the review strip:
flagged / least confident cells, each crop beside its attention map.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import cv2
import numpy as np

from edge_app.labels import CLASS_COLOURS_BGR, CLASSES, FIVE_PART

logger = logging.getLogger(__name__)

W, H = 1280, 720
TOP = 40
FRAME_BOX = (8, TOP + 4, 760, 560)  # x, y, w, h of the live-frame area
PANEL_X = 780
STRIP_Y = 620
FONT = cv2.FONT_HERSHEY_SIMPLEX
WHITE, GREY, RED, AMBER, GREEN = (255, 255, 255), (160, 160, 160), (40, 40, 230), (0, 190, 255), (80, 200, 80)
BG = (32, 30, 28)


@dataclass
class HudInfo:
    fps: float = 0.0
    backend: str = ""
    session: str = ""
    capture_message: str = ""
    capture_ok: bool = True
    events: list = field(default_factory=list)
    selected: int | None = None
    reclassify_mode: bool = False
    finished: str = ""  # shown large when the session ends (target reached / source ended)
    site: str = ""  # the site profile's name when one is in force (the classifier is not the network alone)


def _text(img, s, org, scale=0.55, colour=WHITE, thick=1, backing=False):
    if backing:  # a dark plate keeps labels readable over the live frame
        (tw, th), base = cv2.getTextSize(s, FONT, scale, thick)
        x, y = org
        cv2.rectangle(img, (x - 2, y - th - 3), (x + tw + 2, y + base), (20, 20, 20), -1)
    cv2.putText(img, s, org, FONT, scale, colour, thick, cv2.LINE_AA)


def _fit(frame_bgr: np.ndarray, box) -> tuple[np.ndarray, float, int, int]:
    x, y, w, h = box
    fh, fw = frame_bgr.shape[:2]
    s = min(w / fw, h / fh)
    nw, nh = int(fw * s), int(fh * s)
    return cv2.resize(frame_bgr, (nw, nh), interpolation=cv2.INTER_AREA), s, x + (w - nw) // 2, y + (h - nh) // 2


def _attention_overlay(crop_rgb: np.ndarray, attention: np.ndarray | None, side: int) -> np.ndarray:
    if attention is None:
        return np.full((side, side, 3), 60, np.uint8)
    a = np.asarray(attention, dtype=np.float32)
    a = (a - a.min()) / max(1e-6, float(a.max() - a.min()))
    heat = cv2.applyColorMap((cv2.resize(a, (side, side)) * 255).astype(np.uint8), cv2.COLORMAP_JET)
    base = cv2.resize(cv2.cvtColor(crop_rgb, cv2.COLOR_RGB2BGR), (side, side))
    return cv2.addWeighted(base, 0.5, heat, 0.5, 0)


def render_hud(state, pipeline, info: HudInfo) -> np.ndarray:
    """The whole screen for one processed frame (``state`` may be None: no frame yet)."""
    canvas = np.full((H, W, 3), BG, np.uint8)
    tally = pipeline.tally

    # -- top bar
    cv2.rectangle(canvas, (0, 0), (W, TOP - 4), (55, 50, 45), -1)
    _text(canvas, "WBC differential", (10, 26), 0.7, WHITE, 2)
    _text(canvas, f"session {info.session[:8]}", (250, 26), 0.55, GREY)
    _text(canvas, f"{info.fps:5.1f} fps  {info.backend}", (W - 250, 26), 0.6, WHITE)
    if info.site:
        _text(canvas, f"site: {info.site[:28]}", (430, 26), 0.55, AMBER)

    # -- live frame
    if state is not None:
        frame_bgr = cv2.cvtColor(state.image, cv2.COLOR_RGB2BGR)
        small, s, ox, oy = _fit(frame_bgr, FRAME_BOX)
        canvas[oy:oy + small.shape[0], ox:ox + small.shape[1]] = small
        for t in state.tracks:
            if t.cell_id is not None and t.cell_id in tally.cells:
                label, thick = tally.cells[t.cell_id].label, 3
            else:
                p = t.probs
                label, thick = (CLASSES[int(np.argmax(p))] if p is not None else "other"), 1
            colour = CLASS_COLOURS_BGR[label]
            x1, y1, x2, y2 = (t.box * s).astype(int) + np.array([ox, oy, ox, oy])
            cv2.rectangle(canvas, (x1, y1), (x2, y2), colour, thick)
            tag = f"#{t.id} {label[:4]}" + (" *" if t.counted else "")
            _text(canvas, tag, (x1 + 2, max(oy + 14, y1 - 5)), 0.45, colour, backing=True)
        if not state.counting:
            msg = state.message or ("target reached" if tally.reached else "counting paused")
            cv2.rectangle(canvas, (ox, oy), (ox + small.shape[1], oy + 36), (0, 0, 120), -1)
            _text(canvas, f"PAUSED: {msg}", (ox + 8, oy + 25), 0.65, WHITE, 2)
    else:
        _text(canvas, "waiting for the camera...", (FRAME_BOX[0] + 200, FRAME_BOX[1] + 280), 0.8, GREY, 2)
    if not info.capture_ok and info.capture_message:
        cv2.rectangle(canvas, (FRAME_BOX[0], FRAME_BOX[1] + FRAME_BOX[3] - 40),
                      (FRAME_BOX[0] + FRAME_BOX[2], FRAME_BOX[1] + FRAME_BOX[3]), (0, 90, 160), -1)
        _text(canvas, info.capture_message[:90], (FRAME_BOX[0] + 8, FRAME_BOX[1] + FRAME_BOX[3] - 14), 0.5, WHITE)

    # -- differential with 95% CI
    d = tally.differential()
    x0, bar_w = PANEL_X + 120, 300
    _text(canvas, f"Differential (n={tally.total}, 95% CI {tally.ci_method})", (PANEL_X, TOP + 28), 0.55, WHITE)
    for i, k in enumerate(FIVE_PART):
        y = TOP + 60 + i * 56
        colour = CLASS_COLOURS_BGR[k]
        _text(canvas, k, (PANEL_X, y + 18), 0.55, colour)
        cv2.rectangle(canvas, (x0, y), (x0 + bar_w, y + 24), (70, 70, 70), 1)
        pct, (lo, hi) = d[k]["percent"], d[k]["ci95"]
        cv2.rectangle(canvas, (x0, y), (x0 + int(bar_w * pct / 100), y + 24), colour, -1)
        if tally.total:
            xl, xh = x0 + int(bar_w * lo / 100), x0 + int(bar_w * hi / 100)
            cv2.line(canvas, (xl, y + 12), (xh, y + 12), WHITE, 2)
            cv2.line(canvas, (xl, y + 5), (xl, y + 19), WHITE, 2)
            cv2.line(canvas, (xh, y + 5), (xh, y + 19), WHITE, 2)
        _text(canvas, f"{d[k]['count']:3d}  {pct:5.1f}%  [{lo:4.1f}-{hi:4.1f}]", (x0, y + 42), 0.45, GREY)
    y = TOP + 60 + 5 * 56 + 8
    _text(canvas, f"other (not in differential): {tally.other}", (PANEL_X, y), 0.5, CLASS_COLOURS_BGR["other"])
    flagged = len(tally.flagged())
    _text(canvas, f"flagged for review: {flagged}   corrections: {tally.corrections}", (PANEL_X, y + 24), 0.5,
          AMBER if flagged else GREY)
    if tally.wbc_count:
        ab = tally.absolute()
        _text(canvas, "abs x10^9/L: " + " ".join(f"{k[:2]} {ab[k]:.2f}" for k in FIVE_PART), (PANEL_X, y + 48),
              0.42, GREY)

    # -- progress to target
    py = y + 70
    frac = min(1.0, tally.total / max(1, tally.target))
    done = tally.reached
    cv2.rectangle(canvas, (PANEL_X, py), (PANEL_X + 470, py + 30), (70, 70, 70), 1)
    cv2.rectangle(canvas, (PANEL_X, py), (PANEL_X + int(470 * frac), py + 30), GREEN if done else (200, 160, 60), -1)
    _text(canvas, f"{tally.total} / {tally.target} cells" + ("  TARGET REACHED" if done else ""),
          (PANEL_X + 10, py + 21), 0.6, WHITE, 2)
    for j, ev in enumerate(info.events[-3:]):
        _text(canvas, ev[:60], (PANEL_X, py + 56 + j * 20), 0.45, AMBER)
    if info.reclassify_mode:
        _text(canvas, "RECLASSIFY: press 1-6", (PANEL_X, py + 120), 0.6, AMBER, 2)

    # -- review strip
    _text(canvas, "review (lowest confidence)   keys: 1-6 add  r+1-6 reclassify  n next  u undo  q finish",
          (8, STRIP_Y - 6), 0.45, GREY)
    side, x = 80, 8
    for item in pipeline.review_strip(6):
        if item.crop is not None:
            canvas[STRIP_Y:STRIP_Y + side, x:x + side] = cv2.resize(cv2.cvtColor(item.crop, cv2.COLOR_RGB2BGR),
                                                                   (side, side))
            canvas[STRIP_Y:STRIP_Y + side, x + side:x + 2 * side] = _attention_overlay(item.crop, item.attention,
                                                                                       side)
        colour = RED if item.flagged else CLASS_COLOURS_BGR[item.label]
        cv2.rectangle(canvas, (x - 1, STRIP_Y - 1), (x + 2 * side, STRIP_Y + side), colour,
                      3 if item.cell_id == info.selected else 1)
        conf = f"{item.confidence:.2f}" if item.confidence is not None else "-"
        _text(canvas, f"{item.cell_id} {item.label[:4]} {conf}", (x, STRIP_Y + side + 14), 0.42, colour)
        x += 2 * side + 30
        if x + 2 * side > W:
            break

    if info.finished:
        cv2.rectangle(canvas, (200, 280), (1080, 400), (40, 110, 40), -1)
        _text(canvas, info.finished, (230, 355), 1.1, WHITE, 3)
    return canvas
