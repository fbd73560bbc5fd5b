"""SystemdNotifier against a real AF_UNIX datagram socket, as systemd provides it."""

import os
import socket
import subprocess
import sys

import pytest

from edge_app.watchdog import SystemdNotifier


@pytest.fixture
def notify_socket(tmp_path):
    path = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(10)
    yield str(path), sock
    sock.close()


def _recv(sock) -> dict:
    data = sock.recv(4096).decode()
    return dict(line.split("=", 1) for line in data.split("\n"))


def _nothing_waiting(sock) -> bool:
    sock.setblocking(False)
    try:
        sock.recv(4096)
        return False
    except BlockingIOError:
        return True
    finally:
        sock.settimeout(10)


def test_noop_without_notify_socket():
    n = SystemdNotifier(env={})
    assert not n.enabled
    assert n.ready() is False and n.watchdog() is False and n.status("x") is False and n.stopping() is False


def test_ready_status_stopping(notify_socket):
    path, sock = notify_socket
    n = SystemdNotifier(env={"NOTIFY_SOCKET": path})
    assert n.ready("counting\nnow")
    msg = _recv(sock)
    assert msg["READY"] == "1" and msg["MAINPID"] == str(os.getpid()) and msg["STATUS"] == "counting now"
    assert n.status("camera lost")
    assert _recv(sock) == {"STATUS": "camera lost"}
    assert n.stopping()
    assert _recv(sock) == {"STOPPING": "1"}
    n.close()


def test_watchdog_rate_limited_to_half_the_interval(notify_socket):
    path, sock = notify_socket
    now = [100.0]
    n = SystemdNotifier(env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "10000000"}, clock=lambda: now[0])
    assert n.watchdog_interval_s == 10.0
    assert n.watchdog() is True
    assert _recv(sock) == {"WATCHDOG": "1"}
    now[0] += 4.9  # every frame calls watchdog(); only one datagram per 5 s goes out
    assert n.watchdog() is False
    assert _nothing_waiting(sock)
    now[0] += 0.2
    assert n.watchdog() is True
    assert _recv(sock) == {"WATCHDOG": "1"}


def test_watchdog_off_without_usec_or_for_another_pid(notify_socket):
    path, sock = notify_socket
    assert SystemdNotifier(env={"NOTIFY_SOCKET": path}).watchdog() is False
    other = SystemdNotifier(env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"})
    assert other.watchdog() is False
    assert _nothing_waiting(sock)


def test_abstract_namespace_socket():
    name = f"wbc-test-{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(10)
    try:
        assert SystemdNotifier(env={"NOTIFY_SOCKET": "@" + name}).ready()
        assert _recv(sock)["READY"] == "1"
    finally:
        sock.close()


def test_vanished_socket_is_not_fatal(tmp_path):
    n = SystemdNotifier(env={"NOTIFY_SOCKET": str(tmp_path / "gone"), "WATCHDOG_USEC": "1000000"})
    assert n.enabled
    assert n.watchdog() is False  # logged once, never raised


def test_child_process_notifies_through_environment(notify_socket):
    path, sock = notify_socket
    code = "from edge_app.watchdog import SystemdNotifier as N; n = N(); n.ready(); n.watchdog()"
    env = dict(os.environ, NOTIFY_SOCKET=path, WATCHDOG_USEC="2000000")
    proc = subprocess.run([sys.executable, "-c", code], env=env, timeout=60)
    assert proc.returncode == 0
    first = _recv(sock)
    assert first["READY"] == "1" and first["MAINPID"].isdigit()
    assert _recv(sock) == {"WATCHDOG": "1"}
