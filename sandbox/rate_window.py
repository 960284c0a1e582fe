"""Sliding-window request limiter shared by the Braze and Lytics sandboxes.

At most ``limit`` requests are counted in any ``window`` seconds (monotonic clock); a request
over the limit is refused and not counted.

The ``X-RateLimit-*`` headers (Braze docs, "Rate limits" > "Monitoring your rate limits") as
:meth:`hit` / :meth:`peek` compute them: ``X-RateLimit-Limit`` is the number of requests allowed
per window, ``X-RateLimit-Remaining`` how many are left after this request, ``X-RateLimit-Reset``
the UTC epoch second (an integer, rounded *up*) at which the oldest counted request leaves the
sliding window, i.e. when at least one more request will be allowed (now + window when none is
counted). A refused request gets a ``Retry-After`` in whole seconds (ceil, >= 1).
"""

from __future__ import annotations

import collections
import math
import threading
import time

__all__ = ["SlidingWindowLimiter"]


class SlidingWindowLimiter:
    """Sliding-window counter: at most ``limit`` hits in any ``window`` seconds. Thread-safe."""

    def __init__(self, limit: float, window: float) -> None:
        self.limit = limit
        self.window = window
        self._hits: collections.deque[float] = collections.deque()
        self._lock = threading.Lock()

    def _prune(self, now: float) -> None:
        while self._hits and self._hits[0] <= now - self.window:
            self._hits.popleft()

    def _headers(self, now: float) -> dict[str, str]:
        reset_in = (self._hits[0] + self.window - now) if self._hits else self.window
        return {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(max(0, self.limit - len(self._hits))),
            "X-RateLimit-Reset": str(math.ceil(time.time() + reset_in)),
        }

    def allow(self) -> bool:
        """Count one request if the window has room; False (nothing counted) if not."""
        now = time.monotonic()
        with self._lock:
            self._prune(now)
            if len(self._hits) >= self.limit:
                return False
            self._hits.append(now)
            return True

    def hit(self) -> tuple[bool, dict[str, str], int]:
        """Count one request. Returns (allowed, headers, retry_after_seconds)."""
        now = time.monotonic()
        with self._lock:
            self._prune(now)
            if len(self._hits) >= self.limit:
                retry = max(1, math.ceil(self._hits[0] + self.window - now))
                return False, self._headers(now), retry
            self._hits.append(now)
            return True, self._headers(now), 0

    def peek(self) -> dict[str, str]:
        """The rate-limit headers as they stand, counting nothing."""
        now = time.monotonic()
        with self._lock:
            self._prune(now)
            return self._headers(now)
