"""What the live loop's extra work costs and gives on slide-pan videos.

    python -m scripts.research.live_cost_study counts --video samples/slide_pan_train.mp4 \
        --truth samples/slide_pan_train.json [--set model.detector_flip=false ...]
    python -m scripts.research.live_cost_study motion --video samples/slide_pan_train.mp4

``counts`` runs ``wbc-counter run`` headless on the video once per setting (the mirrored
second detector pass on/off, 1 or 4 classifier views, a motion width, a precision), scores
each summary with ``scripts.eval_pan`` and prints one JSON line per setting: the count, its
error, whether every true percentage is inside the 95% CI, and the summed absolute
percentage difference. Recorded sources process every frame, so these figures do not
depend on the machine's speed.

``motion`` measures the stage-motion estimate (phase correlation) at the full frame width
and smaller analysis widths against the pan's true path (``--truth``; else against the
full-size estimate): per frame pair, the error in full-frame pixels (median, p95, max), how
many estimates were refused (weak peak), the drift of the summed origin over the whole
video, and the cost per frame (median of the call; every width runs on each frame in turn,
so a shared machine's load falls on all alike).

Decide on the training pan only; a held-out pan (``make_sample_video --split test``) is
scored once, as a check that the decision is no worse there.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from edge_app.imaging.motion import StageMotion
from edge_app.imaging.quality import grey_small
from scripts.eval_pan import FIVE_PART, score

logger = logging.getLogger(__name__)

SETTINGS = {  # the grid of `counts` when no --set is given
    "flip+4views": {"model.live_detector_flip": True, "model.live_tta_views": 4},
    "flip+1view": {"model.live_detector_flip": True, "model.live_tta_views": 1},
    "noflip+4views": {"model.live_detector_flip": False, "model.live_tta_views": 4},
    "noflip+1view": {"model.live_detector_flip": False, "model.live_tta_views": 1},
}


def _toml(setting: dict) -> str:
    sections: dict[str, list[str]] = {}
    for dotted, value in setting.items():
        section, key = dotted.split(".", 1)
        sections.setdefault(section, []).append(f"{key} = {json.dumps(value)}")
    return "\n".join(f"[{s}]\n" + "\n".join(lines) for s, lines in sections.items()) + "\n"


def count_once(video: str, truth: dict, setting: dict, precision: str | None) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "cfg.toml"
        cfg.write_text(_toml(setting), encoding="utf-8")
        summary = Path(tmp) / "s.json"
        cmd = [sys.executable, "-m", "edge_app", "run", "--source", video, "--backend", "tflite", "--headless",
               "--target", "1000", "--data-dir", str(Path(tmp) / "data"), "--config", str(cfg),
               "--summary-json", str(summary)]
        if precision:
            cmd += ["--precision", precision]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            return {"error": r.stderr.strip().splitlines()[-1:]}
        s = json.loads(summary.read_text(encoding="utf-8"))
    out = score(truth, s)
    out["percent_abs_diff_sum"] = round(sum(abs(s["percent"][k] - truth["percent"][k]) for k in FIVE_PART), 2)
    return {k: out[k] for k in ("true_unique", "counted_total", "counted_other", "count_error_pct", "count_ok",
                                "percent_ok", "percent_abs_diff_sum")}


def counts(args) -> None:
    truth = json.loads(Path(args.truth).read_text(encoding="utf-8"))
    grid = SETTINGS
    if args.set:
        one = {}
        for item in args.set:
            key, _, value = item.partition("=")
            one[key] = json.loads(value)
        grid = {",".join(args.set): one}
    for name, setting in grid.items():
        row = count_once(args.video, truth, setting, args.precision)
        print(json.dumps({"video": Path(args.video).name, "setting": name, "precision": args.precision, **row}),
              flush=True)


def _greys(video: str) -> tuple[list[np.ndarray], int]:
    cap = cv2.VideoCapture(video)
    out, width = [], 0
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        width = rgb.shape[1]
        out.append(grey_small(rgb, width=width))  # full-size grey; each width downsizes it itself
    cap.release()
    return out, width


def motion(args) -> None:
    greys, width = _greys(args.video)
    widths = [width] + [w for w in args.widths if w != width]
    estimators = {w: StageMotion(analysis_width=w) for w in widths}
    shifts = {w: [] for w in widths}
    ok = {w: [] for w in widths}
    ms = {w: [] for w in widths}
    for g in greys:  # every width on the same frame in turn: a shared machine's load falls on all alike
        for w, sm in estimators.items():
            t0 = time.perf_counter()
            m = sm.update(g, width)
            ms[w].append((time.perf_counter() - t0) * 1000)
            shifts[w].append((m.dx, m.dy))
            ok[w].append(m.ok)
    if args.truth:  # the pan's own path: the window moved by +d, so the content moved by -d
        path = np.asarray(json.loads(Path(args.truth).read_text(encoding="utf-8"))["path"], np.float64)
        ref, ref_ok, reference = -np.diff(path, axis=0), np.ones(len(path) - 1, bool), "true path"
    else:
        ref, ref_ok, reference = np.asarray(shifts[width][1:]), np.asarray(ok[width][1:]), f"{width} px estimate"
    for w in widths:
        est, good = np.asarray(shifts[w][1:]), np.asarray(ok[w][1:])
        both = good & ref_ok
        err = np.linalg.norm(est[both] - ref[both], axis=1)
        drift = np.linalg.norm(est[both].sum(axis=0) - ref[both].sum(axis=0))
        print(json.dumps({"video": Path(args.video).name, "width": w, "reference": reference, "pairs": int(len(ref)),
                          "error_px": {"median": round(float(np.median(err)), 3),
                                       "p95": round(float(np.percentile(err, 95)), 3),
                                       "max": round(float(err.max()), 3)},
                          "refused": int((~good).sum()),
                          "origin_drift_px": round(float(drift), 2),
                          "ms_per_frame_median": round(float(np.median(ms[w][1:])), 3)}), flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="what", required=True)
    c = sub.add_parser("counts")
    c.add_argument("--video", required=True)
    c.add_argument("--truth", required=True)
    c.add_argument("--precision", choices=("int8", "fp32"), default=None)
    c.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=JSON",
                   help="one setting instead of the grid (repeatable)")
    m = sub.add_parser("motion")
    m.add_argument("--video", required=True)
    m.add_argument("--truth", default=None, help="the pan's truth JSON: errors against its path, not full size")
    m.add_argument("--widths", type=int, nargs="+", default=[320, 256, 160, 128, 96])
    args = p.parse_args(argv)
    counts(args) if args.what == "counts" else motion(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
