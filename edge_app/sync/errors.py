"""Delivery errors, split by what the outbox should do next.

A ``TransientError`` (network down, timeout, HTTP 5xx/429, NAK storm) leaves the
entry pending for a later attempt; a ``PermanentError`` (HTTP 4xx, an
OperationOutcome, a message the receiver rejects) marks it failed, still in
the table, until an operator requeues it with ``wbc-counter sync --retry-failed``.
Messages never carry sample ids or operator names: they end up in logs.
"""

from __future__ import annotations

import logging
from typing import Optional

logger = logging.getLogger(__name__)


class DeliveryError(RuntimeError):
    """A result could not be delivered; ``str(exc)`` says why and what to do."""


class TransientError(DeliveryError):
    """Worth retrying later.

    ``receiver_down`` says the receiver itself is unreachable, so the worker
    skips that destination's other entries in this pass instead of waiting on
    each one in turn; ``retry_after_s`` carries a server's Retry-After hint.
    """

    def __init__(self, message: str, *, receiver_down: bool = False, retry_after_s: Optional[float] = None):
        super().__init__(message)
        self.receiver_down = receiver_down
        self.retry_after_s = retry_after_s


class PermanentError(DeliveryError):
    """Retrying the same message cannot help; a person must look at it."""


def redact(text: str, payload: dict) -> str:
    """Blank out the sample id and operator should a receiver echo them in an error."""
    for key, mask in (("sample_id", "<sample-id>"), ("operator", "<operator>")):
        value = payload.get(key)
        if isinstance(value, str) and len(value) >= 2:
            text = text.replace(value, mask)
    return text
