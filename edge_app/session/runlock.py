"""One counter per data dir: an OS lock held for the whole of a ``run`` (or ``bench``).

Two counters on one data dir would resume the same open session and count
into it together, or abort each other's. The lock is an advisory ``flock`` on
``paths.run_lock_path(data)``, taken before any session is opened or aborted;
the kernel releases it when the process ends, however it ends, so a crash or
a power cut never leaves a stale lock. The file holds the owner's pid, only
to name it in the message.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
from pathlib import Path

from edge_app import paths
from edge_app.store.db import StoreError

logger = logging.getLogger(__name__)


class CounterBusy(StoreError):
    """Another counter holds this data dir; the message says so and what to do (a StoreError, so
    every verb reports it as one line)."""


class RunLock:
    def __init__(self, data_dir: str | Path):
        self.data_dir = Path(data_dir)
        self.path = paths.run_lock_path(self.data_dir)
        self._fd: int | None = None

    def acquire(self) -> "RunLock":
        """Hold the lock, or raise CounterBusy naming the process that does."""
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o750)
        except OSError as exc:
            raise StoreError(f"cannot create the data dir {self.data_dir}: {exc.strerror or exc}") from None
        # O_NOFOLLOW: a link planted in its place is refused, not followed.
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            raise StoreError(f"cannot create the counter's lock file {self.path}: {exc.strerror or exc} "
                             "(it must be a plain file in a writable --data-dir)") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            owner = _read_owner(fd)
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise CounterBusy(f"another counter is running on the data dir {self.data_dir}"
                              + (f" (pid {owner})" if owner else "")
                              + ": wait until it finishes, or stop it first (e.g. 'systemctl stop wbc-counter'); "
                              "its session was not touched") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read_owner(fd: int) -> str:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return ""
    return text if text.isdigit() else ""
