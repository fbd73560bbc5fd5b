"""Logging: to stderr, or to the systemd journal with structured fields.

Never log sample ids or operator names (privacy): code logs session ids only.
"""

from __future__ import annotations

import logging
import os
import sys


def setup_logging(verbose: bool = False) -> None:
    level = logging.DEBUG if verbose else logging.INFO
    root = logging.getLogger()
    if root.handlers:
        root.setLevel(level)
        return
    handler: logging.Handler
    if os.environ.get("JOURNAL_STREAM") and os.environ.get("INVOCATION_ID"):
        # Under systemd: stderr goes to the journal; systemd adds the time.
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_JournalFormatter("%(name)s: %(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(level)
    for noisy in ("absl", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


class _JournalFormatter(logging.Formatter):
    """Prefix lines with the sd-daemon priority so the journal keeps levels."""

    _PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}

    def format(self, record: logging.LogRecord) -> str:
        return f"<{self._PRIORITY.get(record.levelno, 6)}>" + super().format(record)
