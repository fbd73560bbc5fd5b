"""Frame sources behind one small interface: open, read the next frame, close.

Every source returns RGB uint8 frames (the networks' channel order). Cameras
(V4L2 through OpenCV, anything jetson-utils' ``videoSource`` opens) are live;
video files and image folders are read frame by frame; ``replay`` plays a file
or folder on its own clock like a camera, for tests of the live path.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edge_app.capture.uri import IMAGE_EXTENSIONS, SourceURI, URIError, parse_uri, replay_options
from edge_app.imaging.imagesize import decode_rgb

logger = logging.getLogger(__name__)


def _shown(location: str) -> str:
    """A file's name for a stored reason or a message: no control character reaches a terminal."""
    return "".join(ch if ch.isprintable() else "?" for ch in Path(location).name)


class CaptureError(RuntimeError):
    """A source cannot be opened or read; the message says what to do."""


@dataclass
class Frame:
    image: np.ndarray  # RGB uint8 (H, W, 3)
    index: int  # frame number within the source (0-based, counts dropped frames too)
    t: float  # time.monotonic() when it was decoded
    decode_ms: float  # time spent reading + decoding + colour conversion


class FrameSource:
    """Base class. ``read()`` returns a Frame, or None at the end of the stream.

    A live source raises CaptureError from ``read()`` when the device is lost.
    """

    live = False
    name = "source"

    def open(self) -> None:
        """Acquire the device or file; raises CaptureError."""

    def read(self) -> Frame | None:
        raise NotImplementedError

    def close(self) -> None:
        """Release the device or file."""

    def check(self) -> None:
        """Fail early (CaptureError) if the source clearly cannot work, before models load."""
        self.open()
        self.close()

    def shortfall(self) -> str | None:
        """Once ``read()`` has returned None: why the source ended before its declared end (a
        decode error or a truncated video, unreadable images), or None when all of it was read.
        A result counted from such a source is incomplete."""
        return None

    @property
    def fps(self) -> float | None:
        return None

    def __enter__(self):
        self.open()
        return self

    def __exit__(self, *exc):
        self.close()


class _OpenCVSource(FrameSource):
    """Shared by V4L2 cameras and video files: a cv2.VideoCapture."""

    def __init__(self, location: str):
        self.location = location
        self.cap: cv2.VideoCapture | None = None
        self.index = 0

    def _grab(self) -> Frame | None:
        t0 = time.perf_counter()
        ok, bgr = self.cap.read() if self.cap is not None else (False, None)
        if not ok or bgr is None:
            return None
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        frame = Frame(rgb, self.index, time.monotonic(), (time.perf_counter() - t0) * 1000)
        self.index += 1
        return frame

    @property
    def fps(self) -> float | None:
        if self.cap is None:
            return None
        v = self.cap.get(cv2.CAP_PROP_FPS)
        return float(v) if v and v > 0 and v < 1000 else None

    def close(self) -> None:
        if self.cap is not None:
            self.cap.release()
            self.cap = None


class V4L2Source(_OpenCVSource):
    """USB microscope camera: OpenCV's V4L2 backend, MJPEG, a 1-frame buffer."""

    live = True
    name = "v4l2"

    def __init__(self, device: str, width: int = 640, height: int = 480, fps: int = 30):
        super().__init__(device)
        self.width, self.height, self.want_fps = width, height, fps

    def open(self) -> None:
        if not Path(self.location).exists():
            raise CaptureError(f"camera {self.location} not found (is the microscope camera plugged in? "
                               "list cameras with 'ls /dev/video*')")
        cap = cv2.VideoCapture(self.location, cv2.CAP_V4L2)
        if not cap.isOpened():
            cap.release()
            raise CaptureError(f"cannot open camera {self.location} (in use by another program, or no "
                               "permission: add the user to the 'video' group)")
        # MJPEG keeps USB 2.0 bandwidth low enough for 640x480@30; a 1-frame
        # buffer means read() returns a fresh frame, not one queued seconds ago.
        cap.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter_fourcc(*"MJPG"))
        cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.width)
        cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.height)
        cap.set(cv2.CAP_PROP_FPS, self.want_fps)
        cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        self.cap = cap
        logger.info("camera %s open at %dx%d", self.location, int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)),
                    int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))

    def read(self) -> Frame | None:
        frame = self._grab()
        if frame is None:
            raise CaptureError(f"camera {self.location} stopped delivering frames (unplugged?)")
        return frame

    def check(self) -> None:
        # Opening a camera twice is slow; its device node is the cheap test.
        if not Path(self.location).exists():
            raise CaptureError(f"camera {self.location} not found (is the microscope camera plugged in? "
                               "list cameras with 'ls /dev/video*')")


# Containers whose frame count is an index (exact); elsewhere it is estimated from the duration.
_INDEXED_CONTAINERS = (".mp4", ".m4v", ".mov", ".avi")


class VideoFileSource(_OpenCVSource):
    """A recorded video (any container/codec OpenCV's FFmpeg reads).

    A read that fails before the frame count the file declares is a damaged or truncated file,
    not its end: reading stops there and ``shortfall()`` says how much was read.
    """

    name = "file"
    declared = 0  # frames the container declares (0: it does not say)
    _short: str | None = None

    def open(self) -> None:
        if "://" not in self.location and not Path(self.location).is_file():
            raise CaptureError(f"video file not found: {self.location}")
        cap = cv2.VideoCapture(self.location, cv2.CAP_FFMPEG)
        if not cap.isOpened():
            cap.release()
            raise CaptureError(f"cannot read video {self.location} (corrupt, or a codec FFmpeg lacks; "
                               "re-encode it as H.264/MP4V .mp4)")
        ok, first = cap.read()
        if not ok or first is None:
            cap.release()
            raise CaptureError(f"video {self.location} has no readable frames (corrupt or empty file)")
        self.cap = cap
        self._first = first
        self.index = 0
        self._short = None
        count = cap.get(cv2.CAP_PROP_FRAME_COUNT)
        self.declared = int(count) if count and 0 < count < 1e9 else 0

    def read(self) -> Frame | None:
        if self.index == 0 and getattr(self, "_first", None) is not None:
            # The frame read while probing the file is the first frame (no seek back:
            # some containers do not seek reliably).
            t0 = time.perf_counter()
            bgr, self._first = self._first, None
            frame = Frame(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), 0, time.monotonic(),
                          (time.perf_counter() - t0) * 1000)
            self.index = 1
            return frame
        frame = self._grab()
        if frame is None and self._short is None and self.index < self.declared - self._tolerance():
            self._short = (f"video {_shown(self.location)} could not be read past frame {self.index} of the "
                           f"{self.declared} it declares (damaged or truncated file)")
            logger.error("%s", self._short)
        return frame

    def _tolerance(self) -> int:
        # An indexed container's count is exact; a duration-based estimate may be off by a little.
        exact = Path(self.location).suffix.lower() in _INDEXED_CONTAINERS
        return 1 if exact else max(1, self.declared // 100)

    def shortfall(self) -> str | None:
        return self._short


class ImageFolderSource(FrameSource):
    """Every image in a folder (sorted by name), or a single image file."""

    name = "folder"

    def __init__(self, location: str):
        self.location = location
        self.paths: list[Path] = []
        self.pos = 0
        self.skipped = 0

    def open(self) -> None:
        p = Path(self.location)
        if p.is_file():
            self.paths = [p]
        elif p.is_dir():
            self.paths = sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_EXTENSIONS)
        else:
            raise CaptureError(f"image folder not found: {self.location}")
        if not self.paths:
            raise CaptureError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in folder {self.location}")
        self.pos = 0
        self.skipped = 0

    def read(self) -> Frame | None:
        while self.pos < len(self.paths):
            path = self.paths[self.pos]
            index = self.pos
            self.pos += 1
            t0 = time.perf_counter()
            try:
                data = np.fromfile(str(path), dtype=np.uint8)
            except OSError as exc:  # removed since open(), a folder named *.jpg, an I/O error
                self.skipped += 1
                logger.warning("skipping image %s: cannot read it (%s)", path.name, exc)
                continue
            try:
                rgb = decode_rgb(data)
            except ValueError as exc:
                # One bad file must not end a session: skip it, say so (the result is then incomplete).
                self.skipped += 1
                logger.warning("skipping image %s: %s", path.name, exc)
                continue
            return Frame(rgb, index, time.monotonic(), (time.perf_counter() - t0) * 1000)
        return None

    def shortfall(self) -> str | None:
        if not self.skipped:
            return None
        return f"{self.skipped} of {len(self.paths)} images in {_shown(self.location)} could not be read"


class ReplaySource(FrameSource):
    """A file or folder delivered on its own clock, like a camera (live=True).

    Frames become available at ``fps`` (default: the video's own, else 30);
    ``read()`` returns the frame that is current *now*, skipping frames the
    consumer was too slow for, exactly as a camera would overwrite them.
    """

    live = True
    name = "replay"

    def __init__(self, inner: FrameSource, fps: float | None = None, loop: bool = False):
        self.inner = inner
        self.want_fps = fps
        self.loop = loop
        self.t0 = 0.0
        self.next_index = 0
        self.rate = 30.0
        self.base = 0  # frames of the loops already played: added to the inner source's numbers
        self.inner_frames = 0

    def open(self) -> None:
        self.inner.open()
        self.rate = float(self.want_fps or self.inner.fps or 30.0)
        self.t0 = time.monotonic()
        self.next_index = 0
        self.inner_frames = 0

    def read(self) -> Frame | None:
        # Wait for the next frame time, then skip to whatever frame is current.
        due = self.t0 + self.next_index / self.rate
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        current = max(self.next_index, int((time.monotonic() - self.t0) * self.rate))
        frame = self.inner.read()
        while frame is not None and frame.index < current:
            frame = self.inner.read()
        if frame is None and self.loop and self.inner.shortfall() is None:  # a damaged file is not looped over
            # Frame numbers go on across loops, as a camera's do: the tracker ages its tracks by them,
            # and numbers starting again at 0 kept every track of every earlier loop alive.
            self.base += self.inner_frames
            self.inner.close()
            self.open()
            return self.read()
        if frame is None:
            return None
        self.next_index = frame.index + 1
        self.inner_frames = max(self.inner_frames, self.next_index)
        return dataclasses.replace(frame, index=frame.index + self.base) if self.base else frame

    @property
    def fps(self) -> float | None:
        return self.rate

    def close(self) -> None:
        self.inner.close()

    def check(self) -> None:
        self.inner.check()

    def shortfall(self) -> str | None:
        return self.inner.shortfall()


class JetsonSource(FrameSource):
    """Any jetson-utils ``videoSource`` URI (csi://0, rtsp://, v4l2 on a Jetson)."""

    live = True
    name = "jetson"

    def __init__(self, uri: str, width: int = 640, height: int = 480, fps: int = 30):
        self.uri = uri
        self.argv = [f"--input-width={width}", f"--input-height={height}", f"--input-rate={fps}"]
        self.src = None
        self.index = 0

    def open(self) -> None:
        try:
            from jetson_utils import videoSource  # only on JetPack images
        except ImportError as exc:
            raise CaptureError(f"source '{self.uri}' needs jetson-utils (JetPack); on this machine use "
                               "v4l2:///dev/video0, a video file or an image folder") from exc
        try:
            self.src = videoSource(self.uri, argv=self.argv)
        except Exception as exc:  # jetson-utils raises bare Exception
            raise CaptureError(f"cannot open {self.uri}: {exc} (camera connected? ribbon cable seated?)") from exc

    def read(self) -> Frame | None:
        from jetson_utils import cudaDeviceSynchronize, cudaToNumpy

        t0 = time.perf_counter()
        try:
            img = self.src.Capture(format="rgb8", timeout=1000)
        except Exception as exc:
            raise CaptureError(f"{self.uri} stopped delivering frames: {exc}") from exc
        if img is None:  # timeout: no frame yet
            if not self.src.IsStreaming():
                raise CaptureError(f"{self.uri} stopped streaming")
            return self.read()
        cudaDeviceSynchronize()
        rgb = np.array(cudaToNumpy(img), dtype=np.uint8, copy=True)
        frame = Frame(rgb, self.index, time.monotonic(), (time.perf_counter() - t0) * 1000)
        self.index += 1
        return frame

    def close(self) -> None:
        if self.src is not None:
            self.src.Close()
            self.src = None

    def check(self) -> None:
        try:
            import jetson_utils  # noqa: F401
        except ImportError as exc:
            raise CaptureError(f"source '{self.uri}' needs jetson-utils (JetPack); on this machine use "
                               "v4l2:///dev/video0, a video file or an image folder") from exc


def _jetson_utils_present() -> bool:
    try:
        import jetson_utils  # noqa: F401
    except ImportError:
        return False
    return True


def open_source(uri: str | SourceURI, capture_cfg=None) -> FrameSource:
    """Build (not yet open) the source for a URI. Raises CaptureError for bad URIs."""
    width = getattr(capture_cfg, "width", 640)
    height = getattr(capture_cfg, "height", 480)
    fps = getattr(capture_cfg, "fps", 30)
    try:
        spec = uri if isinstance(uri, SourceURI) else parse_uri(uri)
    except URIError as exc:
        raise CaptureError(str(exc)) from None
    if spec.kind == "v4l2":
        # On a Jetson, jetson-utils opens V4L2 cameras with hardware JPEG decode.
        if _jetson_utils_present():
            return JetsonSource(f"v4l2://{spec.location}", width, height, fps)
        return V4L2Source(spec.location, width, height, fps)
    if spec.kind == "jetson":
        return JetsonSource(spec.location, width, height, fps)
    if spec.kind == "file":
        return VideoFileSource(spec.location)
    if spec.kind == "folder":
        return ImageFolderSource(spec.location)
    if spec.kind == "replay":
        inner_kind = parse_uri(spec.location).kind
        inner = ImageFolderSource(spec.location) if inner_kind == "folder" else VideoFileSource(spec.location)
        try:
            fps, loop = replay_options(spec.options)
        except URIError as exc:
            raise CaptureError(str(exc)) from None
        return ReplaySource(inner, fps, loop)
    raise CaptureError(f"unsupported source kind {spec.kind}")
