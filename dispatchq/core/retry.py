"""Bounded exponential backoff with a floor, a cap and jitter.

The policy is plain data plus a pure function of the attempt number (and of a random draw,
which a caller may pass to make it deterministic), so the worker can hand the same delays
to Celery's `retry(countdown=...)` that the HTTP client uses between its own attempts.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class RetryPolicy:
    """`attempts` counts every try, the first included: 1 means never retry.

    The delay before retry n (n >= 1) is `floor * multiplier**(n-1)`, capped at `cap`,
    then reduced by up to `jitter` of itself at random, and never below `floor`.
    """

    attempts: int = 4
    floor: float = 0.2
    cap: float = 5.0
    multiplier: float = 2.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("attempts must be at least 1")
        if not 0 < self.floor <= self.cap:
            raise ValueError("need 0 < floor <= cap")
        if self.multiplier < 1 or not 0 <= self.jitter <= 1:
            raise ValueError("need multiplier >= 1 and 0 <= jitter <= 1")

    @property
    def retries(self) -> int:
        """How many retries follow the first attempt (Celery's `max_retries`)."""
        return self.attempts - 1

    def delay(self, retry: int, draw: float | None = None) -> float:
        """Seconds to wait before retry number `retry` (1-based).

        `draw` is a number in [0, 1); by default a fresh random one.
        """
        if retry < 1:
            raise ValueError("retry numbers start at 1")
        if draw is None:
            draw = random.random()  # noqa: S311  (jitter, not cryptography)
        exponent = min(retry - 1, 64)  # past the cap anyway; keeps the float finite
        base = min(self.cap, self.floor * self.multiplier**exponent)
        return max(self.floor, base * (1 - self.jitter * draw))


NO_RETRY = RetryPolicy(attempts=1)
