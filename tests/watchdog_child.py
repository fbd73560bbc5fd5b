"""Child process for the watchdog test: the real live loop with the fake model, and a hang switch.

    python -m tests.watchdog_child DATA_DIR SOURCE_URI HANG_FILE

When HANG_FILE exists, the next detector call deletes it and blocks for good,
as an inference stuck in a GPU driver would: the loop stops pinging the
watchdog. The next instance finds no file and runs normally.
"""

import logging
import os
import sys
import time
from pathlib import Path

from edge_app.capture import open_source  # noqa: E402
from edge_app.config import load_config  # noqa: E402
from edge_app.session.runner import LiveRun  # noqa: E402
from edge_app.store import Store  # noqa: E402
from tests.fakes import FakeBundle  # noqa: E402

logger = logging.getLogger("watchdog_child")


class HangSwitch:
    """Wraps a backend; blocks its ``infer`` for good once the hang file appears."""

    def __init__(self, backend, hang_file: Path):
        self.backend, self.hang_file = backend, hang_file

    def __getattr__(self, name):
        return getattr(self.backend, name)

    def infer(self, x):
        if self.hang_file.exists():
            self.hang_file.unlink()
            logger.info("hanging in inference (pid %d)", os.getpid())
            while True:
                time.sleep(3600)
        return self.backend.infer(x)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s: %(message)s")
    data_dir, uri, hang_file = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    cfg = load_config(None)
    bundle = FakeBundle()
    bundle.detector.backend = HangSwitch(bundle.detector.backend, hang_file)
    run = LiveRun(cfg=cfg, bundle=bundle, source=open_source(uri, cfg.capture), store=Store(data_dir), target=1000)
    run.install_signal_handlers()
    result = run.run()
    print(f"RESULT {result.session_id} {result.reason}", flush=True)
