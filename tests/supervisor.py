"""A small process supervisor for tests that behaves like systemd for one ``Type=notify`` service.

What it mimics from systemd.service(5) / systemd.kill(5):
- ``NOTIFY_SOCKET``: an AF_UNIX datagram socket; ``READY=1``, ``WATCHDOG=1``,
  ``STATUS=``, ``STOPPING=1`` datagrams are recorded per instance;
- ``WatchdogSec=``: ``WATCHDOG_USEC`` is passed; once the service is ready, a
  gap longer than that between pings is a watchdog timeout: SIGABRT (the
  default ``WatchdogSignal=``), then SIGKILL if it does not die;
- ``Restart=on-failure``: restart after a non-zero exit code, a signal other
  than SIGHUP/SIGINT/SIGTERM/SIGPIPE, or a watchdog timeout; not after exit
  0 or a clean signal, nor after ``stop()``; ``RestartSec=`` between tries and
  a start limit like ``StartLimitBurst=``.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

# children are started as `python -m tests.<child>` from the repo root
ROOT = Path(__file__).resolve().parent.parent

CLEAN_SIGNALS = {signal.SIGHUP, signal.SIGINT, signal.SIGTERM, signal.SIGPIPE}


@dataclass
class Instance:
    number: int
    proc: subprocess.Popen
    ready: bool = False
    pings: int = 0
    last_ping: float | None = None
    messages: list = field(default_factory=list)
    watchdog_timeout: bool = False
    returncode: int | None = None


class Supervisor:
    def __init__(self, cmd: list[str], workdir: Path, env: dict | None = None, watchdog_sec: float | None = None,
                 restart_sec: float = 0.2, start_limit_burst: int = 5, log_dir: Path | None = None):
        self.cmd = cmd
        self.env = dict(os.environ if env is None else env)
        self.watchdog_sec = watchdog_sec
        self.restart_sec = restart_sec
        self.start_limit_burst = start_limit_burst
        self.log_dir = Path(log_dir or workdir)
        self.socket_path = str(Path(workdir) / "notify.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.socket_path)
        self.instances: list[Instance] = []
        self.events: list[tuple] = []
        self._stop = threading.Event()
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    # -- control ------------------------------------------------------------
    def start(self) -> "Supervisor":
        self._spawn()
        self._thread.start()
        return self

    def stop(self, timeout: float = 60) -> None:
        """Like ``systemctl stop``: SIGTERM, no restart, SIGKILL after ``timeout``."""
        self._stop.set()
        inst = self.current
        if inst and inst.proc.poll() is None:
            inst.proc.send_signal(signal.SIGTERM)
            try:
                inst.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                inst.proc.kill()
                inst.proc.wait(30)
        self._thread.join(30)
        self.sock.close()

    def kill(self, sig: int = signal.SIGKILL) -> None:
        self.current.proc.send_signal(sig)

    @property
    def current(self) -> Instance | None:
        return self.instances[-1] if self.instances else None

    def wait_for(self, predicate, timeout: float = 120.0, what: str = "condition") -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"supervisor: {what} not reached; events {self.events}; "
                                       f"logs in {self.log_dir}")
                self._cond.wait(min(left, 0.5))

    # -- internals ------------------------------------------------------------
    def _spawn(self) -> None:
        n = len(self.instances) + 1
        env = dict(self.env, NOTIFY_SOCKET=self.socket_path)
        if self.watchdog_sec:
            env["WATCHDOG_USEC"] = str(int(self.watchdog_sec * 1e6))
        log = open(self.log_dir / f"instance{n}.log", "w")
        proc = subprocess.Popen(self.cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        log.close()
        with self._cond:
            self.instances.append(Instance(n, proc))
            self.events.append(("start", n))
            self._cond.notify_all()

    def _receive(self, timeout: float) -> None:
        readable, _, _ = select.select([self.sock], [], [], timeout)
        if not readable:
            return
        data = self.sock.recv(65536).decode("utf-8", "replace")
        fields = dict(line.split("=", 1) for line in data.splitlines() if "=" in line)
        with self._cond:
            inst = self.current
            inst.messages.append(fields)
            if fields.get("READY") == "1" and not inst.ready:
                inst.ready = True
                inst.last_ping = time.monotonic()
                self.events.append(("ready", inst.number))
            if fields.get("WATCHDOG") == "1":
                inst.pings += 1
                inst.last_ping = time.monotonic()
            self._cond.notify_all()

    def _loop(self) -> None:
        while True:
            self._receive(0.05)
            inst = self.current
            code = inst.proc.poll()
            if code is None and self.watchdog_sec and inst.ready and not inst.watchdog_timeout \
                    and time.monotonic() - inst.last_ping > self.watchdog_sec:
                with self._cond:
                    inst.watchdog_timeout = True
                    self.events.append(("watchdog-timeout", inst.number))
                inst.proc.send_signal(signal.SIGABRT)
                try:
                    inst.proc.wait(10)
                except subprocess.TimeoutExpired:
                    inst.proc.kill()
                code = inst.proc.wait(30)
            if code is None:
                continue
            with self._cond:
                inst.returncode = code
                self.events.append(("exit", inst.number, code))
                self._cond.notify_all()
            failed = code > 0 or (code < 0 and signal.Signals(-code) not in CLEAN_SIGNALS) or inst.watchdog_timeout
            if self._stop.is_set() or not failed or len(self.instances) >= self.start_limit_burst:
                return
            time.sleep(self.restart_sec)
            with self._cond:
                self.events.append(("restart", inst.number + 1))
            self._spawn()
