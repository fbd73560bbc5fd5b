"""``wbc-counter selftest``: prove the kiosk still gives validated answers.

Runs the checks of ``edge_app.selftest`` (disk, database, model files,
TensorRT engine + calibration cache, reference images through the active
backend, camera), prints one line per check, records the result in the
database (the counter refuses to report results while the last one failed)
and exits 0 when everything passed, 1 when something failed, 2 for a usage
or configuration error.

``--build-engine`` (what ``wbc-engine.service`` runs) builds the TensorRT
engine first when it is missing or stale; without it a missing or stale
engine is a failure. ``--update-from DIR`` installs the model folder DIR as a
new version, self-tests it and keeps it, or rolls back to the previous one.
``--json`` prints the recorded result as one JSON object instead.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import sys
from pathlib import Path

from edge_app import fsutil, paths
from edge_app.config import load_config
from edge_app.selftest import DEFAULT_CAMERA, record, record_started, run_selftest
from edge_app.store import Store, StoreError
from edge_app.watchdog import SystemdNotifier

logger = logging.getLogger(__name__)


def add_parser(sub):
    p = sub.add_parser("selftest", help="check engine, reference answers, camera, disk and database",
                       description="Exit 0 = fit to count, 1 = a check failed (the counter will not report), "
                                   "2 = usage/config error.")
    p.add_argument("--build-engine", action="store_true",
                   help="build the TensorRT engine first if it is missing or stale (first boot, new model)")
    cam = p.add_mutually_exclusive_group()
    cam.add_argument("--camera", metavar="URI", default=None,
                     help=f"camera to check (default: $WBC_SOURCE or {DEFAULT_CAMERA})")
    cam.add_argument("--no-camera", action="store_true", help="skip the camera check (bench use only)")
    p.add_argument("--model-dir", default=None, help="folder with manifest.json (default from config)")
    p.add_argument("--backend", choices=("auto", "tensorrt", "tflite"), default=None)
    p.add_argument("--precision", choices=("auto", "int8", "fp16", "fp32"), default=None,
                   help="default auto: on a CPU both int8 and fp32 are checked and timed, the faster is kept")
    p.add_argument("--update-from", metavar="DIR", default=None,
                   help="install model folder DIR as a new version; keep it only if its self-test passes")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    return p


def main(args) -> int:
    cfg = load_config(args.config, {"inference.backend": args.backend, "inference.precision": args.precision,
                                    "model.dir": args.model_dir})
    camera = args.camera or os.environ.get("WBC_SOURCE") or DEFAULT_CAMERA

    def selftest(model_dir=None):
        return run_selftest(cfg, args.data_dir, model_dir=model_dir, camera=camera, check_cam=not args.no_camera,
                            build_engine=args.build_engine or bool(args.update_from))

    if args.update_from:
        # A release that cannot be installed (bad manifest, names that lead outside its folder) is refused
        # before anything is recorded or copied: the model in use and its last self-test stay as they are.
        from edge_app.model.bundle import Manifest

        Manifest.load(args.update_from)
    try:
        with Store(args.data_dir) as store:
            record_started(store)
    except (StoreError, sqlite3.Error, OSError) as exc:  # reported by the disk and database checks below
        logger.error("self-test start not recorded: %s", exc)
    if args.update_from:
        from edge_app.updates import ACTIVE, update_model

        root = _models_root(cfg, args)
        outcome = update_model(args.update_from, root, selftest, _engine_dir(cfg, args))
        result = outcome.result
        print(outcome.message, file=sys.stderr if not outcome.kept else sys.stdout)
        if not cfg.model.dir or Path(cfg.model.dir) != root / ACTIVE:
            print(f"note: the counter loads [model] dir = {cfg.model.dir or 'the shipped models/'}; set it to "
                  f"{root / ACTIVE} in the config to use the installed versions", file=sys.stderr)
    else:
        result = selftest()
    recorded = all(c.ok for c in result.checks if c.name == "database")
    try:
        if not recorded:  # a damaged file is kept exactly as it is for its recovery: nothing more is written
            raise StoreError("the database check failed")
        with Store(args.data_dir) as store:
            record(store, result)
    except (StoreError, sqlite3.Error, OSError) as exc:  # a full disk or a damaged file: said, exit 1
        recorded = False
        logger.error("self-test result not recorded: %s", exc)
        print(f"wbc-counter selftest: the result could not be recorded in {args.data_dir} ({exc}); the counter "
              "keeps refusing to report until a self-test is recorded as passed", file=sys.stderr)
    SystemdNotifier().status(result.summary())
    if args.json:
        print(json.dumps(result.as_event(), sort_keys=True))
    else:
        for c in result.checks:
            print(f"{'PASS' if c.ok else 'FAIL'} {c.name}: {c.message}")
        print(result.summary())
    if not result.ok:
        print(f"wbc-counter selftest: {result.summary()}", file=sys.stderr)
    return 0 if result.ok and recorded else 1


def _models_root(cfg, args):
    """Versioned model folders live beside the ``active`` pointer the config names, else in the data dir."""
    from edge_app.updates import ACTIVE

    d = Path(cfg.model.dir) if cfg.model.dir else None
    if d is not None and d.name == ACTIVE:
        return d.parent
    root = paths.installed_models_dir(args.data_dir)
    fsutil.ensure_inside(args.data_dir, root, "the models folder")  # a planted link must not lead the copy out
    return root


def _engine_dir(cfg, args):
    return paths.engine_dir(cfg.inference.engine_dir, args.data_dir)
