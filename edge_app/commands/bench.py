"""``wbc-counter bench --source URI [--frames N]``: the run pipeline, headless, timed.

Runs the very same loop as ``run`` (capture thread, quality, motion, detect,
track, classify, tally, durable log) into a throw-away database under
``<data-dir>/bench/`` (removed afterwards), then prints one JSON object as its
last line: ``{"fps", "frames", "backend", "stages": {stage: {"p50_ms", "p95_ms"}}}``.
fps is end to end: frames processed / wall time of the loop.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys

from edge_app import paths
from edge_app.capture import open_source
from edge_app.commands.run import add_source_args, load_bundle
from edge_app.config import load_config
from edge_app.store import Store

logger = logging.getLogger(__name__)


def add_parser(sub):
    p = sub.add_parser("bench", help="measure end-to-end fps and per-stage latency (headless)")
    add_source_args(p)
    p.add_argument("--frames", type=int, default=300, help="frames to process (default 300; fewer if the source ends)")
    return p


def bench(cfg, bundle, source, data_dir, frames: int) -> dict:
    """Run the live loop headless for ``frames`` frames; the bench JSON object."""
    from edge_app.session.runner import LiveRun

    bench_dir = paths.bench_dir(data_dir)
    shutil.rmtree(bench_dir, ignore_errors=True)
    store = Store(bench_dir)
    try:
        # A huge target so the bench is never cut short by reaching it.
        run = LiveRun(cfg=cfg, bundle=bundle, source=source, store=store, target=10 ** 9,
                      max_frames=frames, finalise=False)
        result = run.run()
    finally:
        store.close()
        shutil.rmtree(bench_dir, ignore_errors=True)
    if result.reason == "error":
        return {"error": result.error}
    return {"fps": round(result.fps, 2), "frames": result.pipeline.frames_this_run, "backend": bundle.backend_name,
            "stages": result.pipeline.times.summary()}


def main(args) -> int:
    if args.frames < 1:
        print("wbc-counter bench: error: --frames must be at least 1", file=sys.stderr)
        return 2
    cfg = load_config(args.config, {"inference.backend": args.backend, "model.dir": args.model_dir})
    source = open_source(args.source, cfg.capture)
    source.check()  # a missing camera or unreadable video is said (by cli) before the model loads
    bundle = load_bundle(cfg, args.data_dir)
    try:
        out = bench(cfg, bundle, source, args.data_dir, args.frames)
    finally:
        bundle.close()
    if "error" in out:
        print(f"wbc-counter bench: error: {out['error']}", file=sys.stderr)
        return 2
    print(json.dumps(out), flush=True)
    return 0
