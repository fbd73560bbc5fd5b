"""Open the LIS serial line from a pyserial URL, with errors a technician can act on.

``/dev/ttyUSB0`` (a real port, opened exclusively so a second process cannot
interleave frames), or any pyserial URL: ``socket://host:port`` for a serial
server, ``loop://`` for tests.
"""

from __future__ import annotations

import errno
import logging

import serial

from edge_app.sync.errors import PermanentError, TransientError

logger = logging.getLogger(__name__)


def open_port(url: str, baudrate: int = 9600, timeout_s: float = 15.0):
    is_url = "://" in url
    try:
        kwargs = {} if is_url else {"exclusive": True}
        return serial.serial_for_url(url, baudrate=baudrate, timeout=0.5, write_timeout=timeout_s, **kwargs)
    except ValueError as exc:
        raise PermanentError(f"serial port {url!r} is not usable: {exc} (give a device such as /dev/ttyUSB0 "
                             "or a pyserial URL such as socket://host:port)") from None
    except serial.SerialException as exc:
        code = exc.errno if isinstance(exc.errno, int) else None
        if code == errno.ENOENT:
            msg = (f"serial port {url} does not exist: check the cable, or list ports with "
                   "'python -m serial.tools.list_ports'")
        elif code in (errno.EACCES, errno.EPERM):
            msg = f"no permission to open serial port {url}: add the kiosk user to the 'dialout' group"
        elif code in (errno.EBUSY, errno.EAGAIN, errno.EWOULDBLOCK):
            msg = f"serial port {url} is in use by another program"
        else:
            msg = f"cannot open serial port {url}: {exc}"
        raise TransientError(msg, receiver_down=True) from None
