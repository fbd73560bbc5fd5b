"""``wbc-counter run --source URI``: the kiosk. Count a differential live.

``--summary-json PATH`` writes, when the source ends or the target is reached:
``{"session", "total", "counts", "percent", "ci95", "other", "frames", "fps"}``
plus the rest of the result payload, among it ``"complete"`` (false when the
source ended before its declared end, or no cell was counted), ``"state"``
('final', 'incomplete', 'no-result') and ``"reason"`` (why, or null). Exit 0
when the session was finalised with a complete result, 1 when it ended
otherwise (stopped by a signal: left open, resumable), 2 on a usage or device
error (another counter on the data dir included), 3 when it was finalised
incomplete or with no cell counted (kept, never sent).
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from edge_app import fsutil
from edge_app.capture import CaptureError, open_source
from edge_app.config import load_config
from edge_app.display import DisplayError, Mp4Recorder, open_display
from edge_app.session.runlock import RunLock
from edge_app.store import Store

logger = logging.getLogger(__name__)

SUMMARY_KEYS = ("session", "total", "counts", "percent", "ci95", "other", "frames", "fps")
EXIT_LEFT_OPEN = 1  # stopped before the count finished (signal, quit): resumable; the systemd unit counts it a success
EXIT_NOT_FINAL = 3  # finalised, but incomplete (the source ended early) or with no cell counted: never sent


def add_parser(sub):
    p = sub.add_parser("run", help="count a live differential from a camera, video or image folder")
    add_source_args(p)
    p.add_argument("--target", type=int, default=None, help="cells to count (default from config: 100)")
    p.add_argument("--sample-id", default=None, help="sample / accession id recorded with the session")
    p.add_argument("--wbc-count", type=float, default=None, help="total WBC count (x10^9/L) for absolute counts")
    p.add_argument("--headless", action="store_true", help="no screen (still counts and logs)")
    p.add_argument("--fullscreen", action="store_true", help="kiosk: full-screen window")
    p.add_argument("--record", default=None, metavar="OUT.mp4", help="write what the screen shows to an MP4")
    p.add_argument("--summary-json", default=None, metavar="PATH", help="write the result summary as JSON")
    p.add_argument("--wait-for-camera", action="store_true", default=None,
                   help="kiosk: a camera missing at start is waited for, with a message on screen, instead of "
                        "ending the run (sets [capture] wait_for_camera)")
    return p


def add_source_args(p) -> None:
    p.add_argument("--source", required=True, metavar="URI",
                   help="v4l2:///dev/video0, csi://0, a video file, an image folder, replay://FILE")
    p.add_argument("--backend", choices=("auto", "tensorrt", "tflite"), default=None)
    p.add_argument("--precision", choices=("auto", "int8", "fp32", "fp16"), default=None,
                   help="default auto: on a CPU the faster of int8 and fp32 here, both checked against the "
                        "reference outputs (measured once, cached in the data dir); int8 on TensorRT")
    p.add_argument("--model-dir", default=None, help="folder with manifest.json (default: shipped models/)")
    p.add_argument("--site", default=None, metavar="DIR",
                   help="a site profile folder (wbc-counter adapt): mix its head into the classifier "
                        "(default: [model] site, else none)")


def load_bundle(cfg, data_dir):
    from edge_app.model.bundle import ModelBundle

    return ModelBundle.from_config(cfg, data_dir, live=True)


def write_summary(path: str, payload: dict) -> None:
    out = {k: payload[k] for k in SUMMARY_KEYS}
    out.update({k: v for k, v in payload.items() if k not in out and k not in ("sample_id", "operator")})
    # never a half-written summary, never through a planted link (fsutil: temp file in the folder + rename)
    fsutil.atomic_write(path, json.dumps(out, indent=2) + "\n", what="--summary-json")


def main(args) -> int:
    overrides = {"inference.backend": args.backend, "inference.precision": args.precision,
                 "model.dir": args.model_dir, "model.site": args.site, "tally.target": args.target,
                 "tally.wbc_count": args.wbc_count}  # validated like the config key (> 0)
    if args.headless:
        overrides["display.output"] = "headless"
    if args.wait_for_camera:
        overrides["capture.wait_for_camera"] = True
    cfg = load_config(args.config, overrides)
    if args.summary_json:  # refused before counting: a folder, a link or a missing folder fails now, not after
        if not Path(args.summary_json).resolve().parent.is_dir():
            print(f"wbc-counter run: error: folder for --summary-json {args.summary_json} does not exist",
                  file=sys.stderr)
            return 2
        try:
            fsutil.check_writable_target(args.summary_json, "--summary-json")
        except fsutil.UnsafePathError as exc:
            print(f"wbc-counter run: error: {exc}", file=sys.stderr)
            return 2
    if args.record:  # the recorder writes the file as it goes: a planted link would be written through
        try:
            fsutil.refuse_symlink(args.record, "--record")
        except fsutil.UnsafePathError as exc:
            print(f"wbc-counter run: error: {exc}", file=sys.stderr)
            return 2
    source = open_source(args.source, cfg.capture)
    # One counter per data dir, held from before any session is resumed or aborted to after the summary.
    with RunLock(args.data_dir):
        return _count(args, cfg, source)


def _count(args, cfg, source) -> int:
    from edge_app.session.runner import LiveRun

    try:
        source.check()  # a missing camera or unreadable video is said (by cli) before the model loads
    except CaptureError as exc:
        if not (source.live and cfg.capture.wait_for_camera):
            raise
        logger.warning("%s; waiting for it (the screen says so)", exc)
    bundle = load_bundle(cfg, args.data_dir)
    store = Store(args.data_dir)
    sink = recorder = None
    try:
        size = (cfg.display.width, cfg.display.height)
        sink = open_display(cfg.display.output, size, fullscreen=args.fullscreen)
        if args.record:
            recorder = Mp4Recorder(args.record, size, fps=float(cfg.capture.fps))
        run = LiveRun(cfg=cfg, bundle=bundle, source=source, store=store, sink=sink, recorder=recorder,
                      sample_id=args.sample_id, wbc_count=cfg.tally.wbc_count)
        run.install_signal_handlers()
        result = run.run()
    except DisplayError as exc:
        print(f"wbc-counter run: error: {exc}", file=sys.stderr)
        return 2
    finally:
        if recorder is not None:
            recorder.close()
        if sink is not None:
            sink.close()
        bundle.close()
        store.close()
    if result.error:
        print(f"wbc-counter run: error: {result.error}", file=sys.stderr)
    if result.payload is None and result.reason == "error":
        return 2
    if result.payload is None:
        print(f"wbc-counter run: session {result.session_id} left open ({result.reason}); "
              "run again to resume it", file=sys.stderr)
        return 2 if result.reason == "error" else EXIT_LEFT_OPEN
    if args.summary_json:
        try:
            write_summary(args.summary_json, result.payload)
        except OSError as exc:  # the result itself is committed: say so, and where it can be read
            why = fsutil.disk_full_message(Path(args.summary_json).parent) if fsutil.is_disk_full(exc) else exc
            print(f"wbc-counter run: error: session {result.session_id} is finalised and safe in the database, "
                  f"but --summary-json was not written: {why} (print it with 'wbc-counter report "
                  f"{result.session_id[:8]}')", file=sys.stderr)
            return 2
    pl = result.payload
    line = ", ".join(f"{k} {pl['counts'][k]} ({pl['percent'][k]:.1f}%)" for k in pl["counts"])
    print(f"session {result.session_id}: {pl['total']} cells ({result.reason}); {line}; other {pl['other']}; "
          f"{pl['frames']} frames at {pl['fps']:.1f} fps")
    if pl.get("state", "final") != "final":
        print(f"wbc-counter run: session {result.session_id} is {pl['state'].upper()}: {pl['reason']}; it is kept "
              "for review and is not sent (count the sample again)", file=sys.stderr)
        return EXIT_NOT_FINAL
    return 0
