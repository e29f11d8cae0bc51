"""The one backoff rule: capped exponential growth with jitter.

Core ops (retries inside one call), actors (a batch kept for a later try), the outbox replay and the
circuit breaker (how long it stays open) all wait according to :func:`backoff_delay`.
"""

from __future__ import annotations

import random

__all__ = ["backoff_delay"]


def backoff_delay(attempt: int, base: float, cap: float, *, jitter: bool = True) -> float:
    """Seconds to wait before try ``attempt + 1`` after ``attempt`` (≥ 1) failures in a row.

    ``base`` doubles with every failure up to ``cap``. With ``jitter`` the delay is drawn from its upper
    half, so that sessions failing together try again apart.
    """
    delay: float = min(cap, base * 2.0 ** max(0, attempt - 1))
    return delay * random.uniform(0.5, 1.0) if jitter else delay
