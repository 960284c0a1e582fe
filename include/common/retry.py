"""The one retry/backoff mechanism of the project.

Exponential backoff with full jitter (AWS architecture blog, "Exponential Backoff and
Jitter"), honouring a server-given wait (Retry-After, X-RateLimit-Reset) when the error
carries one. Only `TransientError` is retried: a `PermanentError` (bad key, unknown
segment, bad config) fails at once, because waiting cannot fix it.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from include.common.errors import TransientError

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5  # total tries, including the first
    base_delay: float = 1.0  # seconds; the n-th retry waits up to base * 2**(n-1)
    max_delay: float = 60.0  # cap for one wait (also caps a server-given Retry-After)

    def delay(self, retry_number: int, server_wait: float | None = None, rng: random.Random | None = None) -> float:
        """Seconds to wait before retry `retry_number` (1-based)."""
        if server_wait is not None and server_wait >= 0:
            return min(server_wait, self.max_delay)
        ceiling = min(self.max_delay, self.base_delay * 2 ** (retry_number - 1))
        return (rng or random).uniform(ceiling / 2, ceiling)


def retry_call(
    fn: Callable[[], T],
    policy: RetryPolicy,
    *,
    what: str,
    sleep: Callable[[float], None] = time.sleep,
    on_retry: Callable[[int, TransientError, float], None] | None = None,
) -> T:
    """Call `fn`, retrying `TransientError` per `policy`; re-raise the last one when tries run out."""
    for attempt in range(1, policy.attempts + 1):
        try:
            return fn()
        except TransientError as exc:
            if attempt == policy.attempts:
                raise TransientError(f"{what}: still failing after {attempt} tries: {exc}. This may pass on its own: "
                                     f"the task is retried later; if it keeps failing, check that the service "
                                     f"is up and reachable from the worker") from exc
            wait = policy.delay(attempt, getattr(exc, "retry_after", None))
            log.warning("%s failed (try %d of %d): %s; retrying in %.1fs", what, attempt, policy.attempts, exc, wait)
            if on_retry:
                on_retry(attempt, exc, wait)
            sleep(wait)
    raise AssertionError("unreachable")
