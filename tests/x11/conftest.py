"""One Xvfb for every test in x11/: the real windows (OpenCV/Tk sinks, the review window) open on it."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def xvfb():
    """One Xvfb for the whole run: Tk keeps its X connection after a window closes,
    and Xlib ends the process if that server goes away while Tk still holds it."""
    if not shutil.which("Xvfb"):
        pytest.skip("Xvfb not installed (apt-get install -y xvfb)")
    pytest.importorskip("tkinter")
    for n in range(91, 140):
        if not Path(f"/tmp/.X11-unix/X{n}").exists() and not Path(f"/tmp/.X{n}-lock").exists():
            break
    proc = subprocess.Popen(["Xvfb", f":{n}", "-screen", "0", "1280x720x24", "-nolisten", "tcp"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        if Path(f"/tmp/.X11-unix/X{n}").exists():
            break
        time.sleep(0.05)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DISPLAY", f":{n}")
        yield f":{n}"
    proc.terminate()
    proc.wait(10)
