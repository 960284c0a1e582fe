"""Client-side pacing of requests to a rate-limited API: smooth, shared by the threads of one process.

Braze counts requests per workspace in a *sliding* window ("3,000 requests per 3 seconds",
docs/vendor-contracts.md#braze-post-userstrack; the sandbox imitates it exactly), and that window
is shared by every process that sends for the workspace: the pool's parallel `deliver_chunk`
tasks, each pacing its share `budget = workspace limit // delivery_concurrency`. Those processes
know nothing of each other and start at arbitrary times, so the pacing must be right for *any*
interleaving. It is, because every limiter sends **smoothly**: one request every
`interval = (window + margin) / budget` seconds, never faster, and the first one `interval`
after the limiter was made.

Why that is enough (the invariant the tests check):

1. *One limiter.* Grants `g_1 < g_2 < ...` are at least `interval` apart, so `k` grants span at
   least `(k - 1) * interval`. Inside a half-open window of length `window + margin`
   (the span is < `window + margin`) that gives `k - 1 < budget`, i.e. **at most `budget`
   grants in any window**, wherever the window lies and whenever the limiter started. (A
   sliding-window log, the previous design, guarantees the same count but allows the whole
   budget at once, and a new task knows nothing of its predecessor's sends: see 3.)
2. *N processes* pacing `budget_i` each with `sum(budget_i) <= limit`: any window holds at most
   `budget_i` grants of process `i`, so at most the limit in total -- whatever their phases.
3. *Tasks that come and go* (a pool of N slots, more chunks than slots, retried tasks): at any
   moment at most N limiters are alive, so their lifetimes can be split into N chains of
   limiters that never overlap in time (interval-graph colouring). A limiter's first grant comes
   `interval` after it was made, which is after its predecessor in the chain made its last
   grant; so each chain, as a whole, keeps the `interval` spacing of 1., and 2. applies to the
   N chains. (A limiter that started with a full budget would overshoot here: the new task
   bursts while its predecessor's last requests are still in the server's window.)
4. *The server counts arrivals*, a little after `acquire()`. Pacing at `window + margin`
   rather than `window` means: if every request takes between `d` and `d + margin` seconds from
   its grant to the server's count, the arrivals in a server window of `window` were granted
   within less than `window + margin`, so there are still at most `budget` of them. A request
   delayed by more than that (a stalled process, a retransmitted packet) can still draw a 429,
   which is retried. The default `margin` of 30 ms costs 1 % of Braze's 3-second window. On
   loopback, 4 processes at 50 requests/s each on 2 busy cores showed a grant -> arrival spread
   of p99 6-18 ms, max 9-54 ms (tests/integration/audiences_to_braze/test_parallel_delivery.py):
   already beyond the former 10 ms, and a real network adds its own jitter.

The spacing is measured between the *actual* grants (the clock read under the lock), not the
planned ones: a thread that wakes late pushes the next grant back rather than letting two go
closer than `interval`. Threads reserve their slots in arrival order (first come, first served)
so the waiting threads of one process do not all wake for every slot.

The server's own signals are obeyed from the first response on: `observe()` holds every
`acquire()` when `X-RateLimit-Remaining` is 0 (until `X-RateLimit-Reset`, or the earliest moment
that rounded-up second allows), and `pause()` honours a 429's Retry-After -- for all threads of
the process, since the limit is per workspace.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Mapping


class RateLimiter:
    """At most `budget` `acquire()`s in any `window` (+ `margin`) seconds, spread evenly, plus
    the server's own stop signals.

    Example::

        limiter = RateLimiter(3000 // 4, 3.0)  # one of 4 parallel senders sharing Braze's 3,000 per 3 s
        limiter.acquire()                      # before every attempt, retries included
        resp = session.post(...)
        limiter.observe(resp.headers)
    """

    def __init__(self, budget: int = 3000, window: float = 3.0, *, margin: float = 0.03,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep):
        if budget < 1 or window <= 0 or margin < 0:
            raise ValueError(f"rate limit needs budget >= 1, window > 0, margin >= 0; got {budget}, {window}, {margin}")
        self.budget = budget
        self.window = window
        self._span = window + margin  # how long a send keeps its slot, as seen from our side
        self.interval = self._span / budget  # the smallest gap between two grants
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        created = clock()
        self._last = created  # the latest grant; "made" counts as one (see the module doc, point 3)
        self._next_slot = created + self.interval  # the slot the next acquire() reserves
        self._sent: deque[float] = deque()  # grants still inside the window (for observe())
        self._blocked_until = float("-inf")  # clock() before which the server told us to hold off

    def acquire(self) -> float:
        """Block until this request's turn (`interval` after the previous grant); returns the seconds waited."""
        with self._lock:
            slot = max(self._next_slot, self._clock())
            self._next_slot = slot + self.interval
        waited = 0.0
        while True:
            with self._lock:
                now = self._clock()
                earliest = max(slot, self._last + self.interval, self._blocked_until)
                if now >= earliest:
                    self._last = now
                    # A late grant moves the schedule back: later reservations never aim closer.
                    self._next_slot = max(self._next_slot, now + self.interval)
                    while self._sent and self._sent[0] + self._span <= now:
                        self._sent.popleft()
                    self._sent.append(now)
                    return waited
                wait = earliest - now
            # Sleep outside the lock, then re-check: a pause() or a late grant may have moved our turn.
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
            while self._sent and self._sent[0] + self._span <= now:
                self._sent.popleft()
            if 0 < limit <= len(self._sent):
                ours = self._sent[-limit] + self._span
                if until - 1 < ours < until:
                    until = ours
            elif limit > 0:
                # Other senders (e.g. the pool's other delivery tasks, each pacing its own share)
                # fill the window. Then "0 remaining" is the normal steady state, not an overshoot,
                # and the rounded-up Reset overstates the wait by up to a second: hold until the
                # earliest moment the window can free a slot (the second before the rounded Reset),
                # leaving 429 + Retry-After as the hard stop. Measured in bench/run_l2b_delivery.py.
                until = max(until - 1, now + self.window / limit)
            self._blocked_until = max(self._blocked_until, until)
