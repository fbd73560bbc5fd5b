"""Source URIs, as jetson-utils names them.

``v4l2:///dev/video0`` (or ``/dev/video0``), ``csi://0``, ``rtsp://...``,
``file:///path/video.mp4`` or a plain path to a video, a folder of images
(``file:///path/dir/`` or a plain directory path), and ``replay://PATH`` (a
video or folder played back at its own frame rate as if it were a live
camera: for tests of the drop-stale path). ``?fps=N&loop=1`` options apply to
replay.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

logger = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov", ".m4v", ".webm", ".mjpeg", ".mjpg", ".ts")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
# Protocols only jetson-utils' videoSource speaks here (GStreamer pipelines).
JETSON_SCHEMES = ("csi", "rtp", "rtsp", "webrtc", "rtmp", "rtpmp2ts", "udp")


class URIError(ValueError):
    """A source URI that cannot be understood; the message says what is accepted."""


@dataclass(frozen=True)
class SourceURI:
    kind: str  # 'v4l2', 'jetson', 'file', 'folder', 'replay'
    location: str  # device path, file/folder path, or the whole URI for jetson
    options: dict = field(default_factory=dict)
    uri: str = ""

    @property
    def live(self) -> bool:
        """Live sources deliver frames on their own clock: stale frames get dropped."""
        return self.kind in ("v4l2", "jetson", "replay")


MAX_REPLAY_FPS = 1000.0
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def replay_options(options: dict) -> tuple[float | None, bool]:
    """(fps or None for the file's own, loop) from a replay URI's query; URIError naming a bad one."""
    unknown = sorted(set(options) - {"fps", "loop"})
    if unknown:
        raise URIError(f"unknown replay option '{unknown[0]}' (replay://FILE?fps=N&loop=1 takes fps and loop)")
    fps = None
    if "fps" in options:
        text = options["fps"]
        try:
            fps = float(text)
        except ValueError:
            fps = None
        if fps is None or not math.isfinite(fps) or not 0 < fps <= MAX_REPLAY_FPS:
            raise URIError(f"replay option fps={text!r} is not a frame rate: give a number above 0 and at most "
                           f"{MAX_REPLAY_FPS:.0f} (e.g. ?fps=30), or leave it out for the video's own rate")
    loop = options.get("loop", "0").strip().lower()
    if loop not in _TRUE + _FALSE:
        raise URIError(f"replay option loop={options['loop']!r}: use loop=1 (play again from the start) or loop=0")
    return fps, loop in _TRUE


def _path_kind(path: str, uri: str) -> str:
    p = Path(path)
    if p.is_dir():
        return "folder"
    if p.suffix.lower() in IMAGE_EXTENSIONS:
        return "folder"  # a single image is a one-frame folder
    if p.is_file():
        return "file"
    if not p.exists() and (p.suffix.lower() in VIDEO_EXTENSIONS or "/" in path):
        raise URIError(f"source not found: {path} (check the path, or use v4l2:///dev/video0 for a camera)")
    raise URIError(f"source '{uri}' is neither an existing file, folder nor a known URI "
                   "(use v4l2:///dev/video0, csi://0, a video file or an image folder)")


def parse_uri(uri: str) -> SourceURI:
    """Classify a source URI; raises URIError with what to do."""
    if not uri or not str(uri).strip():
        raise URIError("empty --source (use v4l2:///dev/video0, csi://0, a video file or an image folder)")
    uri = str(uri).strip()
    if uri.isdigit():  # OpenCV habit: "0" means the first camera
        return SourceURI("v4l2", f"/dev/video{uri}", {}, uri)
    if uri.startswith("/dev/video"):
        return SourceURI("v4l2", uri, {}, uri)
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    options = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    if scheme == "v4l2":
        dev = unquote(parts.path or parts.netloc)
        if dev.isdigit():
            dev = f"/dev/video{dev}"
        return SourceURI("v4l2", dev, options, uri)
    if scheme in JETSON_SCHEMES:
        return SourceURI("jetson", uri, options, uri)
    if scheme == "replay":
        path = unquote(parts.netloc + parts.path)
        _path_kind(path, uri)
        replay_options(options)  # refused here, with the accepted values, not deep in the capture thread
        return SourceURI("replay", path, options, uri)
    if scheme == "file":
        path = unquote(parts.netloc + parts.path)
        return SourceURI(_path_kind(path, uri), path, options, uri)
    if scheme in ("", ) or len(scheme) == 1:  # plain path (or a Windows drive letter)
        return SourceURI(_path_kind(uri, uri), uri, {}, uri)
    if scheme in ("http", "https"):
        return SourceURI("file", uri, options, uri)  # OpenCV/FFmpeg streams it
    raise URIError(f"unknown source scheme '{scheme}://' in '{uri}' "
                   "(use v4l2:///dev/video0, csi://0, rtsp://, file://, replay:// or a path)")
