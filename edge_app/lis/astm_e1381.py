"""ASTM E1381-02 / CLSI LIS1-A low-level protocol: the instrument side.

Establishment: send ENQ, wait for ACK. NAK means the LIS is busy (wait
``busy_wait_s``, try again); an ENQ back is contention, which the instrument
wins after waiting 1 s (LIS1-A 6.2.7.1).
Transfer: each record goes in one or more frames
``<STX> FN text <ETB|ETX> C1 C2 <CR> <LF>``: FN counts 1..7,0,1...; a record
longer than 240 characters is split into intermediate (ETB) frames and a
final (ETX) one ending with the record's CR; C1C2 is the sum of the bytes
from FN to ETB/ETX inclusive, modulo 256, in upper-case hex. A NAK (or any
reply other than ACK/EOT) resends the same frame with the same FN, at most
``max_frame_retries`` times; no reply within ``timeout_s`` ends the transfer.
Termination: EOT, also sent after any failure so the line is left idle.

Frame contents are never logged (they hold the sample id); frame numbers are.
"""

from __future__ import annotations

import logging
import time
from typing import Iterable, List

from edge_app.sync.errors import TransientError

logger = logging.getLogger(__name__)

ENQ, ACK, NAK, EOT = b"\x05", b"\x06", b"\x15", b"\x04"
STX, ETX, ETB, CR, LF = b"\x02", b"\x03", b"\x17", b"\r", b"\n"
MAX_TEXT = 240  # characters of text per frame (a frame is at most 247 bytes)
ENCODING = "latin-1"


def checksum(body: bytes) -> bytes:
    """Two upper-case hex digits of sum(FN .. ETB/ETX) mod 256."""
    return b"%02X" % (sum(body) % 256)


def frame(number: int, text: bytes, final: bool) -> bytes:
    body = str(number % 8).encode("ascii") + text + (ETX if final else ETB)
    return STX + body + checksum(body) + CR + LF


def frames_for(records: Iterable[str]) -> List[bytes]:
    """All frames of a message, numbered from 1, one record (or its pieces) each."""
    out: List[bytes] = []
    number = 1
    for record in records:
        data = record.encode(ENCODING, errors="replace") + CR
        pieces = [data[i:i + MAX_TEXT] for i in range(0, len(data), MAX_TEXT)]
        for k, piece in enumerate(pieces):
            out.append(frame(number, piece, final=k == len(pieces) - 1))
            number += 1
    return out


class AstmSender:
    """Sends one message over an open pyserial port (any ``serial_for_url`` object)."""

    def __init__(self, port, *, timeout_s: float = 15.0, busy_wait_s: float = 10.0,
                 max_establish_tries: int = 6, max_frame_retries: int = 6, contention_wait_s: float = 1.0):
        self.port = port
        self.timeout_s = timeout_s
        self.busy_wait_s = busy_wait_s
        self.max_establish_tries = max_establish_tries
        self.max_frame_retries = max_frame_retries
        self.contention_wait_s = contention_wait_s
        self.naks = 0  # frames resent after a NAK, for the caller's log

    def _write(self, data: bytes) -> None:
        self.port.write(data)
        self.port.flush()

    def _reply(self) -> bytes:
        """The next byte from the LIS, or b'' after ``timeout_s`` of silence."""
        deadline = time.monotonic() + self.timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return b""
            self.port.timeout = min(left, 0.5)
            b = self.port.read(1)
            if b:
                return b

    def send(self, records: Iterable[str]) -> int:
        """Send the records; returns the number of frames the LIS acknowledged."""
        frames = frames_for(records)
        self.port.reset_input_buffer()  # a stale ACK from an aborted transfer must not count
        try:
            self._establish()
            for i, fr in enumerate(frames):
                self._send_frame(fr, i + 1, len(frames))
        except BaseException:
            self._abort()
            raise
        self._write(EOT)
        logger.info("ASTM transfer complete: %d frames acknowledged, %d resent after NAK", len(frames), self.naks)
        return len(frames)

    def _abort(self) -> None:
        try:
            self._write(EOT)
        except Exception:  # the port may be gone; the original error is what matters
            logger.debug("could not send EOT after a failed transfer")

    def _establish(self) -> None:
        for attempt in range(1, self.max_establish_tries + 1):
            self._write(ENQ)
            reply = self._reply()
            while reply not in (ACK, NAK, ENQ, b""):
                reply = self._reply()  # noise on the line is ignored while establishing
            if reply == ACK:
                return
            if reply == b"":
                raise TransientError(f"LIS did not answer ENQ within {self.timeout_s:g} s "
                                     "(check the cable, port and baud rate)", receiver_down=True)
            if reply == ENQ:
                logger.info("ASTM line contention; the instrument retries after %g s", self.contention_wait_s)
                time.sleep(self.contention_wait_s)
            else:
                logger.info("LIS busy (NAK to ENQ, try %d); waiting %g s", attempt, self.busy_wait_s)
                self._write(EOT)
                time.sleep(self.busy_wait_s)
        raise TransientError(f"LIS stayed busy: ENQ refused {self.max_establish_tries} times", receiver_down=True)

    def _send_frame(self, fr: bytes, index: int, total: int) -> None:
        fn = fr[1:2].decode("ascii")
        for attempt in range(self.max_frame_retries + 1):
            self._write(fr)
            reply = self._reply()
            if reply in (ACK, EOT):  # EOT = "please stop soon": treated as ACK (E1381 6.3.5)
                return
            if reply == b"":
                raise TransientError(f"LIS did not acknowledge frame {index}/{total} (FN {fn}) within "
                                     f"{self.timeout_s:g} s", receiver_down=True)
            self.naks += 1
            logger.warning("LIS refused frame %d/%d (FN %s), resending (%d of %d)", index, total, fn,
                           attempt + 1, self.max_frame_retries)
        # Not permanent: line noise or a LIS restart can cause a NAK run too.
        raise TransientError(f"LIS refused frame {index}/{total} (FN {fn}) {self.max_frame_retries + 1} times; "
                             "check the baud rate and the LIS log")
