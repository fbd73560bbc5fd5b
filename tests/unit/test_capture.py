"""Capture: URI parsing, real file/folder sources, the newest-frame thread, reopen back-off."""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_app.capture import (  # noqa: E402
    CaptureError,
    CaptureState,
    CaptureThread,
    Frame,
    FrameSource,
    open_source,
    parse_uri,
)
from edge_app.capture.sources import ImageFolderSource, ReplaySource, VideoFileSource  # noqa: E402
from edge_app.capture.uri import URIError  # noqa: E402


def write_video(path: Path, n: int = 12, size=(160, 120)) -> None:
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 30.0, size)
    for i in range(n):
        img = np.zeros((size[1], size[0], 3), np.uint8)
        img[..., 2] = 200  # red in BGR
        cv2.putText(img, str(i), (20, 80), cv2.FONT_HERSHEY_SIMPLEX, 2, (255, 255, 255), 3)
        w.write(img)
    w.release()


def test_parse_uri_kinds(tmp_path):
    video = tmp_path / "a.mp4"
    write_video(video)
    assert parse_uri("v4l2:///dev/video0").kind == "v4l2"
    assert parse_uri("v4l2:///dev/video0").location == "/dev/video0"
    assert parse_uri("/dev/video2").location == "/dev/video2"
    assert parse_uri("0").location == "/dev/video0"
    assert parse_uri("csi://0").kind == "jetson"
    assert parse_uri("rtsp://cam.local/stream").kind == "jetson"
    assert parse_uri(str(video)).kind == "file"
    assert parse_uri(f"file://{video}").kind == "file"
    assert parse_uri(str(tmp_path)).kind == "folder"
    r = parse_uri(f"replay://{video}?fps=60&loop=1")
    assert (r.kind, r.location, r.options["fps"], r.live) == ("replay", str(video), "60", True)
    assert not parse_uri(str(video)).live and parse_uri("csi://0").live


@pytest.mark.parametrize("uri", ["", "ftp://x/y", "/no/such/file.mp4", "nothing-here"])
def test_parse_uri_rejects_with_a_hint(uri):
    with pytest.raises(URIError, match="v4l2:///dev/video0"):
        parse_uri(uri)


def test_video_file_reads_every_frame_as_rgb(tmp_path):
    video = tmp_path / "a.mp4"
    write_video(video, n=12)
    src = open_source(str(video))
    assert isinstance(src, VideoFileSource)
    with src:
        frames = []
        while (f := src.read()) is not None:
            frames.append(f)
    assert [f.index for f in frames] == list(range(12))
    r, g, b = frames[0].image[5, 5]
    assert r > 150 and b < 60  # RGB order, not OpenCV's BGR


def test_corrupt_video_is_a_clear_error(tmp_path):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00\x01 not a video" * 100)
    src = open_source(str(bad))
    with pytest.raises(CaptureError, match="cannot read video|no readable frames"):
        src.open()


def test_image_folder_skips_corrupt_files(tmp_path):
    for i in range(3):
        cv2.imwrite(str(tmp_path / f"f{i}.png"), np.full((48, 64, 3), 40 * i, np.uint8))
    (tmp_path / "f1b.jpg").write_bytes(b"garbage")
    src = open_source(str(tmp_path))
    assert isinstance(src, ImageFolderSource)
    with src:
        frames = []
        while (f := src.read()) is not None:
            frames.append(f)
    assert len(frames) == 3 and src.skipped == 1


def test_empty_folder_and_missing_camera_are_clear_errors(tmp_path):
    with pytest.raises(CaptureError, match="no images"):
        open_source(str(tmp_path)).open()
    with pytest.raises(CaptureError, match="not found"):
        open_source("v4l2:///dev/video99").open()


def test_csi_without_jetson_utils_says_what_to_do():
    try:
        import jetson_utils  # noqa: F401
        pytest.skip("jetson-utils present")
    except ImportError:
        pass
    with pytest.raises(CaptureError, match="jetson-utils"):
        open_source("csi://0").open()


def test_capture_thread_keeps_every_frame_of_a_file(tmp_path):
    video = tmp_path / "a.mp4"
    write_video(video, n=20)
    t = CaptureThread(open_source(str(video)))
    t.start()
    got = []
    while not t.finished:
        f = t.get(timeout=0.5)
        if f is not None:
            got.append(f.index)
            time.sleep(0.01)  # a slow consumer must not lose frames of a recording
    t.stop()
    assert got == list(range(20)) and t.dropped == 0 and t.state == CaptureState.ENDED


def test_replay_drops_stale_frames_for_a_slow_consumer(tmp_path):
    video = tmp_path / "a.mp4"
    write_video(video, n=40)
    src = open_source(f"replay://{video}?fps=200")
    assert isinstance(src, ReplaySource) and src.live
    t = CaptureThread(src)
    t.start()
    got = []
    while not t.finished:
        f = t.get(timeout=0.5)
        if f is not None:
            got.append(f.index)
            time.sleep(0.03)  # slower than the source's 5 ms per frame
    t.stop()
    assert got == sorted(got) and len(set(got)) == len(got)
    assert len(got) < 40 and t.dropped > 0  # newest frame wins


class FlakyCamera(FrameSource):
    """A live source: by default unplugged after 5 frames and back on the third reopen.

    ``failing_opens``: which opens find no camera; ``lost_at``: the read that loses it
    (None: never); ``frames``: reads after which the source ends."""

    live = True

    def __init__(self, failing_opens=(2, 3), lost_at: int | None = 6, frames: int = 12):
        self.failing_opens, self.lost_at, self.frames = failing_opens, lost_at, frames
        self.opens = 0
        self.i = 0

    def open(self):
        self.opens += 1
        if self.opens in self.failing_opens:
            raise CaptureError("camera /dev/video0 not found")

    def read(self):
        self.i += 1
        if self.i == self.lost_at:
            raise CaptureError("camera stopped delivering frames")
        if self.i > self.frames:
            return None
        time.sleep(0.005)
        return Frame(np.zeros((4, 4, 3), np.uint8), self.i, time.monotonic(), 0.0)


def test_lost_camera_is_reopened_with_backoff_and_reported():
    cam = FlakyCamera()
    t = CaptureThread(cam, first_backoff_s=0.05, max_backoff_s=0.2)
    states = set()
    t.start()
    got = []
    while not t.finished:
        states.add((t.state, t.message.split(":")[0]))
        f = t.get(timeout=0.05)
        if f is not None:
            got.append(f.index)
    t.stop()
    assert cam.opens == 4 and t.reopens == 2
    assert (CaptureState.REOPENING, "camera lost") in states
    assert max(got) == 12  # frames flow again after the reconnect


def test_image_folder_skips_a_file_it_cannot_read(tmp_path):
    for i in range(3):
        cv2.imwrite(str(tmp_path / f"f{i}.png"), np.full((48, 64, 3), 40 * i, np.uint8))
    (tmp_path / "f1b.jpg").mkdir()  # listed as an image, and np.fromfile raises OSError on it
    with open_source(str(tmp_path)) as src:
        frames = []
        while (f := src.read()) is not None:
            frames.append(f)
    assert len(frames) == 3 and src.skipped == 1


class BrokenMidStream(FrameSource):
    """A recording whose driver raises something other than CaptureError after two frames."""

    live = False

    def __init__(self):
        self.n = 0

    def open(self) -> None:
        self.n = 0

    def read(self):
        self.n += 1
        if self.n > 2:
            raise RuntimeError("driver bug")
        return Frame(np.zeros((8, 8, 3), np.uint8), self.n - 1, time.monotonic(), 0.0)

    def close(self) -> None:
        pass


def test_an_unexpected_error_mid_stream_is_a_failure_not_the_end_of_the_source():
    t = CaptureThread(BrokenMidStream())
    t.start()
    while not t.finished:
        t.get(timeout=0.05)
    t.stop()
    # ENDED would close the session as complete and queue a partial count for delivery
    assert t.state == CaptureState.FAILED
    assert "driver bug" in t.error and "frame 3" in t.error


def LateCamera():
    """A live camera that is not plugged in for its first two opens, then delivers 5 frames."""
    return FlakyCamera(failing_opens=(1, 2), lost_at=None, frames=5)


def test_a_camera_missing_at_start_fails_unless_waited_for():
    t = CaptureThread(LateCamera())
    t.start()
    t.join(5)
    assert t.state == CaptureState.FAILED and "not found" in t.error

    t = CaptureThread(LateCamera(), first_backoff_s=0.05, max_backoff_s=0.1, wait_for_source=True)
    messages, got = set(), []
    t.start()
    while not t.finished:
        messages.add(t.message.split(":")[0])
        f = t.get(timeout=0.02)
        if f is not None:
            got.append(f.index)
    t.stop()
    assert got == [1, 2, 3, 4, 5] and t.source.opens == 3
    assert any(m.startswith("waiting for the camera") for m in messages)


def test_waiting_for_a_camera_ends_cleanly_when_stopped():
    never_there = FlakyCamera(failing_opens=range(1, 10**6))
    t = CaptureThread(never_there, first_backoff_s=0.05, max_backoff_s=0.1, wait_for_source=True)
    t.start()
    time.sleep(0.3)
    assert t.state == CaptureState.REOPENING and not t.finished
    t.stop()
    assert t.state == CaptureState.ENDED and t.error is None
