"""Where the HUD goes: a jetson-utils videoOutput, a desktop window, nothing, and/or an MP4.

Window: OpenCV's own ``imshow`` when this OpenCV build has a GUI; the
``opencv-python-headless`` wheel has none, so the same window is then opened
with Tk (standard library) instead. Both show the HUD pixel for pixel and
return key presses for the technician's corrections.
"""

from __future__ import annotations

import logging
import os
import queue
from pathlib import Path

import cv2
import numpy as np

logger = logging.getLogger(__name__)

WINDOW_TITLE = "wbc-counter"


class DisplayError(RuntimeError):
    """A display or recorder cannot be opened; the message says what to do."""


class DisplaySink:
    name = "sink"

    def show(self, canvas_bgr: np.ndarray) -> None:
        raise NotImplementedError

    def poll_key(self) -> str | None:
        return None

    @property
    def is_open(self) -> bool:
        return True

    def close(self) -> None:
        return None


class HeadlessSink(DisplaySink):
    name = "headless"

    def show(self, canvas_bgr: np.ndarray) -> None:
        return None


def opencv_has_gui() -> bool:
    info = cv2.getBuildInformation()
    gui = info[info.find("GUI:"):].splitlines()[0] if "GUI:" in info else ""
    return bool(gui) and "NONE" not in gui.upper()


# waitKeyEx codes of the arrow keys (GTK/X11 keysyms, and the Windows/Qt virtual keys).
_ARROWS = {65361: "left", 65362: "up", 65363: "right", 65364: "down",
           2424832: "left", 2490368: "up", 2555904: "right", 2621440: "down"}


class OpenCVWindowSink(DisplaySink):
    name = "opencv"

    def __init__(self, fullscreen: bool = False):
        try:
            cv2.namedWindow(WINDOW_TITLE, cv2.WINDOW_NORMAL)
            if fullscreen:
                cv2.setWindowProperty(WINDOW_TITLE, cv2.WND_PROP_FULLSCREEN, cv2.WINDOW_FULLSCREEN)
        except cv2.error as exc:
            raise DisplayError(f"cannot open a window: {exc} (no display? use --headless)") from exc
        self._key: str | None = None
        self._open = True

    def show(self, canvas_bgr: np.ndarray) -> None:
        cv2.imshow(WINDOW_TITLE, canvas_bgr)
        k = cv2.waitKeyEx(1)
        if k >= 0:
            self._key = _ARROWS.get(k) or chr(k & 0xFF)
        try:
            if cv2.getWindowProperty(WINDOW_TITLE, cv2.WND_PROP_VISIBLE) < 1:
                self._open = False
        except cv2.error:
            self._open = False

    def poll_key(self) -> str | None:
        k, self._key = self._key, None
        return k

    @property
    def is_open(self) -> bool:
        return self._open

    def close(self) -> None:
        try:
            cv2.destroyWindow(WINDOW_TITLE)
        except cv2.error:
            pass


class TkWindowSink(DisplaySink):
    """A plain Tk window showing the HUD as a PPM image (no extra packages)."""

    name = "tk"

    def __init__(self, size: tuple[int, int], fullscreen: bool = False):
        try:
            import tkinter
        except ImportError as exc:
            raise DisplayError("no GUI toolkit: install opencv-python (not -headless) or python3-tk, "
                               "or use --headless") from exc
        try:
            self.root = tkinter.Tk(className=WINDOW_TITLE)
        except tkinter.TclError as exc:
            raise DisplayError(f"cannot open a window: {exc} (is DISPLAY set? use --headless)") from exc
        self.root.title(WINDOW_TITLE)
        self.root.configure(background="black")
        if fullscreen:
            self.root.attributes("-fullscreen", True)
        w, h = size
        self.root.geometry(f"{w}x{h}+0+0")
        self.label = tkinter.Label(self.root, borderwidth=0, highlightthickness=0, background="black")
        self.label.place(x=0, y=0)
        self._tk = tkinter
        self._photo = None
        self._keys: queue.Queue = queue.Queue()
        self._open = True
        self.root.bind("<Key>", self._on_key)
        self.root.protocol("WM_DELETE_WINDOW", self._on_close)

    def _on_key(self, event) -> None:
        # Arrows have no character: they come through as words (the gallery review moves with them).
        special = {"Tab": "\t", "Escape": "\x1b", "Return": "\r", "KP_Enter": "\r",
                   "Left": "left", "Right": "right", "Up": "up", "Down": "down"}
        ch = special.get(event.keysym, event.char)
        if ch:
            self._keys.put(ch)

    def _on_close(self) -> None:
        self._open = False

    def show(self, canvas_bgr: np.ndarray) -> None:
        if not self._open:
            return
        h, w = canvas_bgr.shape[:2]
        ppm = b"P6 %d %d 255\n" % (w, h) + cv2.cvtColor(canvas_bgr, cv2.COLOR_BGR2RGB).tobytes()
        # master: this window's interpreter, not whichever Tk was made first (the review window
        # may open in a process whose live window is gone).
        photo = self._tk.PhotoImage(master=self.root, data=ppm, format="PPM")
        self.label.configure(image=photo)
        self._photo = photo  # Tk keeps no reference of its own
        try:
            self.root.update()
        except self._tk.TclError:
            self._open = False

    def poll_key(self) -> str | None:
        try:
            return self._keys.get_nowait()
        except queue.Empty:
            return None

    @property
    def is_open(self) -> bool:
        return self._open

    def close(self) -> None:
        try:
            self.root.destroy()
        except Exception:  # already gone with the X server
            pass
        self._open = False


class JetsonSink(DisplaySink):
    """jetson-utils ``videoOutput`` (display://0 by default): the HDMI kiosk screen."""

    name = "jetson"

    def __init__(self, uri: str = "display://0"):
        try:
            from jetson_utils import videoOutput
        except ImportError as exc:
            raise DisplayError("display 'jetson' needs jetson-utils (JetPack); use 'opencv' or --headless") from exc
        self.out = videoOutput(uri)

    def show(self, canvas_bgr: np.ndarray) -> None:
        from jetson_utils import cudaFromNumpy

        rgb = np.ascontiguousarray(cv2.cvtColor(canvas_bgr, cv2.COLOR_BGR2RGB))
        self.out.Render(cudaFromNumpy(rgb))

    @property
    def is_open(self) -> bool:
        return bool(self.out.IsStreaming())

    def close(self) -> None:
        self.out.Close()


class Mp4Recorder:
    """Writes every shown screen to an MP4 (mp4v), at the session's nominal rate."""

    def __init__(self, path: str | Path, size: tuple[int, int], fps: float = 30.0):
        self.path = Path(path)
        if self.path.parent and not self.path.parent.exists():
            raise DisplayError(f"cannot record to {self.path}: folder {self.path.parent} does not exist")
        self.size = size
        self.writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*"mp4v"), float(fps), size)
        if not self.writer.isOpened():
            raise DisplayError(f"cannot record to {self.path} (not writable, or no MP4 encoder in this OpenCV)")
        self.frames = 0

    def write(self, canvas_bgr: np.ndarray) -> None:
        if (canvas_bgr.shape[1], canvas_bgr.shape[0]) != self.size:
            canvas_bgr = cv2.resize(canvas_bgr, self.size)
        self.writer.write(canvas_bgr)
        self.frames += 1

    def close(self) -> None:
        self.writer.release()


def _jetson_utils_present() -> bool:
    try:
        import jetson_utils  # noqa: F401
    except ImportError:
        return False
    return True


def open_display(kind: str, size: tuple[int, int] = (1280, 720), fullscreen: bool = False) -> DisplaySink:
    """'auto' | 'jetson' | 'opencv' | 'headless' -> a sink (raises DisplayError)."""
    if kind == "auto":
        if _jetson_utils_present():
            kind = "jetson"
        elif os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"):
            kind = "opencv"
        else:
            logger.info("no display found (DISPLAY unset): running headless")
            kind = "headless"
    if kind == "headless":
        return HeadlessSink()
    if kind == "jetson":
        return JetsonSink()
    if kind == "opencv":
        if opencv_has_gui():
            return OpenCVWindowSink(fullscreen)
        return TkWindowSink(size, fullscreen)
    raise DisplayError(f"unknown display '{kind}' (auto, jetson, opencv or headless)")
