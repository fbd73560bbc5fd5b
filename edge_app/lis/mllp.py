"""HL7 minimal lower layer protocol (MLLP) client with acknowledgement checks.

A message goes out as ``0x0B <message> 0x1C 0x0D``; the answer is read up to
its own ``0x1C 0x0D`` and must be an ACK whose MSA-2 names our control id.
MSA-1 AA (or CA, enhanced mode commit) confirms; AE/CE and AR/CR do not.
``deliver`` retries a NACK, a timeout or a broken connection with short
exponential pauses, ``retries`` times, then raises: AE (the LIS says the
content is wrong) as a permanent error, anything else as transient.
"""

from __future__ import annotations

import logging
import socket
import time
from typing import Callable, Optional, Tuple

from edge_app.sync.errors import PermanentError, TransientError

logger = logging.getLogger(__name__)

START, END = b"\x0b", b"\x1c\x0d"
MAX_ACK_BYTES = 1 << 20


def parse_hostport(text: str) -> Tuple[str, int]:
    host, sep, port = text.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"HL7 destination {text!r} is not host:port (example: lis.example.org:2575)")
    return host.strip("[]"), int(port)


def frame(message: str) -> bytes:
    return START + message.encode("utf-8") + END


class Nack(Exception):
    def __init__(self, code: str, text: str):
        super().__init__(f"LIS answered {code}" + (f": {text}" if text else ""))
        self.code = code


def check_ack(ack: str, control_id: str) -> str:
    """MSA-1 of an acceptable ACK; raises Nack or ValueError otherwise."""
    segments = [s for s in ack.replace("\n", "\r").split("\r") if s]
    if not segments or not segments[0].startswith("MSH"):
        raise ValueError("the answer is not an HL7 message")
    sep = segments[0][3:4] or "|"
    msa = next((s.split(sep) for s in segments if s.startswith("MSA")), None)
    if msa is None or len(msa) < 2:
        raise ValueError("the answer has no MSA segment")
    code = msa[1]
    if len(msa) > 2 and msa[2] != control_id:
        raise ValueError(f"the ACK is for message {msa[2]!r}, not {control_id!r}")
    if code in ("AA", "CA"):
        return code
    err = next((s.split(sep) for s in segments if s.startswith("ERR")), None)
    text = (msa[3] if len(msa) > 3 else "") or (err[-1] if err and len(err) > 1 else "")
    raise Nack(code, text[:200])


class MllpClient:
    def __init__(self, host: str, port: int, timeout_s: float = 15.0):
        self.host, self.port, self.timeout_s = host, port, timeout_s

    def exchange(self, message: str) -> str:
        """Send one message, return the raw answer (without framing)."""
        with socket.create_connection((self.host, self.port), timeout=self.timeout_s) as sock:
            sock.settimeout(self.timeout_s)
            sock.sendall(frame(message))
            buf = b""
            deadline = time.monotonic() + self.timeout_s
            while END not in buf:
                if time.monotonic() > deadline:
                    raise socket.timeout("no complete ACK")
                chunk = sock.recv(65536)
                if not chunk:
                    raise ConnectionError("the LIS closed the connection before acknowledging")
                buf += chunk
                if len(buf) > MAX_ACK_BYTES:
                    raise ConnectionError("the LIS sent an oversized answer")
        start = buf.find(START)
        return buf[start + 1 if start >= 0 else 0:buf.find(END)].decode("utf-8", errors="replace")

    def deliver(self, message: str, control_id: str, *, retries: int = 6, pause_s: float = 1.0,
                max_pause_s: float = 30.0, redact: Callable[[str], str] = str) -> str:
        """Send until acknowledged; returns MSA-1 (AA or CA). ``redact`` blanks identifiers out of
        what the LIS answered before it is logged (its error text may quote the sample id)."""
        where = f"HL7 LIS {self.host}:{self.port}"
        last: Optional[Exception] = None
        for attempt in range(retries + 1):
            if attempt:
                time.sleep(min(max_pause_s, pause_s * 2 ** (attempt - 1)))
            try:
                code = check_ack(self.exchange(message), control_id)
                logger.info("%s acknowledged message %s with %s (attempt %d)", where, control_id, code, attempt + 1)
                return code
            except Nack as exc:
                last = exc
            except (socket.timeout, TimeoutError):
                last = TimeoutError(f"no ACK within {self.timeout_s:g} s")
            except (ConnectionError, OSError) as exc:
                last = exc
            except ValueError as exc:
                last = exc
            logger.warning("%s, message %s, attempt %d of %d: %s", where, control_id, attempt + 1, retries + 1,
                           redact(_describe(last)))
        text = f"{where} did not accept message {control_id} after {retries + 1} attempts: {_describe(last)}"
        if isinstance(last, Nack) and last.code in ("AE", "CE"):
            raise PermanentError(text + " (the LIS log says what it did not like)")
        down = not isinstance(last, Nack)
        raise TransientError(text, receiver_down=down)


def _describe(exc: Optional[Exception]) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
