"""One deliverer at a time per data directory.

The systemd timer, a ``sync --loop`` daemon and a technician's ``lis send``
may start together; FHIR would absorb a double send, a serial LIS line would
not (two processes interleaving frames). An advisory ``flock`` on
``<data-dir>/sync.lock`` is released by the kernel when a process dies, so a
crash never leaves a stale lock behind.
"""

from __future__ import annotations

import fcntl
import logging
import os
from pathlib import Path

logger = logging.getLogger(__name__)


class SyncLock:
    def __init__(self, data_dir: Path):
        self.path = Path(data_dir) / "sync.lock"
        self._fd = None

    def acquire(self) -> bool:
        """True if this process now holds the lock; False if another one does."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "SyncLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()
