"""Exponential back-off with jitter for outbox retries.

Many kiosks that lost the same network come back at the same moment; jitter
spreads their retries so the server is not hit by all of them at once.
"""

from __future__ import annotations

import logging
import random
from typing import Optional

logger = logging.getLogger(__name__)


def backoff_delay(attempts: int, base_s: float, max_s: float, rng: Optional[random.Random] = None) -> float:
    """Seconds to wait after the ``attempts``-th failed attempt (1 = first failure).

    "Equal jitter": half the exponential delay is kept, the other half drawn at
    random, so a retry is never immediate yet never synchronised either.
    """
    rng = rng or random
    exp = min(max_s, base_s * (2.0 ** max(0, attempts - 1)))
    return exp / 2.0 + rng.uniform(0.0, exp / 2.0)
