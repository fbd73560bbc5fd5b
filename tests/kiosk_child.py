"""Child process for the SIGKILL test: the real live loop with the fake model.

    python -m tests.kiosk_child DATA_DIR SOURCE_URI

Logs "counted cell N" (debug) on stderr when a cell reaches the tally, i.e.
when the screen would show it.
"""

import logging
import sys

from edge_app.capture import open_source  # noqa: E402
from edge_app.config import load_config  # noqa: E402
from edge_app.session.runner import LiveRun  # noqa: E402
from edge_app.store import Store  # noqa: E402
from tests.fakes import FakeBundle  # noqa: E402

if __name__ == "__main__":
    logging.basicConfig(level=logging.DEBUG, stream=sys.stderr, format="%(name)s: %(message)s")
    cfg = load_config(None)
    run = LiveRun(cfg=cfg, bundle=FakeBundle(), source=open_source(sys.argv[2], cfg.capture),
                  store=Store(sys.argv[1]), target=1000)
    result = run.run()
    print(f"RESULT {result.session_id} {result.reason}", flush=True)
