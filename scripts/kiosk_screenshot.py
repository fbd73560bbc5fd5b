"""Screenshot of the live kiosk screen from a real run under Xvfb (for the README).

Starts Xvfb, runs ``wbc-counter run --source VIDEO`` with the window output in
it, grabs the whole X screen after ``--at`` seconds, stops the run (SIGTERM)
and writes the PNG. Needs Xvfb (``apt-get install -y xvfb``) and Pillow.

    python -m scripts.kiosk_screenshot --source samples/slide_pan_train.mp4 --out samples/screenshot_live.png
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--source", default=str(ROOT / "samples" / "slide_pan_train.mp4"))
    p.add_argument("--out", default=str(ROOT / "samples" / "screenshot_live.png"))
    p.add_argument("--at", type=float, default=20.0, help="seconds after start to grab the screen")
    p.add_argument("--backend", default="tflite")
    p.add_argument("--display", default=":87")
    p.add_argument("--config", default=None, help="config file passed to the run (e.g. another precision)")
    args = p.parse_args(argv)
    if not shutil.which("Xvfb"):
        print("Xvfb not found: apt-get install -y xvfb", file=sys.stderr)
        return 2
    from PIL import ImageGrab

    xvfb = subprocess.Popen(["Xvfb", args.display, "-screen", "0", "1280x720x24", "-nolisten", "tcp"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    data = tempfile.mkdtemp(prefix="wbc-shot-")
    try:
        time.sleep(1.0)
        env = {**os.environ, "DISPLAY": args.display}
        cmd = [sys.executable, "-m", "edge_app", "run", "--source", args.source, "--backend", args.backend,
               "--target", "200", "--data-dir", data] + (["--config", args.config] if args.config else [])
        run = subprocess.Popen(cmd, env=env, cwd=ROOT)
        time.sleep(args.at)
        if run.poll() is not None:
            print(f"the run ended before {args.at} s (exit {run.returncode})", file=sys.stderr)
            return 1
        ImageGrab.grab(xdisplay=args.display).save(args.out)
        run.send_signal(signal.SIGTERM)
        run.wait(30)
        print(f"wrote {args.out}")
        return 0
    finally:
        xvfb.terminate()
        xvfb.wait(10)
        shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
