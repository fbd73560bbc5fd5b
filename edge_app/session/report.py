"""One-page session report: the result as text, a PNG and an HTML page.

The page holds the session facts, the five-part differential with 95% CIs,
"other" cells, absolute counts when a WBC count was entered, who signed which
version (and each amendment), the corrections
(who / when / from / to) and a gallery of the stored cell crops per class.
A session still open is reported as PRELIMINARY from its committed cells.
"""

from __future__ import annotations

import base64
import html
import json
import logging
from pathlib import Path

import cv2
import numpy as np

from edge_app import fsutil
from edge_app.counting.tally import Tally
from edge_app.labels import CLASS_COLOURS_BGR, CLASSES, FIVE_PART
from edge_app.store import Store

logger = logging.getLogger(__name__)

PAGE_W, PAGE_H = 1240, 1754  # A4 at 150 dpi
THUMB = 64
GALLERY_PER_CLASS = 16


def session_result(store: Store, session_id: str, ci_method: str = "wilson") -> tuple[dict, dict, bool]:
    """(session row as dict, result payload, final?) for a session id or unique prefix. A session
    still open is tallied from its cells with ``ci_method``, the kiosk's ``[tally] ci_method``, so the
    preliminary intervals match its screen; a finalised one keeps the method it was closed with."""
    row = dict(store.session(session_id))
    payload = store.result(row["id"])
    if payload is not None:
        return row, payload, True
    tally = Tally.from_store(store, row["id"], row["target"], ci_method, row["wbc_count"])
    meta = {k: row[k] for k in ("sample_id", "operator", "device", "model_version", "backend")}
    payload = tally.payload(session_id=row["id"], meta=meta, frames=row["frames"], fps=0.0,
                            finalised_at=None)
    return row, payload, False


def state_note(payload: dict) -> str:
    """'' for a complete result; else what it is and why, said on every form of the report."""
    state = payload.get("state") or "final"
    if state == "final":
        return ""
    why = "".join(ch if ch.isprintable() else " " for ch in str(payload.get("reason") or "no reason recorded"))
    return f"{'NO RESULT' if state == 'no-result' else state.upper()}: {why}; not sent"


def site_line(row: dict) -> str | None:
    """'site profile NAME (sha256 ...)' from the session's recorded calibration, or None (the network alone)."""
    try:
        cal = json.loads(row.get("calibration") or "null")
    except ValueError:
        return None
    if not isinstance(cal, dict) or not cal.get("site_profile"):
        return None
    return f"site profile {cal['site_profile']} (sha256 {str(cal.get('site_profile_sha256') or '')[:12]})"


def text_summary(row: dict, payload: dict, final: bool) -> str:
    note = state_note(payload)
    lines = [f"session {row['id']}  status {row['status']}" + ("" if final else "  (PRELIMINARY: not finalised)")
             + (f"  ({note})" if note else ""),
             f"sample {row['sample_id'] or '-'}  operator {row['operator'] or '-'}  device {row['device'] or '-'}",
             f"model {row['model_version'] or '-'}  backend {row['backend'] or '-'}  started {row['started_at']}",
             f"five-part cells {payload['total']} (target {payload['target']}), other {payload['other']}, "
             f"flagged {payload['flagged']}, corrections {payload['corrections']}",
             f"{'class':<12}{'n':>5}{'%':>8}   95% CI ({payload['ci_method']})"]
    for k in FIVE_PART:
        lo, hi = payload["ci95"][k]
        ab = f"   {payload['absolute'][k]:.2f} x10^9/L" if payload.get("absolute") else ""
        lines.append(f"{k:<12}{payload['counts'][k]:>5}{payload['percent'][k]:>8.1f}   [{lo:5.1f}, {hi:5.1f}]{ab}")
    site = site_line(row)
    if site:
        lines.insert(3, site)
    return "\n".join(lines)


def _crops(store: Store, session_id: str) -> dict[str, list[tuple[int, float | None, bool, np.ndarray]]]:
    out: dict[str, list] = {c: [] for c in CLASSES}
    for cell in store.cells(session_id):
        if cell["crop"] is None:
            continue
        img = cv2.imdecode(np.frombuffer(cell["crop"], np.uint8), cv2.IMREAD_COLOR)
        if img is None:
            continue
        out[cell["label"]].append((cell["id"], cell["confidence"], bool(cell["flagged"]), img))
    return out


def _put(img, s, org, scale=0.6, colour=(20, 20, 20), thick=1):
    cv2.putText(img, s, org, cv2.FONT_HERSHEY_SIMPLEX, scale, colour, thick, cv2.LINE_AA)


def render_png(row: dict, payload: dict, final: bool, crops: dict, corrections: list,
               signoff: list[str] = ()) -> np.ndarray:
    page = np.full((PAGE_H, PAGE_W, 3), 255, np.uint8)
    _put(page, "Leukocyte differential" + ("" if final else "  (PRELIMINARY)"), (60, 80), 1.2, (0, 0, 0), 2)
    if state_note(payload):
        _put(page, state_note(payload)[:90], (60, 112), 0.6, (0, 0, 200), 2)
    y = 130
    for s in text_summary(row, payload, final).splitlines()[:4]:
        _put(page, s[:100], (60, y), 0.6)
        y += 30
    # bars with CI whiskers
    y += 20
    x0, bw = 260, 700
    for k in FIVE_PART:
        colour = CLASS_COLOURS_BGR[k]
        pct, (lo, hi) = payload["percent"][k], payload["ci95"][k]
        _put(page, f"{k}", (60, y + 24), 0.7, colour, 2)
        cv2.rectangle(page, (x0, y), (x0 + bw, y + 32), (200, 200, 200), 1)
        cv2.rectangle(page, (x0, y), (x0 + int(bw * pct / 100), y + 32), colour, -1)
        xl, xh = x0 + int(bw * lo / 100), x0 + int(bw * hi / 100)
        cv2.line(page, (xl, y + 16), (xh, y + 16), (0, 0, 0), 2)
        cv2.line(page, (xl, y + 6), (xl, y + 26), (0, 0, 0), 2)
        cv2.line(page, (xh, y + 6), (xh, y + 26), (0, 0, 0), 2)
        _put(page, f"{payload['counts'][k]:3d}  {pct:5.1f}%  [{lo:.1f}-{hi:.1f}]", (x0 + bw + 15, y + 24), 0.6)
        y += 50
    _put(page, f"other (not in the differential): {payload['other']}    95% CI: {payload['ci_method']}",
         (60, y + 20), 0.6)
    y += 60
    if signoff:  # who signed which version: the reader of a printed page must see it
        _put(page, "sign-off:", (60, y), 0.6, (0, 0, 0), 2)
        y += 26
        for line in signoff[-4:]:
            _put(page, line[:110], (80, y), 0.5)
            y += 22
        y += 10
    if corrections:
        _put(page, f"corrections ({len(corrections)}):", (60, y), 0.6, (0, 0, 0), 2)
        y += 26
        for c in corrections[:6]:
            _put(page, f"{c['at'][:19]}  {c['operator'] or '-'}  {c['action']} cell {c['cell_id']}: "
                       f"{c['from_label'] or '-'} -> {c['to_label'] or '-'}", (80, y), 0.5)
            y += 22
        y += 10
    # gallery per class
    for k in CLASSES:
        items = crops.get(k, [])
        _put(page, f"{k} ({len(items)})", (60, y + 20), 0.65, CLASS_COLOURS_BGR[k], 2)
        y += 30
        x = 60
        for _cell_id, _conf, flagged, img in items[:GALLERY_PER_CLASS]:
            if y + THUMB > PAGE_H - 40:
                break
            page[y:y + THUMB, x:x + THUMB] = cv2.resize(img, (THUMB, THUMB))
            if flagged:
                cv2.rectangle(page, (x, y), (x + THUMB - 1, y + THUMB - 1), (0, 0, 230), 2)
            x += THUMB + 6
        y += THUMB + 12
        if y > PAGE_H - 100:
            break
    _put(page, "wbc-counter report - flagged cells outlined in red", (60, PAGE_H - 30), 0.5, (120, 120, 120))
    return page


def render_html(row: dict, payload: dict, final: bool, crops: dict, corrections: list,
                signoff: list[str] = ()) -> str:
    e = html.escape
    signed = "".join(f"<li>{e(line)}</li>" for line in signoff)
    rows = "".join(
        f"<tr><td>{k}</td><td>{payload['counts'][k]}</td><td>{payload['percent'][k]:.1f}</td>"
        f"<td>{payload['ci95'][k][0]:.1f} – {payload['ci95'][k][1]:.1f}</td>"
        + (f"<td>{payload['absolute'][k]:.2f}</td>" if payload.get("absolute") else "") + "</tr>"
        for k in FIVE_PART)
    gallery = []
    for k in CLASSES:
        imgs = []
        for cell_id, conf, flagged, img in crops.get(k, [])[:GALLERY_PER_CLASS]:
            ok, buf = cv2.imencode(".jpg", img)
            if ok:
                b64 = base64.b64encode(buf.tobytes()).decode("ascii")
                style = "border:2px solid red" if flagged else ""
                title = f"cell {cell_id}" + (f", confidence {conf:.2f}" if conf is not None else "")
                imgs.append(f'<img src="data:image/jpeg;base64,{b64}" width="{THUMB}" style="{style}" '
                            f'title="{e(title)}">')
        gallery.append(f"<h3>{k} ({len(crops.get(k, []))})</h3><div>{''.join(imgs)}</div>")
    corr = "".join(f"<li>{e(c['at'])} {e(c['operator'] or '-')}: {e(c['action'])} cell {c['cell_id']} "
                   f"{e(c['from_label'] or '-')} → {e(c['to_label'] or '-')}</li>" for c in corrections)
    abs_head = "<th>x10^9/L</th>" if payload.get("absolute") else ""
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>WBC differential {e(row['id'][:8])}</title>
<style>body{{font-family:sans-serif;max-width:900px;margin:2em auto}}td,th{{padding:2px 10px;text-align:right}}
img{{margin:2px}}</style></head><body>
<h1>Leukocyte differential{'' if final else ' (PRELIMINARY)'}</h1>
{f'<p style="color:#c00;font-weight:bold">{e(state_note(payload))}</p>' if state_note(payload) else ''}
<p>Session {e(row['id'])} — sample {e(row['sample_id'] or '-')} — operator {e(row['operator'] or '-')} —
device {e(row['device'] or '-')} — model {e(row['model_version'] or '-')} ({e(row['backend'] or '-')})<br>
Started {e(row['started_at'])}, status {e(row['status'])}; five-part cells {payload['total']}
(target {payload['target']}), other {payload['other']}, flagged {payload['flagged']}.</p>
<table><tr><th>class</th><th>n</th><th>%</th><th>95% CI ({e(payload['ci_method'])})</th>{abs_head}</tr>{rows}</table>
<p>"Other" cells are not part of the differential's denominator.</p>
<h2>Sign-off</h2><ul id="signoff">{signed or '<li>not recorded</li>'}</ul>
<h2>Corrections</h2><ul>{corr or '<li>none</li>'}</ul>
<h2>Cells</h2>{''.join(gallery)}
<script type="application/json" id="result">{e(json.dumps(payload))}</script>
</body></html>
"""


def write_report(store: Store, session_id: str, out_dir: str | Path,
                 ci_method: str = "wilson", signoff: list[str] = ()) -> tuple[str, Path, Path]:
    """Returns (text summary, png path, html path). ``signoff``: the sign-off lines
    (``edge_app.review.signoff.describe``), shown on both pages."""
    row, payload, final = session_result(store, session_id, ci_method)
    crops = _crops(store, row["id"])
    corrections = [dict(c) for c in store.corrections(row["id"])]
    out = fsutil.make_dirs(out_dir)
    png = out / f"report-{row['id'][:8]}.png"
    page = out / f"report-{row['id'][:8]}.html"
    for target in (png, page):  # both refused before either is written
        fsutil.check_writable_target(target, "report file")
    ok, buf = cv2.imencode(".png", render_png(row, payload, final, crops, corrections, signoff))
    if not ok:
        raise OSError("PNG encoding failed")
    fsutil.atomic_write(png, buf.tobytes(), what="report file")
    fsutil.atomic_write(page, render_html(row, payload, final, crops, corrections, signoff), what="report file")
    return text_summary(row, payload, final), png, page
