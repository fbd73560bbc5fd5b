"""systemd readiness and watchdog notifications (the sd_notify protocol, no dependency).

Under ``Type=notify`` systemd passes ``$NOTIFY_SOCKET`` (an AF_UNIX datagram
socket, ``@`` meaning the abstract namespace) and, with ``WatchdogSec=``,
``$WATCHDOG_USEC``. The service sends ``READY=1`` once it counts, then
``WATCHDOG=1`` at least every WATCHDOG_USEC; a loop that hangs stops pinging
and systemd kills and restarts it. ``STATUS=`` text shows in
``systemctl status``. Outside systemd every call is a no-op, so the same code
runs on a laptop.

The capture loop calls ``watchdog()`` every frame; it is rate-limited here to
one datagram per WATCHDOG_USEC/2, the interval sd_watchdog_enabled(3) advises.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from typing import Callable, Mapping

logger = logging.getLogger(__name__)


class SystemdNotifier:
    """Speaks to ``$NOTIFY_SOCKET``; every method is a no-op when it is unset."""

    def __init__(self, env: Mapping[str, str] | None = None, clock: Callable[[], float] = time.monotonic):
        env = os.environ if env is None else env
        self._clock = clock
        self._address = _socket_address(env.get("NOTIFY_SOCKET", ""))
        self.watchdog_interval_s = _watchdog_interval(env)
        self._last_ping: float | None = None
        self._sock: socket.socket | None = None
        self._warned = False

    @property
    def enabled(self) -> bool:
        return self._address is not None

    @property
    def watchdog_enabled(self) -> bool:
        return self.enabled and self.watchdog_interval_s is not None

    def notify(self, *fields: str) -> bool:
        """Send one datagram of ``KEY=value`` lines; False (logged once) if it cannot be sent."""
        if self._address is None:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto("\n".join(fields).encode("utf-8"), self._address)
            return True
        except OSError as exc:
            # A gone socket must never take the counter down with it.
            if not self._warned:
                logger.warning("cannot notify systemd at %s: %s", self._address, exc)
                self._warned = True
            return False

    def ready(self, status: str | None = None) -> bool:
        fields = ["READY=1", f"MAINPID={os.getpid()}"]
        if status:
            fields.append(f"STATUS={_one_line(status)}")
        return self.notify(*fields)

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={_one_line(text)}")

    def watchdog(self) -> bool:
        """Ping the watchdog; sends at most once per WATCHDOG_USEC/2. True when a ping went out."""
        if not self.watchdog_enabled:
            return False
        now = self._clock()
        if self._last_ping is not None and now - self._last_ping < self.watchdog_interval_s / 2:
            return False
        self._last_ping = now
        return self.notify("WATCHDOG=1")

    def watchdog_trigger(self, reason: str) -> bool:
        """Ask systemd to act as if the watchdog expired (a stage knows it is stuck)."""
        return self.notify("WATCHDOG=trigger", f"STATUS={_one_line(reason)}")

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _socket_address(value: str) -> str | None:
    if not value:
        return None
    if value.startswith("@"):  # abstract namespace socket
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    logger.warning("ignoring NOTIFY_SOCKET=%r (not a unix socket path)", value)
    return None


def _watchdog_interval(env: Mapping[str, str]) -> float | None:
    usec = env.get("WATCHDOG_USEC")
    if not usec:
        return None
    pid = env.get("WATCHDOG_PID")
    # systemd sets WATCHDOG_PID for the main process only; a child must not ping for it.
    if pid and pid.isdigit() and int(pid) != os.getpid():
        return None
    try:
        value = int(usec)
    except ValueError:
        logger.warning("ignoring WATCHDOG_USEC=%r (not an integer)", usec)
        return None
    return value / 1e6 if value > 0 else None


def _one_line(text: str) -> str:
    return " ".join(str(text).split())
