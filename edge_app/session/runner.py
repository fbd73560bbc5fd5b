"""One live session end to end: open or resume, loop, finish.

Used by ``wbc-counter run`` (with a display) and ``wbc-counter bench``
(headless, throw-away database), so both measure the same code.

Restart policy after a crash or power cut (a session still 'open'):
- live source (camera, replay): the open session is **resumed**: same session
  id and sample id, the tally rebuilt from its committed cells; the technician
  carries on where the stage is. A different ``--sample-id`` aborts it instead.
- recorded source (video file, image folder): the open session is **aborted**
  (status 'aborted', its cells kept for audit) and a new one started, because
  replaying the recording would count the same cells twice.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from dataclasses import dataclass

from edge_app import selftest
from edge_app.capture import CaptureState, CaptureThread
from edge_app.counting.tally import Tally
from edge_app.display import HudInfo, render_hud
from edge_app.model.bundle import sha256_file
from edge_app.session.pipeline import Pipeline, load_flat_field
from edge_app.store import Store, StoreError, utcnow
from edge_app.store.db import NO_CELL_REASON
from edge_app.store.writer import StoreWriter
from edge_app.store.writes import FramesWrite

logger = logging.getLogger(__name__)

PROGRESS_EVERY_S = 30.0  # a 'progress:' log line this often while counting

try:
    from edge_app.watchdog import SystemdNotifier
except ImportError:  # pragma: no cover - module shipped by the systemd work
    class SystemdNotifier:  # minimal no-op stand-in
        def ready(self, status=None): return False
        def watchdog(self): return False
        def status(self, text): return False
        def stopping(self): return False
        def close(self): return None


@dataclass
class SessionInfo:
    session_id: str
    tally: Tally
    frames_done: int
    resumed: bool
    meta: dict


def stored_calibration(store: Store, session_id: str) -> dict | None:
    """The calibration JSON recorded when the session opened (None for sessions from before the column)."""
    raw = store.session(session_id)["calibration"]
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return None


def site_calibration(bundle) -> dict:
    """The site profile a session counts with (name, sha256 of its profile.json, model version), or nulls."""
    site = getattr(bundle, "site", None)
    if site is None:
        return {"site_profile": None, "site_profile_sha256": None}
    return site.calibration()


def device_calibration(cfg, box_scale: float, box_refine: bool = False, bundle=None) -> dict:
    """The per-device settings that shape what the network sees and the boxes it gives, as stored with
    each new session: the box scale and refinement in force and the blank-field capture (path and sha256);
    with ``bundle``, also the precision it runs (``auto`` resolved) and its mirrored pass and crop views."""
    flat = cfg.capture.flat_field
    digest = None
    if flat:
        try:
            digest = sha256_file(flat)
        except OSError:  # the pipeline has already refused an unreadable one; never block counting here
            digest = None
    out = {"box_scale": float(box_scale), "box_refine": bool(box_refine), "flat_field": flat,
           "flat_field_sha256": digest}
    if bundle is not None:
        out.update(precision=getattr(bundle, "precision", None),
                   detector_flip=bool(getattr(bundle.detector, "flip", False)),
                   tta_views=int(getattr(bundle.classifier, "views", 1)))
        if hasattr(bundle.detector, "threshold"):  # and where it came from: config, site profile or default
            out.update(detect_threshold=float(bundle.detector.threshold),
                       detect_threshold_source=getattr(bundle, "threshold_source", "default"))
        out.update(site_calibration(bundle))
        # "auto": measured from the first frames (the pipeline adds the figures once it has them)
        out["pixel_scale"] = ({"mode": "auto"} if getattr(bundle, "auto_scale", False)
                              else {"mode": "fixed", "factor": float(getattr(bundle.detector, "scale", 1.0))})
    return out


def open_or_resume(store: Store, cfg, *, live: bool, sample_id: str | None, backend: str, model_version: str,
                   target: int, wbc_count: float | None, calibration: dict | None = None) -> SessionInfo:
    """Apply the restart policy (module docstring) and return the session to count into."""
    operator, device = cfg.kiosk.operator, cfg.kiosk.device_id
    for row in reversed(store.open_sessions()):
        same_sample = sample_id is None or sample_id == row["sample_id"]
        if live and same_sample:
            logger.info("resuming open session %s (%d frames so far)", row["id"], row["frames"])
            tally = Tally.from_store(store, row["id"], row["target"], cfg.tally.ci_method, row["wbc_count"])
            meta = {k: row[k] for k in ("sample_id", "operator", "device", "model_version", "backend")}
            # Other open sessions (should not exist) are closed cleanly.
            for other in store.open_sessions():
                if other["id"] != row["id"]:
                    store.abort_session(other["id"])
            return SessionInfo(row["id"], tally, int(row["frames"]), True, meta)
        logger.warning("aborting unfinished session %s (%s)", row["id"],
                       "recorded source: replaying it would count cells twice" if live is False
                       else "a different sample was started")
        store.abort_session(row["id"])
    sid = store.open_session(target=target, sample_id=sample_id, operator=operator, device=device,
                             model_version=model_version, backend=backend, wbc_count=wbc_count,
                             calibration=calibration)
    logger.info("session %s opened", sid)
    meta = {"sample_id": sample_id, "operator": operator, "device": device, "model_version": model_version,
            "backend": backend}
    return SessionInfo(sid, Tally(target, cfg.tally.ci_method, wbc_count), 0, False, meta)


@dataclass
class RunResult:
    session_id: str
    reason: str  # 'target', 'source-ended', 'quit', 'signal', 'error'
    payload: dict | None  # the finalised result (None when left open)
    frames: int
    fps: float
    pipeline: Pipeline
    error: str | None = None


class LiveRun:
    """Drives capture -> pipeline -> display until the session ends."""

    def __init__(self, *, cfg, bundle, source, store: Store, sink=None, recorder=None, sample_id=None,
                 target: int | None = None, wbc_count: float | None = None, max_frames: int | None = None,
                 finalise: bool = True, notifier=None):
        self.cfg = cfg
        self.bundle = bundle
        self.source = source
        self.store = store
        self.sink = sink
        self.recorder = recorder
        self.finalise = finalise
        self.notifier = notifier or SystemdNotifier()
        self.target = target or cfg.tally.target
        self.info = open_or_resume(store, cfg, live=source.live, sample_id=sample_id, backend=bundle.backend_name,
                                   model_version=bundle.version, target=self.target,
                                   wbc_count=wbc_count if wbc_count is not None else cfg.tally.wbc_count,
                                   calibration=device_calibration(cfg, bundle.detector.box_scale,
                                                                      bundle.detector.refine, bundle))
        self.capture = CaptureThread(source, max_backoff_s=cfg.capture.reopen_max_backoff_s, max_frames=max_frames,
                                     wait_for_source=cfg.capture.wait_for_camera)
        self.writer = StoreWriter(store, cfg.store.crop_size, cfg.store.jpeg_quality)
        # A failed self-test (or one for another model) keeps results from being
        # reported: counting goes on for the technician, nothing enters the outbox.
        # A machine where no self-test ever ran (a laptop, a developer) is not blocked.
        self.blocked = None
        if selftest.last_result(store) is not None:
            self.blocked = selftest.blocking_message(store, bundle.version)
        if self.blocked:
            logger.error("results will not be reported: %s", self.blocked)
        self.pipeline = Pipeline(bundle, self.writer, self.info.tally, self.info.session_id, cfg,
                                 operator=cfg.kiosk.operator, frames_done=self.info.frames_done,
                                 flat=load_flat_field(cfg.capture.flat_field))
        if cfg.inference.overlap_analysis:  # flat field, quality, motion and the detector's input on the capture thread
            self.capture.prepare = self.pipeline.analyse_ahead
        self._stop = threading.Event()
        self._stop_reason = "signal"

    def request_stop(self, reason: str = "signal") -> None:
        self._stop_reason = reason
        self._stop.set()

    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT end the loop cleanly; the session stays open (resumable)."""
        def handler(signum, _frame):
            logger.info("signal %d: stopping after the current frame", signum)
            self.request_stop("signal")
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, handler)

    @property
    def headless(self) -> bool:
        return self.sink is None or getattr(self.sink, "name", "") == "headless"

    def _show(self, state, fps: float, finished: str = "") -> None:
        if self.headless and self.recorder is None:
            return  # nobody looks: do not spend the frame budget drawing
        site = getattr(self.bundle, "site", None)
        info = HudInfo(fps=fps, backend=self.bundle.backend_name, session=self.info.session_id,
                       site=site.name if site is not None else "",
                       capture_message=self.blocked or self.capture.message,
                       capture_ok=not self.blocked and self.capture.state in (CaptureState.STREAMING,
                                                                                CaptureState.ENDED),
                       events=self.pipeline.corrections.events, selected=self.pipeline.corrections.selected,
                       reclassify_mode=self.pipeline.corrections.reclassify_pending, finished=finished)
        canvas = render_hud(state, self.pipeline, info)
        if self.sink is not None:
            self.sink.show(canvas)
        if self.recorder is not None:
            self.recorder.write(canvas)

    def run(self) -> RunResult:
        p = self.pipeline
        self.writer.start()
        self.capture.start()
        self.notifier.ready("counting")
        reason = None
        state = None
        t_start = None
        t_progress, frames_progress = 0.0, 0
        fps = 0.0
        try:
            while reason is None:
                self.notifier.watchdog()
                if self._stop.is_set():
                    reason = self._stop_reason
                    break
                frame = self.capture.get(timeout=0.25)
                if frame is None:
                    if self.capture.finished:
                        reason = "source-ended" if self.capture.state == CaptureState.ENDED else "error"
                        break
                    p.apply_commits()
                    self._show(state, fps)  # camera lost / starting: say so
                    self._keys()
                    continue
                if t_start is None:
                    t_start = t_progress = time.perf_counter()
                    frames_progress = 0
                state = p.step(frame)
                elapsed = time.perf_counter() - t_start
                fps = p.frames_this_run / elapsed if elapsed > 0 else 0.0
                self._show(state, fps)
                if not self._keys():
                    reason = "quit"
                if self.writer.error:
                    reason = "error"
                elif p.tally.reached:
                    reason = "target"
                if p.frames_this_run % 30 == 0:
                    self.notifier.status(f"{p.tally.total}/{p.tally.target} cells, {fps:.1f} fps")
                now = time.perf_counter()
                if now - t_progress >= PROGRESS_EVERY_S:
                    # The rate of the last interval, not since the start: a slowdown shows up (scripts.soak).
                    logger.info("progress: %d frames, %.1f fps over the last %.0f s, %d cells", p.frames_this_run,
                                (p.frames_this_run - frames_progress) / (now - t_progress), now - t_progress,
                                p.tally.total)
                    t_progress, frames_progress = now, p.frames_this_run
        finally:
            self.capture.stop()
        if self.capture.state == CaptureState.FAILED and self.capture.error and reason != "quit":
            reason = "error"
        elapsed = (time.perf_counter() - t_start) if t_start else 0.0
        fps = p.frames_this_run / elapsed if elapsed > 0 else 0.0
        return self._finish(reason, fps, state)

    def _keys(self) -> bool:
        if self.sink is None:
            return True
        if not self.sink.is_open:
            return False
        while True:
            key = self.sink.poll_key()
            if key is None:
                return True
            if not self.pipeline.handle_key(key):
                return False

    def _result_state(self, reason: str) -> tuple[str, str | None]:
        """('final', None), or ('incomplete' | 'no-result', why): a source that ended before its declared
        end, or a count without one five-part cell, is never a result to send as it stands."""
        short = None
        if reason == "source-ended" and not (self.capture.max_frames is not None
                                              and self.capture.read_count >= self.capture.max_frames):
            short = self.source.shortfall()
        if short:
            return "incomplete", short
        if not self.pipeline.tally.total:
            return "no-result", NO_CELL_REASON
        return "final", None

    def _finish(self, reason: str, fps: float, state) -> RunResult:
        p = self.pipeline
        self.notifier.stopping()
        if reason in ("source-ended", "quit"):
            p.flush()  # confirmed tracks still waiting for votes are real cells
        self.writer.submit(FramesWrite(self.info.session_id, p.frames))
        self.writer.close()
        p.apply_commits()
        error = self.writer.error or (self.capture.error if reason == "error" else None)
        payload = None
        if self.finalise and reason in ("target", "source-ended", "quit") and not self.writer.error:
            payload = p.tally.payload(session_id=self.info.session_id, meta=self.info.meta, frames=p.frames,
                                      fps=fps, finalised_at=utcnow())
            # What the session was counted with (its stored calibration: a resumed session keeps its own).
            payload["device_calibration"] = stored_calibration(self.store, self.info.session_id)
            result_state, why = self._result_state(reason)  # not ``state``: that is the frame the screen shows
            payload.update(complete=result_state == "final", state=result_state, reason=why)
            destinations = () if self.blocked else ("fhir",)
            if self.blocked:  # kept with the result, so no later send (lis, sync) can deliver it either
                payload["not_reported"] = self.blocked
            try:
                self.store.finalise_session(self.info.session_id, payload, destinations=destinations,
                                            frames=p.frames, state=result_state, reason=why)
            except StoreError as exc:  # no longer open (another counter), or already has a result
                logger.error("session %s not finalised: %s", self.info.session_id, exc)
                payload, error, reason = None, str(exc), "error"
            else:
                logger.info("session %s finalised: %d cells (%s)%s", self.info.session_id, p.tally.total, reason,
                            "" if result_state == "final" else f"; {result_state.upper()}: {why}")
        if payload is None and reason == "error" and not p.tally.cells and not self.info.resumed:
            # The source never delivered (unreadable video, camera gone): nothing to keep open.
            self.store.abort_session(self.info.session_id)
        if not self.headless and reason == "target":
            # A clear signal on screen: hold the final picture briefly.
            until = time.monotonic() + 2.0
            while time.monotonic() < until and self.sink.is_open and self.sink.poll_key() is None:
                self._show(state, fps, finished=f"TARGET REACHED: {p.tally.total} cells")
                time.sleep(0.05)
        elif self.recorder is not None and reason == "target":
            self._show(state, fps, finished=f"TARGET REACHED: {p.tally.total} cells")
        return RunResult(self.info.session_id, reason, payload, p.frames, fps, p, error)
