"""The capture thread: decode off the hot path, newest frame wins.

Live sources (cameras, replay) write into a one-frame slot: when inference is
slower than the camera, the frame waiting in the slot is replaced by the newer
one (counted in ``dropped``) so the screen never lags behind the stage.
Recorded files go through a short blocking queue instead: every frame is
processed, so a video gives the same count on a fast or a slow machine.
A live camera that stops delivering is closed and reopened with exponential
back-off; ``state`` and ``message`` tell the display what is going on.
"""

from __future__ import annotations

import collections
import enum
import logging
import threading
import time

from edge_app.capture.sources import CaptureError, Frame, FrameSource

logger = logging.getLogger(__name__)


class CaptureState(str, enum.Enum):
    STARTING = "starting"
    STREAMING = "streaming"
    REOPENING = "reopening"
    ENDED = "ended"
    FAILED = "failed"


class CaptureThread(threading.Thread):
    """Owns the source; ``get()`` hands out frames to one consumer."""

    def __init__(self, source: FrameSource, drop_stale: bool | None = None, queue_size: int = 3,
                 first_backoff_s: float = 0.5, max_backoff_s: float = 10.0, max_frames: int | None = None,
                 wait_for_source: bool = False, prepare=None):
        super().__init__(name="capture", daemon=True)
        # Optional per-frame work done here, on every decoded frame in order, before it is handed out
        # (the pipeline's flat field, quality gate and stage motion): it then overlaps the consumer's.
        self.prepare = prepare
        self.source = source
        self.drop_stale = source.live if drop_stale is None else drop_stale
        self.capacity = 1 if self.drop_stale else max(1, queue_size)
        self.first_backoff_s = first_backoff_s
        self.max_backoff_s = max_backoff_s
        self.max_frames = max_frames
        # A live source that cannot be opened at start is retried with back-off, not failed.
        self.wait_for_source = wait_for_source
        self._buf: collections.deque[Frame] = collections.deque()
        self._cond = threading.Condition()
        self._stop_evt = threading.Event()
        self.state = CaptureState.STARTING
        self.message = "opening source"
        self.error: str | None = None
        self.read_count = 0
        self.dropped = 0
        self.reopens = 0

    # -- consumer side ----------------------------------------------------
    def get(self, timeout: float = 1.0) -> Frame | None:
        """The next frame, or None on timeout or once the stream has ended."""
        with self._cond:
            if not self._buf and self.state not in (CaptureState.ENDED, CaptureState.FAILED):
                self._cond.wait(timeout)
            if self._buf:
                frame = self._buf.popleft()
                self._cond.notify_all()
                return frame
            return None

    @property
    def finished(self) -> bool:
        """True once the source has ended (or failed) and every frame was taken."""
        with self._cond:
            return self.state in (CaptureState.ENDED, CaptureState.FAILED) and not self._buf

    def stop(self, timeout: float = 5.0) -> None:
        self._stop_evt.set()
        with self._cond:
            self._cond.notify_all()
        if self.is_alive():
            self.join(timeout)

    # -- producer side ----------------------------------------------------
    def _set(self, state: CaptureState, message: str) -> None:
        with self._cond:
            self.state = state
            self.message = message
            self._cond.notify_all()

    def _put(self, frame: Frame) -> None:
        with self._cond:
            if self.drop_stale:
                if self._buf:
                    self._buf.clear()
                    self.dropped += 1
                self._buf.append(frame)
            else:
                while len(self._buf) >= self.capacity and not self._stop_evt.is_set():
                    self._cond.wait(0.2)
                self._buf.append(frame)
            self._cond.notify_all()

    def _open_with_backoff(self, what: str = "camera lost") -> bool:
        delay = self.first_backoff_s
        while not self._stop_evt.is_set():
            try:
                self.source.open()
                return True
            except CaptureError as exc:
                self.reopens += 1
                msg = f"{what}: {exc}; retrying in {delay:.0f} s"
                logger.warning("%s", msg)
                self._set(CaptureState.REOPENING, msg)
                self._stop_evt.wait(delay)
                delay = min(delay * 2, self.max_backoff_s)
        return False

    def run(self) -> None:
        try:
            self.source.open()
        except CaptureError as exc:
            if not (self.wait_for_source and self.source.live):
                self.error = str(exc)
                self._set(CaptureState.FAILED, str(exc))
                return
            self._set(CaptureState.REOPENING, f"waiting for the camera: {exc}")
            if not self._open_with_backoff("waiting for the camera (plug in the microscope camera)"):
                self._set(CaptureState.ENDED, "stopped while waiting for the camera")
                return
        except Exception as exc:  # an OpenCV/driver bug must not kill the app silently
            logger.exception("source failed to open")
            self.error = f"source failed to open: {exc}"
            self._set(CaptureState.FAILED, self.error)
            return
        self._set(CaptureState.STREAMING, "streaming")
        try:
            while not self._stop_evt.is_set():
                if self.max_frames is not None and self.read_count >= self.max_frames:
                    self._set(CaptureState.ENDED, "frame limit reached")
                    break
                try:
                    frame = self.source.read()
                except CaptureError as exc:
                    if not self.source.live:
                        self.error = str(exc)
                        self._set(CaptureState.FAILED, str(exc))
                        break
                    logger.warning("source lost: %s", exc)
                    self.source.close()
                    self._set(CaptureState.REOPENING, f"camera lost: {exc}; reopening")
                    time.sleep(0.05)
                    if not self._open_with_backoff():
                        break
                    self._set(CaptureState.STREAMING, "camera back")
                    continue
                except Exception as exc:  # a driver/OS error mid-stream: a failure, never a finished source
                    logger.exception("source failed while reading")
                    self.error = f"source failed while reading frame {self.read_count + 1}: {exc}"
                    self._set(CaptureState.FAILED, self.error)
                    break
                if frame is None:
                    self._set(CaptureState.ENDED, "end of source")
                    break
                self.read_count += 1
                if self.prepare is not None:
                    try:
                        frame = self.prepare(frame)
                    except Exception as exc:  # a bug or a bad frame: said, never a silently short count
                        logger.exception("frame analysis failed")
                        self.error = f"frame {self.read_count} could not be analysed: {exc}"
                        self._set(CaptureState.FAILED, self.error)
                        break
                self._put(frame)
        finally:
            self.source.close()
            with self._cond:
                if self.state not in (CaptureState.ENDED, CaptureState.FAILED):
                    self.state = CaptureState.ENDED
                    self.message = "stopped"
                self._cond.notify_all()
