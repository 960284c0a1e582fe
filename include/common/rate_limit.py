"""Client-side pacing of requests to a rate-limited API, shared by the threads of one process.

Why a sliding window (a deque of send times) and not a token bucket: Braze counts requests
per workspace in a window ("3,000 requests per 3 seconds", docs/vendor-contracts.md#braze-post-userstrack), and the sandbox
imitates it as a *sliding* window. A bucket of `budget` tokens refilled at budget/window per
second lets a full bucket be spent at once and then the refill be spent too: up to ~2x the
budget inside one window, i.e. 429s exactly when we are busiest. Remembering the last
`budget` send times and waiting until the oldest leaves the window keeps every window of
length `window` at or below the budget, which is what the server checks.

The server counts a request when it arrives, a little after `acquire()` let it go: `margin`
(10 ms) is added to the window so a limiter with the server's own budget does not race it
(measured on loopback: without it, ~2-3 429s per 100 requests at 20 per second).
The client's clock is not the server's either: `observe()` obeys what the server reports
(`X-RateLimit-Remaining: 0` -> wait until `X-RateLimit-Reset`), and `pause()` a Retry-After,
so several processes sharing one workspace still slow down together.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Mapping


class RateLimiter:
    """At most `budget` `acquire()`s in any `window` seconds, plus the server's own stop signals.

    Example::

        limiter = RateLimiter(3000, 3.0)  # Braze's default /users/track limit per workspace
        limiter.acquire()                 # before every attempt, retries included
        resp = session.post(...)
        limiter.observe(resp.headers)
    """

    def __init__(self, budget: int = 3000, window: float = 3.0, *, margin: float = 0.01,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep):
        if budget < 1 or window <= 0 or margin < 0:
            raise ValueError(f"rate limit needs budget >= 1, window > 0, margin >= 0; got {budget}, {window}, {margin}")
        self.budget = budget
        self.window = window
        self._span = window + margin  # how long a send keeps its slot, as seen from our side
        self._clock = clock
        self._sleep = sleep
        self._sent: deque[float] = deque()  # clock() of the sends still inside the window
        self._blocked_until = float("-inf")  # clock() before which the server told us to hold off
        self._lock = threading.Lock()

    def acquire(self) -> float:
        """Block until one more request fits; returns the seconds waited."""
        waited = 0.0
        while True:
            with self._lock:
                now = self._clock()
                while self._sent and self._sent[0] + self._span <= now:  # same sum as the wait below: no float gap
                    self._sent.popleft()
                if now < self._blocked_until:
                    wait = self._blocked_until - now
                elif len(self._sent) >= self.budget:
                    wait = self._sent[0] + self._span - now
                else:
                    self._sent.append(now)
                    return waited
            # Sleep outside the lock, then re-check: another thread may have taken the slot.
            self._sleep(wait)
            waited += wait

    def pause(self, seconds: float) -> None:
        """Hold every acquire() for `seconds` from now (a Retry-After from the server)."""
        if seconds > 0:
            with self._lock:
                self._blocked_until = max(self._blocked_until, self._clock() + seconds)

    def observe(self, headers: Mapping[str, str], now_epoch: float | None = None) -> None:
        """Honour the server's rate-limit headers: none remaining -> hold until the reset time.

        `X-RateLimit-Reset` is a whole epoch second (rounded up), so honouring it literally would
        idle up to a second at every full window. When our own sends explain the zero (the
        `X-RateLimit-Limit`-th most recent of them leaves the window within that last second),
        our clock says more precisely when the server frees a slot, and we hold until then.
        """
        lowered = {k.lower(): v for k, v in headers.items()}  # HTTP/2 lower-cases header names
        try:
            remaining = int(float(lowered["x-ratelimit-remaining"]))
            reset_epoch = float(lowered["x-ratelimit-reset"])
            limit = int(float(lowered.get("x-ratelimit-limit", 0)))
        except (KeyError, TypeError, ValueError):
            return  # no (usable) rate-limit headers: our own pacing is all we have
        if remaining > 0:
            return
        with self._lock:
            now = self._clock()
            until = now + reset_epoch - (time.time() if now_epoch is None else now_epoch)
            # A reset further off than a window (+ the rounding second) means the clocks disagree.
            until = min(until, now + self.window + 1)
            if 0 < limit <= len(self._sent):
                ours = self._sent[-limit] + self._span
                if until - 1 < ours < until:
                    until = ours
            elif limit > 0:
                # Other clients (e.g. the pool's other delivery tasks, each pacing its own share)
                # fill the window. Then "0 remaining" is the normal steady state, not an overshoot,
                # and the rounded-up Reset overstates the wait by up to a second: hold until the
                # earliest moment the window can free a slot (the second before the rounded Reset),
                # leaving 429 + Retry-After as the hard stop. Measured in bench/run_l2b_delivery.py.
                until = max(until - 1, now + self.window / limit)
            self._blocked_until = max(self._blocked_until, until)
