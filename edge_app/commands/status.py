"""``wbc-counter status``: what this kiosk runs and how it is doing, without touching the camera.

Prints readable ``key: value`` lines, or with ``--json`` one JSON object:

    {"backend", "model_version", "engine": {net: {"file", "sha256", "status"}},
     "camera": {"uri", "present", "last_event"}, "selftest": {"ok", "at", "message"},
     "last_sync", "outbox": {"pending", "failed", "done"}, "outbox_depth",
     "disk_free_mb", "data_dir"}

``engine`` is the cached TensorRT engine (its status is ok, missing or stale)
or, on a CPU, the TFLite file in use. ``last_sync`` is when a result was
last delivered. Values that cannot be read are null, with the reason in
``problems``. Exit 0 always when the status could be printed (it is a report,
not a check: ``wbc-counter selftest`` is the check). No sample ids or names.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

from edge_app import paths
from edge_app.config import load_config
from edge_app.selftest import DEFAULT_CAMERA, last_result
from edge_app.store import DB_NAME, Store
from edge_app.textsafe import for_terminal

logger = logging.getLogger(__name__)


def add_parser(sub):
    p = sub.add_parser("status", help="backend, model, engine hash, camera, last sync, outbox, disk")
    p.add_argument("--json", action="store_true", help="one JSON object (the scripting contract)")
    p.add_argument("--camera", metavar="URI", default=None,
                   help=f"camera URI (default: $WBC_SOURCE or {DEFAULT_CAMERA})")
    return p


def _engine_info(cfg, manifest, backend: str, data_dir: Path) -> dict:
    from edge_app.model import precision as auto_precision

    # "auto" as the counter will run it: the cached measured choice (status never measures; int8 until then)
    precision = auto_precision.resolve(cfg.inference.precision, backend, manifest, data_dir, cfg.inference.threads,
                                       measure_if_missing=False) or "int8"
    out = {}
    if backend == "tensorrt":
        from edge_app.backends import engine_cache
        from edge_app.backends import tensorrt as trt_backend

        engine_dir = paths.engine_dir(cfg.inference.engine_dir, data_dir)
        for net in ("detector", "classifier"):
            plan = trt_backend.plan_engine(manifest, net, precision, engine_dir)
            state = engine_cache.check(engine_dir, plan.key, verify_hash=False)
            out[net] = {"file": state.path.name, "sha256": state.engine_sha256, "status": state.status}
        return out
    kind = "tflite_int8" if precision == "int8" else "tflite_fp32"
    for net in ("detector", "classifier"):
        name = manifest.entry(net)["files"].get(kind)
        out[net] = {"file": name, "sha256": manifest.entry(net)["sha256"].get(name), "status": "tflite"}
    return out


def _camera(uri: str, store: Store | None) -> dict:
    info = {"uri": uri, "present": None, "last_event": None}
    try:
        from edge_app.capture import parse_uri

        spec = parse_uri(uri)
        if spec.kind == "v4l2":
            info["present"] = Path(spec.location).exists()
    except Exception as exc:  # a bad URI is reported, not raised
        info["present"] = False
        info["error"] = str(exc)
    if store is not None:
        row = store.last_event("camera")
        if row is not None:
            info["last_event"] = {"at": row["at"], **json.loads(row["detail"] or "{}")}
    return info


def collect(cfg, data_dir: Path, camera: str) -> dict:
    from edge_app.backends import BackendError, resolve_backend_name
    from edge_app.model.bundle import Manifest

    status: dict = {"backend": None, "model_version": None, "engine": None, "camera": None, "selftest": None,
                    "last_sync": None, "outbox": None, "outbox_depth": None, "disk_free_mb": None,
                    "data_dir": str(data_dir), "problems": []}
    try:
        status["backend"] = resolve_backend_name(cfg.inference.backend)
    except BackendError as exc:
        status["problems"].append(str(exc))
    try:
        manifest = Manifest.load(cfg.model.dir)
        status["model_version"] = manifest.version
        if status["backend"]:
            status["engine"] = _engine_info(cfg, manifest, status["backend"], data_dir)
    except (BackendError, KeyError) as exc:
        status["problems"].append(f"model: {exc}")
    try:
        status["disk_free_mb"] = round(shutil.disk_usage(data_dir).free / 2**20)
    except OSError as exc:
        status["problems"].append(f"disk: {exc}")
    store = None
    if (data_dir / DB_NAME).is_file():
        try:
            store = Store(data_dir, readonly=True)  # never migrate or write from a status query
            counts = {"pending": 0, "done": 0, "failed": 0}
            rows = store.conn.execute("SELECT status, COUNT(*) FROM outbox GROUP BY status")
            counts.update({r[0]: r[1] for r in rows})
            status["outbox"] = counts
            status["outbox_depth"] = counts["pending"]
            status["last_sync"] = store.conn.execute("SELECT MAX(done_at) FROM outbox").fetchone()[0]
            last = last_result(store)
            if last is not None:
                status["selftest"] = {k: last.get(k) for k in ("ok", "at", "message", "model_version")}
        except Exception as exc:  # StoreError, or sqlite3 errors on a damaged file: report, do not crash
            status["problems"].append(f"database: {exc}")
    else:
        status["problems"].append(f"database: none yet in {data_dir}")
    status["camera"] = _camera(camera, store)
    if store is not None:
        store.close()
    return status


def _text(status: dict) -> str:
    lines = [f"backend: {status['backend'] or 'unknown'}", f"model version: {status['model_version'] or 'unknown'}"]
    for net, e in (status["engine"] or {}).items():
        lines.append(f"engine {net}: {e['file']} sha256 {(e['sha256'] or '-')[:16]} ({e['status']})")
    cam = status["camera"] or {}
    present = {True: "present", False: "NOT FOUND", None: "not a local device"}[cam.get("present")]
    lines.append(f"camera: {cam.get('uri')} ({present})")
    st = status["selftest"]
    lines.append("self-test: " + ("never run" if st is None else f"{'passed' if st['ok'] else 'FAILED'} at {st['at']}"
                                  + ("" if st["ok"] else f" - {st['message']}")))
    lines.append(f"last sync: {status['last_sync'] or 'never'}")
    ob = status["outbox"]
    lines.append("outbox: " + ("-" if ob is None
                               else f"{ob['pending']} waiting, {ob['failed']} failed, {ob['done']} sent"))
    lines.append(f"disk free: {status['disk_free_mb']} MB in {status['data_dir']}")
    lines += [f"problem: {p}" for p in status["problems"]]
    return "\n".join(lines)


def main(args) -> int:
    cfg = load_config(args.config)
    camera = args.camera or os.environ.get("WBC_SOURCE") or DEFAULT_CAMERA
    status = collect(cfg, Path(args.data_dir), camera)
    print(json.dumps(status, sort_keys=True) if args.json else for_terminal(_text(status)))
    return 0
