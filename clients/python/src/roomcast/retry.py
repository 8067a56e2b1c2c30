"""Full-jitter exponential backoff, shared by the producers and the subscriber."""

from __future__ import annotations

import random
from dataclasses import dataclass

__all__ = ["RetryPolicy", "full_jitter"]


def full_jitter(attempt: int, base: float = 0.5, cap: float = 20.0, rng: random.Random | None = None) -> float:
    """A delay drawn uniformly from ``[0, min(cap, base * 2**attempt))`` seconds.

    Full jitter (as in AWS's "Exponential Backoff And Jitter"): a server
    restart does not bring every client back in the same instant.
    """
    window = min(cap, base * (2.0 ** min(attempt, 30)))
    r = rng.random() if rng is not None else random.random()
    return r * window


@dataclass(frozen=True)
class RetryPolicy:
    """How a producer retries a publish (or a read).

    Retried: 503 ``unavailable``, 429 ``rate_limited`` (never sooner than its
    ``Retry-After``), 502/504 from a proxy in front, and connection errors.
    Publishing is safe to retry because every event carries an idempotency
    key: a retry of a publish that did commit answers 200 ``duplicate`` with
    the original seq and stores nothing new.

    Attributes:
        max_attempts: attempts in all (1 = no retry).
        base: the first backoff window, seconds.
        cap: the largest backoff window, seconds.
        deadline: give up once this many seconds have passed since the first
            attempt (``None``: only ``max_attempts`` counts).

    The default answers within about 10 s, so a web request that publishes
    (a Django view, a FastAPI handler) is not held for minutes; a worker
    that should ride out a longer outage passes its own, for instance
    ``RetryPolicy(max_attempts=30, deadline=300)``.
    """

    max_attempts: int = 8
    base: float = 0.25
    cap: float = 5.0
    deadline: float | None = 10.0

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """The wait before retry number ``attempt`` (0-based)."""
        d = full_jitter(attempt, self.base, self.cap)
        if retry_after is not None and retry_after > d:
            d = retry_after
        return d


NO_RETRY = RetryPolicy(max_attempts=1, deadline=None)

#: What a producer retries when given no policy.
DEFAULT_RETRY = RetryPolicy()

#: Ephemeral events (partial transcripts, typing) with the default policy:
#: a partial older than a second is stale, and the next one replaces it.
EPHEMERAL_RETRY = RetryPolicy(max_attempts=3, base=0.1, cap=0.5, deadline=1.0)
