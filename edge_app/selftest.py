"""Start-up self-test: is this kiosk fit to report results?

Run by ``wbc-engine.service`` before the counter (``wbc-counter selftest``):

1. disk: enough free space in the data dir;
2. database: ``PRAGMA integrity_check``;
3. model: every file of the manifest matches its sha256;
4. engine (TensorRT): the cached engine is valid for this model, TensorRT
   version and GPU (built here first with ``--build-engine``), and the INT8
   calibration cache it was built with is present and unchanged; the engine
   and calibration-cache hashes are logged and recorded;
5. reference: the shipped reference images (``<model dir>/reference/``) run
   through the *active* backend agree with the stored FP32 outputs
   (top-1 agreement and probability difference for crops, box agreement for
   frames) at least as well as the model card asks;
6. camera: the camera opens and delivers frames.

The result is written to the database as a ``selftest`` event. The counter
calls ``last_result_ok(store)`` and shows ``blocking_message(store)`` instead
of reporting results while the last self-test failed. Messages say what a
technician can do; they never contain sample ids or operator names.
"""

from __future__ import annotations

import json
import logging
import shutil
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge_app import fsutil, paths
from edge_app.backends import BackendError, resolve_backend_name
from edge_app.imaging import preprocess
from edge_app.model.bundle import Classifier, Detector, Manifest, create_backend, sha256_file
from edge_app.store import Store, StoreError
from edge_app.store.db import damaged_message

logger = logging.getLogger(__name__)

EVENT_KIND = "selftest"
REFERENCE_DIR = "reference"
REFERENCE_FILE = "reference.json"
# Used when models/manifest.json has no "selftest" section (the model card's numbers
# belong there). One place: proposal in the deployment notes.
DEFAULT_THRESHOLDS = {
    "min_top1_agreement": 0.9,  # share of reference crops whose top-1 class matches FP32
    "max_prob_abs_diff": 0.25,  # largest |p_active - p_fp32| over every crop and class
    "min_detection_agreement": 0.8,  # matched boxes (IoU >= 0.5) / max(reference, found)
}
BOX_IOU = 0.5
CAMERA_FRAMES = 3
CAMERA_TIMEOUT_S = 15.0
DEFAULT_CAMERA = "v4l2:///dev/video0"
RESTART_HINT = "then restart the kiosk (or: sudo systemctl restart wbc-engine wbc-counter)"


@dataclass
class Check:
    name: str
    ok: bool
    message: str
    detail: dict = field(default_factory=dict)


@dataclass
class SelftestResult:
    checks: list[Check] = field(default_factory=list)
    backend: str | None = None
    model_version: str | None = None
    hashes: dict = field(default_factory=dict)
    precision: str | None = None  # the precision checked (``auto`` resolved: edge_app.model.precision)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]

    def summary(self) -> str:
        """One line for the display and the journal."""
        if self.ok:
            return f"self-test passed ({self.backend}, model {self.model_version})"
        return "SELF-TEST FAILED: " + " | ".join(f"{c.name}: {c.message}" for c in self.failures)

    def as_event(self) -> dict:
        return {"ok": self.ok, "backend": self.backend, "model_version": self.model_version,
                "precision": self.precision,
                "checks": {c.name: c.ok for c in self.checks},
                "failures": [{"check": c.name, "message": c.message} for c in self.failures],
                "hashes": self.hashes, "message": self.summary()}


def thresholds(manifest: Manifest) -> dict:
    """The model card's self-test thresholds from the manifest, defaults for any it leaves out."""
    given = manifest.data.get("selftest") or {}
    return {k: float(given.get(k, v)) for k, v in DEFAULT_THRESHOLDS.items()}


# -- individual checks ------------------------------------------------------------


def check_disk(data_dir: Path, min_free_mb: int) -> Check:
    probe = Path(data_dir)
    while not probe.exists() and probe != probe.parent:  # first boot: measure where it will be created
        probe = probe.parent
    try:
        free_mb = shutil.disk_usage(probe).free / 2**20
    except OSError as exc:
        return Check("disk", False, f"cannot read free space of {data_dir}: {exc}")
    if free_mb < min_free_mb:
        return Check("disk", False, f"only {free_mb:.0f} MB free in {data_dir} (need {min_free_mb} MB): "
                     "send pending results, then delete old exports or ask IT to free space",
                     {"free_mb": round(free_mb)})
    return Check("disk", True, f"{free_mb:.0f} MB free", {"free_mb": round(free_mb)})


def check_database(store: Store) -> Check:
    try:
        verdict = store.integrity_check()
    except Exception as exc:  # sqlite3.DatabaseError on a file that is not a database
        verdict = str(exc)
    if verdict != "ok":
        return Check("database", False, damaged_message(store.path, verdict[:120]))
    return Check("database", True, "integrity ok")


def check_model_files(manifest: Manifest) -> Check:
    checked = []
    try:
        for net in ("detector", "classifier"):
            for kind in manifest.entry(net)["files"]:
                checked.append(manifest.file(net, kind, verify=True).name)
    except BackendError as exc:
        return Check("model", False, f"{exc}")
    except KeyError as exc:
        return Check("model", False, f"model manifest in {manifest.dir} lacks {exc} (reinstall the model folder)")
    return Check("model", True, f"{len(checked)} files match the manifest (version {manifest.version})")


def check_engines(manifest: Manifest, precision: str, engine_dir: Path, build: bool, hashes: dict) -> Check:
    """TensorRT only: engines valid (or built) and their calibration caches intact."""
    from edge_app.backends import tensorrt as trt_backend
    from edge_app.backends.engine_cache import read_sidecar

    notes = []
    for net in ("detector", "classifier"):
        try:
            plan, state = trt_backend.ensure_engine(manifest, net, precision, engine_dir, build=build)
        except BackendError as exc:
            return Check("engine", False, str(exc))
        hashes[f"{net}_engine"] = {"file": state.path.name, "sha256": state.engine_sha256}
        logger.info("%s engine %s sha256 %s", net, state.path.name, state.engine_sha256)
        if plan.calibrate:
            cache = plan.calibration_cache
            recorded = (read_sidecar(state.path) or {}).get("calibration_cache_sha256")
            if not cache.is_file():
                return Check("engine", False, f"INT8 calibration cache {cache} for the {net} is missing, so its "
                             f"engine cannot be verified or rebuilt identically; {trt_backend.REBUILD_HINT}")
            actual = sha256_file(cache)
            if recorded and actual != recorded:
                return Check("engine", False, f"INT8 calibration cache {cache.name} changed since the {net} engine "
                             f"was built (sha256 {actual[:12]} != {recorded[:12]}); {trt_backend.REBUILD_HINT}")
            hashes[f"{net}_calibration_cache"] = {"file": cache.name, "sha256": actual}
            logger.info("%s calibration cache %s sha256 %s", net, cache.name, actual)
        notes.append(f"{net} {plan.key.precision} ok")
    return Check("engine", True, ", ".join(notes))


def _plain(name) -> bool:
    try:
        fsutil.safe_name(name)
    except fsutil.UnsafePathError:
        return False
    return True


def load_reference(manifest: Manifest) -> dict:
    path = manifest.dir / REFERENCE_DIR / REFERENCE_FILE
    try:
        ref = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BackendError(f"reference outputs missing: {path} (reinstall the model folder)") from None
    except (OSError, ValueError) as exc:
        raise BackendError(f"reference outputs {path} unreadable: {exc} (reinstall the model folder)") from None
    items = [i for k in ("classifier", "detector") for i in (ref.get(k) or []) if isinstance(ref.get(k), list)]
    unsafe = [repr(i.get("file")) if isinstance(i, dict) else repr(i) for i in items
              if not (isinstance(i, dict) and _plain(i.get("file")))]
    if unsafe:  # every name in the list is read inside the reference folder, never beside or above it
        raise BackendError(f"reference list {path} names files outside its folder: {', '.join(unsafe[:3])} "
                           "(reinstall the model folder from the release)")
    if str(ref.get("model_version")) != manifest.version:
        raise BackendError(f"reference outputs are for model {ref.get('model_version')}, the installed model is "
                           f"{manifest.version} (reinstall the model folder)")
    return ref


def box_agreement(ref_boxes: np.ndarray, boxes: np.ndarray, iou: float = BOX_IOU) -> tuple[int, int]:
    """(matched, max(len(ref), len(found))): greedy one-to-one IoU matching."""
    ref_boxes = np.asarray(ref_boxes, np.float32).reshape(-1, 4)
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    used: set[int] = set()
    matched = 0
    for r in ref_boxes:
        best, best_j = iou, -1
        for j, b in enumerate(boxes):
            if j in used:
                continue
            ix = max(0.0, min(r[2], b[2]) - max(r[0], b[0]))
            iy = max(0.0, min(r[3], b[3]) - max(r[1], b[1]))
            inter = ix * iy
            union = (r[2] - r[0]) * (r[3] - r[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
            v = inter / union if union > 0 else 0.0
            if v >= best:
                best, best_j = v, j
        if best_j >= 0:
            used.add(best_j)
            matched += 1
    return matched, max(len(ref_boxes), len(boxes))


def _sha_or_none(path: Path) -> str | None:
    try:
        return sha256_file(path)
    except OSError:
        return None


def check_reference(manifest: Manifest, classifier: Classifier, detector_backend, limits: dict) -> Check:
    """Reference images through the active backend vs the stored FP32 outputs."""
    try:
        ref = load_reference(manifest)
    except BackendError as exc:
        return Check("reference", False, str(exc))
    ref_dir = manifest.dir / REFERENCE_DIR
    crops, frames = ref.get("classifier", []), ref.get("detector", [])
    if not crops or not frames:
        return Check("reference", False, f"{ref_dir / REFERENCE_FILE} lists no reference crops or frames "
                     "(reinstall the model folder)")
    agree, worst = 0, 0.0
    detector = Detector.for_manifest(detector_backend, manifest, float(ref.get("detect_threshold", 0.35)))
    damaged = [item["file"] for item in crops + frames
               if item.get("sha256") and _sha_or_none(ref_dir / item["file"]) != item["sha256"]]
    if damaged:
        return Check("reference", False, f"reference image(s) missing or damaged in {ref_dir}: "
                     f"{', '.join(damaged[:3])} (reinstall the model folder)")
    try:
        for item in crops:
            got = classifier(preprocess.read_rgb(str(ref_dir / item["file"]))).probs
            want = np.asarray(item["probs"], np.float32)
            agree += int(np.argmax(got) == np.argmax(want))
            worst = max(worst, float(np.max(np.abs(got - want))))
        matched = total = 0
        for item in frames:
            found = detector(preprocess.read_rgb(str(ref_dir / item["file"])))
            m, t = box_agreement(np.asarray(item["boxes"], np.float32), np.array([d.box for d in found]))
            matched, total = matched + m, total + t
    except (OSError, ValueError) as exc:
        return Check("reference", False, f"reference image unreadable in {ref_dir}: {exc} (reinstall the model folder)")
    except BackendError as exc:
        return Check("reference", False, f"inference failed on the reference images: {exc}")
    top1 = agree / len(crops)
    det = matched / total if total else 1.0
    detail = {"top1_agreement": round(top1, 4), "max_prob_abs_diff": round(worst, 4),
              "detection_agreement": round(det, 4), "crops": len(crops), "frames": len(frames), "limits": limits}
    problems = []
    if top1 < limits["min_top1_agreement"]:
        problems.append(f"top-1 agreement {top1:.0%} < {limits['min_top1_agreement']:.0%}")
    if worst > limits["max_prob_abs_diff"]:
        problems.append(f"probability difference {worst:.2f} > {limits['max_prob_abs_diff']:.2f}")
    if det < limits["min_detection_agreement"]:
        problems.append(f"detection agreement {det:.0%} < {limits['min_detection_agreement']:.0%}")
    if problems:
        return Check("reference", False, "the active model gives different answers than the validated one ("
                     + "; ".join(problems) + "): do not use for patients; rebuild the engine "
                     "(sudo systemctl restart wbc-engine) and call service if it persists", detail)
    return Check("reference", True, f"{len(crops)} crops top-1 {top1:.0%}, max diff {worst:.2f}; "
                 f"{len(frames)} frames boxes {det:.0%}", detail)


def check_site(path: str | Path, manifest: Manifest, hashes: dict) -> Check:
    """The configured site profile: present, fitted for this model version, head file as recorded."""
    from edge_app.site import profile as site_profile

    try:
        prof = site_profile.load(path, manifest)
    except BackendError as exc:  # SiteError: the message says what to do
        return Check("site", False, str(exc))
    hashes["site_profile"] = {"name": prof.name, "file": str(Path(path) / site_profile.PROFILE_FILE),
                              "sha256": prof.sha256}
    held = prof.data.get("held_back", {})
    return Check("site", True, f"profile '{prof.name}' for model {manifest.version}, sha256 {prof.sha256[:12]}; "
                               f"held back {held.get('n')}: {held.get('before')} -> {held.get('after')}")


def check_camera(uri: str, capture_cfg=None, open_source=None, frames: int = CAMERA_FRAMES,
                 timeout_s: float = CAMERA_TIMEOUT_S) -> Check:
    """The camera opens and delivers ``frames`` frames within ``timeout_s``."""
    if open_source is None:
        from edge_app.capture import open_source
    from edge_app.capture import CaptureError

    hint = "check the microscope camera's USB cable and that nothing else uses it, " + RESTART_HINT
    got: list = []
    error: list = []

    def grab(source) -> None:
        try:
            while len(got) < frames:
                frame = source.read()
                if frame is None:
                    return
                got.append(frame.image.shape if hasattr(frame, "image") else np.shape(frame))
        except Exception as exc:  # CaptureError, or a driver's own error: reported, not raised
            error.append(exc)

    try:
        source = open_source(uri, capture_cfg)
        source.open()
    except CaptureError as exc:
        return Check("camera", False, f"camera {uri} cannot be opened: {exc}; {hint}")
    try:
        # read() of a hung USB camera can block for ever: give it a deadline.
        worker = threading.Thread(target=grab, args=(source,), daemon=True)
        t0 = time.monotonic()
        worker.start()
        worker.join(timeout_s)
        waited = time.monotonic() - t0
    finally:
        if not worker.is_alive():
            source.close()
    if error:
        return Check("camera", False, f"camera {uri} failed while reading: {error[0]}; {hint}")
    if len(got) < frames:
        why = "stopped" if not worker.is_alive() else f"gave nothing for {waited:.0f} s"
        return Check("camera", False, f"camera {uri} delivered {len(got)} of {frames} frames ({why}); {hint}")
    return Check("camera", True, f"{uri}: {len(got)} frames {got[0][1]}x{got[0][0]}")


# -- the whole run ------------------------------------------------------------------


def run_selftest(cfg, data_dir: str | Path, *, model_dir: str | Path | None = None, camera: str | None = None,
                 check_cam: bool = True, build_engine: bool = False, open_source=None) -> SelftestResult:
    """Run every check; never raises for a failing kiosk (each failure is a Check)."""
    data_dir = Path(data_dir)
    result = SelftestResult()
    result.checks.append(check_disk(data_dir, cfg.store.min_free_mb))
    try:
        with Store(data_dir) as store:
            result.checks.append(check_database(store))
    except StoreError as exc:
        result.checks.append(Check("database", False, str(exc)))
    except sqlite3.DatabaseError as exc:  # not a database at all: opening it already fails
        result.checks.append(Check("database", False, f"database in {data_dir} cannot be read ({exc}); call "
                                   "service and do not delete it: results not yet sent may be inside"))
    try:
        manifest = Manifest.load(model_dir or cfg.model.dir)
    except BackendError as exc:
        result.checks.append(Check("model", False, str(exc)))
        manifest = None
    if manifest is not None:
        result.model_version = manifest.version
        model_check = check_model_files(manifest)
        result.checks.append(model_check)
        if model_check.ok:
            _check_inference(cfg, data_dir, manifest, build_engine, result)
        if cfg.model.site:
            result.checks.append(check_site(cfg.model.site, manifest, result.hashes))
    if check_cam:
        uri = camera or DEFAULT_CAMERA
        result.checks.append(check_camera(uri, cfg.capture, open_source))
    for c in result.checks:
        (logger.info if c.ok else logger.error)("selftest %s: %s: %s", c.name, "ok" if c.ok else "FAILED", c.message)
    return result


def _check_inference(cfg, data_dir: Path, manifest: Manifest, build_engine: bool, result: SelftestResult) -> None:
    try:
        result.backend = resolve_backend_name(cfg.inference.backend)
    except BackendError as exc:
        result.checks.append(Check("engine", False, str(exc)))
        return
    from edge_app.model import precision as auto_precision

    # "auto" on a CPU is measured again here (both precisions checked and timed), then the chosen one is checked.
    precision = auto_precision.resolve(cfg.inference.precision, result.backend, manifest, data_dir,
                                       cfg.inference.threads, remeasure=True)
    result.precision = precision
    engine_dir = paths.engine_dir(cfg.inference.engine_dir, data_dir)
    backends = []
    try:
        if result.backend == "tensorrt":
            engines = check_engines(manifest, precision, engine_dir, build_engine, result.hashes)
            result.checks.append(engines)
            if not engines.ok:
                return
            from edge_app.backends.tensorrt import TensorRTBackend

            for net in ("detector", "classifier"):
                backends.append(TensorRTBackend.from_manifest(manifest, net, precision, engine_dir, build=False))
        else:
            kind = "tflite_int8" if precision == "int8" else "tflite_fp32"
            for net in ("detector", "classifier"):
                path = manifest.file(net, kind, verify=False)  # verified by the model check
                result.hashes[f"{net}_engine"] = {"file": path.name, "sha256": manifest.entry(net)["sha256"][path.name]}
                backends.append(create_backend(manifest, net, "tflite", precision, cfg.inference.threads))
            result.checks.append(Check("engine", True, f"TFLite {precision} (no engine to build on a CPU)"))
        classifier = Classifier.for_manifest(backends[1], manifest)  # as the reference outputs were made
        result.checks.append(check_reference(manifest, classifier, backends[0], thresholds(manifest)))
    except BackendError as exc:
        result.checks.append(Check("reference", False, f"the model cannot be loaded: {exc}"))
    finally:
        for b in backends:
            b.close()


# -- what the counter asks ------------------------------------------------------------


NOT_FINISHED = ("SELF-TEST DID NOT FINISH (crashed or was stopped): restart the kiosk; call service if this "
                "happens again")


def record_started(store: Store) -> None:
    """A failing result first: if the self-test dies (a native crash in a runtime, power cut),
    the last recorded result still blocks the counter instead of an older pass."""
    store.log_event(EVENT_KIND, {"ok": False, "started": True, "message": NOT_FINISHED, "checks": {},
                                 "failures": [{"check": "selftest", "message": NOT_FINISHED}]})


def record(store: Store, result: SelftestResult) -> None:
    store.log_event(EVENT_KIND, result.as_event())


def last_result(store: Store) -> dict | None:
    row = store.last_event(EVENT_KIND)
    if row is None:
        return None
    try:
        detail = json.loads(row["detail"] or "{}")
    except ValueError:
        return None
    detail["at"] = row["at"]
    return detail


def last_result_ok(store: Store, model_version: str | None = None) -> bool:
    """True only when the latest self-test passed (for this model version, if given)."""
    last = last_result(store)
    if not last or last.get("ok") is not True:
        return False
    return model_version is None or str(last.get("model_version")) == str(model_version)


def blocking_message(store: Store, model_version: str | None = None) -> str | None:
    """What the display shows instead of results, or None when the counter may report."""
    last = last_result(store)
    if last is None:
        return "No self-test has run yet: results are not reported. Restart the kiosk to run it."
    if last.get("ok") is not True:
        return (last.get("message") or "SELF-TEST FAILED") + " - results are not reported until it passes."
    if model_version is not None and str(last.get("model_version")) != str(model_version):
        return (f"The self-test ran on model {last.get('model_version')}, this is {model_version}: "
                "results are not reported. Restart the kiosk to test the new model.")
    return None


__all__ = ["Check", "SelftestResult", "run_selftest", "record", "record_started", "last_result", "last_result_ok",
           "blocking_message", "thresholds", "DEFAULT_THRESHOLDS"]
