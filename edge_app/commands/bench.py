"""``wbc-counter bench --source URI [--frames N]``: the run pipeline, headless, timed.

Runs the very same loop as ``run`` (capture thread, quality, motion, detect,
track, classify, tally, durable log) into a throw-away database under
``<data-dir>/bench/`` (removed afterwards), then prints one JSON object as its
last line: ``{"fps", "frames", "backend", "stages": {stage: {"p50_ms", "p95_ms"}}}``.
fps is end to end: frames processed / wall time of the loop.

Added beside those keys: ``cpu`` (model and SIMD features), ``precision``,
``threads``, ``detector_flip`` and ``tta_views`` in force, ``stage_detail``
(every stage separately: decode, flat field, quality, motion, detect's
preprocess / network / decode, classify and its network part, track, tally,
log; p50, p95 and mean per frame) and ``per_frame_ms``: end-to-end time per
frame (1000 / fps) beside the networks' own time per frame (mean over every
frame) and their ratio, so the overhead around the networks can be read on any
machine. A stage's figure is its whole work wherever it ran: "detect" includes
the detector's input made on the capture thread, as "track" includes the
quality gate and stage motion run there; end to end is the loop's wall time.
With ``--site DIR`` (or ``[model] site``): ``site`` with the profile's name,
sha256 and ``head_ms_per_crop``, the time its head adds per crop (the classify
stage includes it).
"""

from __future__ import annotations

import json
import logging
import shutil
import sys

from edge_app import cpuinfo, paths
from edge_app.capture import open_source
from edge_app.commands.run import add_source_args, load_bundle
from edge_app.config import load_config
from edge_app.session.runlock import RunLock
from edge_app.store import Store

logger = logging.getLogger(__name__)


def add_parser(sub):
    p = sub.add_parser("bench", help="measure end-to-end fps and per-stage latency (headless)")
    add_source_args(p)
    p.add_argument("--frames", type=int, default=300, help="frames to process (default 300; fewer if the source ends)")
    return p


def bench(cfg, bundle, source, data_dir, frames: int) -> dict:
    """Run the live loop headless for ``frames`` frames; the bench JSON object. Holds the data dir's
    counter lock (``RunLock``): a second bench would delete this one's database, a bench beside a
    counting kiosk would slow it down and measure nothing true."""
    with RunLock(data_dir):
        return _bench(cfg, bundle, source, data_dir, frames)


def _bench(cfg, bundle, source, data_dir, frames: int) -> dict:
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
    times = result.pipeline.times
    e2e = 1000.0 / result.fps if result.fps > 0 else 0.0
    network = times.mean("network")
    return {"fps": round(result.fps, 2), "frames": result.pipeline.frames_this_run, "backend": bundle.backend_name,
            "stages": times.summary(),
            "cpu": cpuinfo.cpu(), "precision": getattr(bundle, "precision", None),
            "threads": cfg.inference.threads,
            "detector_flip": bool(getattr(bundle.detector, "flip", False)),
            "tta_views": int(getattr(bundle.classifier, "views", 1)),
            "per_frame_ms": {"end_to_end": round(e2e, 3), "network": round(network, 3),
                             "ratio": round(e2e / network, 3) if network > 0 else None},
            "stage_detail": times.detail(), **site_cost(bundle)}


def site_cost(bundle, calls: int = 2000) -> dict:
    """With a site profile (--site / [model] site): its name and the ms per crop its head adds on this CPU
    (the mix of one crop's embedding with the network's probabilities over ``calls`` crops, in this thread's
    CPU time, so a CPU shared with other work does not inflate it)."""
    import time

    import numpy as np

    site = getattr(bundle, "site", None)
    if site is None:
        return {}
    emb = np.full(site.head.weight.shape[1], 0.1, np.float32)
    probs = np.full(site.head.weight.shape[0], 1.0 / site.head.weight.shape[0], np.float32)
    site.head.mix(emb, probs)  # first call pays numpy's dispatch set-up
    t0 = time.thread_time()
    for _ in range(calls):
        site.head.mix(emb, probs)
    ms = (time.thread_time() - t0) * 1000 / calls
    return {"site": {"profile": site.name, "sha256": site.sha256, "head_ms_per_crop": round(ms, 4)}}


def main(args) -> int:
    if args.frames < 1:
        print("wbc-counter bench: error: --frames must be at least 1", file=sys.stderr)
        return 2
    cfg = load_config(args.config, {"inference.backend": args.backend, "inference.precision": args.precision,
                                    "model.dir": args.model_dir, "model.site": args.site})
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
