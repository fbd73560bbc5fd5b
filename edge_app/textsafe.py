"""Stored or user-given text made safe to print: no control characters reach a terminal or a message.

A sample id, an operator name or a device id is typed by a person or read
from a barcode and kept in the database as given. Printed raw, an ANSI
escape inside it (ESC [ ... ) could move the cursor, recolour or hide lines
of a result on a technician's terminal; a CR or LF could forge a line of a
LIS message. ``one_line`` turns every non-printable character into a space;
``for_terminal`` does the same for multi-line text, line by line.
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)


def one_line(value: object) -> str:
    """Free text with control characters (ESC, CR, LF, STX, ...) turned into spaces."""
    return "".join(ch if ch.isprintable() else " " for ch in str(value)).strip()


def for_terminal(text: str) -> str:
    """Multi-line text whose lines keep their breaks and lose every other control character."""
    return "\n".join("".join(ch if ch.isprintable() else " " for ch in line).rstrip() for line in
                     str(text).split("\n"))
