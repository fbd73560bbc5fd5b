"""Shared helpers for the LIS messages: timestamps and safe free text."""

from __future__ import annotations

import datetime as _dt
import logging

from edge_app.textsafe import one_line  # noqa: F401  (shared with the CLI's printed text)

logger = logging.getLogger(__name__)


def parse_time(text: str) -> _dt.datetime:
    """A payload timestamp (ISO 8601, naive = UTC) as an aware datetime."""
    t = _dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    return t if t.tzinfo else t.replace(tzinfo=_dt.timezone.utc)
