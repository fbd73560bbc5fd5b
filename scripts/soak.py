"""Soak test: one long headless ``wbc-counter run`` with its memory sampled.

    python -m scripts.soak --minutes 30
    python -m scripts.soak --minutes 5 --source 'replay://samples/slide_pan_train.mp4?fps=60&loop=1'

Starts ``wbc-counter run --source SOURCE --headless --target 10000`` (the
largest target the config accepts, so the run is not ended by reaching it) in
a subprocess with a throw-away data dir, samples the child's resident memory
(``/proc/PID/status`` VmRSS) every ``--every`` seconds and reads the fps the
run logs (its ``progress:`` lines), stops it with SIGTERM after ``--minutes``
and prints one JSON object: RSS after the first minute, its maximum after the
first minute, the final RSS and the drift (final minus first-minute value),
in MB, the RSS at each whole minute, and the fps series. Exit 1 when the
drift exceeds ``--max-drift-mb`` (the product's bound is 20 MB), or when the run ended on its own.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SOURCE = "replay://samples/slide_pan_train.mp4?fps=60&loop=1"
PROGRESS = re.compile(r"progress: (\d+) frames, ([\d.]+) fps")


def rss_mb(pid: int) -> float | None:
    """Resident set size of a process in MB (None once it has gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} x{os.cpu_count()}"
    except OSError:
        pass
    return platform.processor() or "unknown"


def soak(source: str, minutes: float, every_s: float, data_dir: Path, extra: list[str]) -> dict:
    cmd = [sys.executable, "-m", "edge_app", "run", "--source", source, "--headless", "--target", "10000",
           "--data-dir", str(data_dir), *extra]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    fps: list[tuple[float, float]] = []
    tail: list[str] = []
    t0 = time.monotonic()

    def read_log():
        for line in proc.stderr:
            m = PROGRESS.search(line)
            if m:
                fps.append((round(time.monotonic() - t0, 1), float(m.group(2))))
            tail.append(line.rstrip())
            del tail[:-20]

    reader = threading.Thread(target=read_log, daemon=True)
    reader.start()
    samples: list[tuple[float, float]] = []
    ended_early = False
    while time.monotonic() - t0 < minutes * 60:
        if proc.poll() is not None:
            ended_early = True
            break
        v = rss_mb(proc.pid)
        if v is not None:
            samples.append((round(time.monotonic() - t0, 1), round(v, 1)))
        time.sleep(every_s)
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    reader.join(timeout=5)
    after_first = [v for t, v in samples if t >= 60.0]
    first = after_first[0] if after_first else None
    final = samples[-1][1] if samples else None
    out = {
        "command": "wbc-counter " + " ".join(cmd[3:]),
        "cpu": cpu_name(),
        "minutes": minutes,
        "samples": len(samples),
        "rss_mb_after_first_minute": first,
        "rss_mb_max_after_first_minute": max(after_first) if after_first else None,
        "rss_mb_max": max(v for _, v in samples) if samples else None,
        "rss_mb_final": final,
        "drift_mb": None if first is None or final is None else round(final - first, 1),
        "rss_mb_by_minute": {str(m): next((v for t, v in samples if t >= 60.0 * m), None)
                             for m in range(1, int(minutes) + 1)},
        "fps": [v for _, v in fps],
        "rc": proc.returncode,
        "ended_early": ended_early,
    }
    if ended_early:
        out["log_tail"] = tail
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--source", default=DEFAULT_SOURCE)
    p.add_argument("--minutes", type=float, default=30.0)
    p.add_argument("--every", type=float, default=5.0, help="seconds between RSS samples")
    p.add_argument("--max-drift-mb", type=float, default=20.0)
    p.add_argument("--out", default=None, help="also write the JSON here")
    p.add_argument("run_args", nargs="*", help="more 'wbc-counter run' arguments (after --)")
    args = p.parse_args(argv)
    if not (args.minutes > 0 and args.every > 0):
        p.error("--minutes and --every must be positive")
    with tempfile.TemporaryDirectory(prefix="wbc-soak-") as tmp:
        out = soak(args.source, args.minutes, args.every, Path(tmp) / "data", args.run_args)
    text = json.dumps(out, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")
    drift = out["drift_mb"]
    return 1 if out["ended_early"] or drift is None or drift > args.max_drift_mb else 0


if __name__ == "__main__":
    sys.exit(main())
