"""Shared helpers for the LIS messages: timestamps and safe free text."""

from __future__ import annotations

import datetime as _dt
import logging

logger = logging.getLogger(__name__)


def parse_time(text: str) -> _dt.datetime:
    """A payload timestamp (ISO 8601, naive = UTC) as an aware datetime."""
    t = _dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    return t if t.tzinfo else t.replace(tzinfo=_dt.timezone.utc)


def one_line(value: object) -> str:
    """Free text with control characters (CR, LF, STX, ...) turned into spaces."""
    return "".join(ch if ch.isprintable() else " " for ch in str(value)).strip()
