"""Client-side pacing of requests to a rate-limited API: smooth, shared by the threads of one process.

Braze counts requests per workspace in a *sliding* window ("3,000 requests per 3 seconds",
docs/vendor-contracts.md#braze-post-userstrack; the sandbox imitates it exactly), and that window
is shared by every process that sends for the workspace: the run's parallel `deliver_chunk`
tasks. They start at arbitrary times and end at different times, so the pacing must be right for
*any* interleaving. Each task paces what `include.common.shared_budget.SharedBudget` gives it
(the workspace budget split between the tasks that are sending, through leases in the run's
state store); the limiter sends **smoothly**: one request per *slot*, slots at least
`interval = (window + margin) / budget` apart, the first one `interval` after the limiter was made
(or after the budget was raised).

Why that is enough (the invariant the tests check):

1. *One limiter, fixed budget.* A grant happens at or after its slot, and at most `catch_up`
   after it (a thread that wakes later gets a later slot). `k` grants in a half-open window of
   length `T` have slots within `T + catch_up`, at least `interval` apart:
   `(k - 1) * interval < T + catch_up`. With `T = window + margin - catch_up` that is
   `k - 1 < budget`: **at most `budget` grants in any such window**, wherever it lies and whenever
   the limiter started. (A sliding-window log allows the whole budget at once, and a new task
   knows nothing of its predecessor's sends: see 3.)
2. *N processes* pacing `budget_i` each with `sum(budget_i) <= limit`: at most `budget_i` grants
   of process `i` in a window, so at most the limit in total -- whatever their phases.
3. *Tasks that come and go* (more chunks than pool slots, retried tasks): a limiter's first slot
   is `interval` after it was made, i.e. after its predecessor's last grant, so a new task does
   not burst while its predecessor's requests are still in the server's window.
4. *The server counts arrivals*, a little after `acquire()`. If every request takes between `d`
   and `d + margin - catch_up` seconds from its grant to the server's count, the arrivals in a
   server window of `window` were granted within `window + margin - catch_up`: still at most
   `budget` of them. A request delayed by more (a stalled process, a retransmitted packet) can
   still draw a 429, which is retried. The default `margin` of 30 ms costs 1 % of Braze's 3-second
   window; `catch_up` defaults to a third of it, leaving 20 ms of spread. On loopback, 4 processes
   on 2 busy cores showed a grant -> arrival spread of p99 6-30 ms, max 9-90 ms
   (tests/integration/audiences_to_braze/test_parallel_delivery.py), more when other jobs load
   the machine: a real network adds its own jitter.
5. *Late wake-ups* (`catch_up`): threads reserve slots in arrival order (first come, first served,
   so the waiting threads of one process do not all wake for every slot) and a thread that wakes
   up to `catch_up` late still takes its reserved slot, so the next one is not pushed back. The
   former rule (the next grant at least `interval` after the *actual* previous one) lost every
   late wake-up for good: 2-5 % of the budget on a quiet machine (bench/results_l2b_delivery.md).
   The price is that two grants may come closer than `interval` after a late one; 1. still holds.
6. *A budget that changes* (`set_budget`, from SharedBudget): a lower budget applies at once (the
   next slot is one new interval after the latest one), a higher one only from the moment it is
   set (no slot of the new pace lies before it). Give each slot the `interval` before it: those
   stretches never overlap, and each lies where the budget in force was at least the one the slot
   was paced at. So the grants of one limiter in a window number less than
   `(integral of its budget over the window) / (window + margin) + 1`: the budget in force, plus
   at most one request at the window's edge per limiter. If the budgets in force always add up to
   at most `total`, a window of the server holds at most `total + N - 1` requests of N limiters:
   `shared_budget` holds one request per pool slot back for that (`total = limit - slots`).

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
    the server's own stop signals. The budget may change while it runs (`set_budget`, used by
    `include.common.shared_budget.SharedBudget` to follow the tasks that are actually sending).

    Example::

        limiter = RateLimiter(3000, 3.0)  # Braze's 3,000 per 3 s
        limiter.acquire()                 # before every attempt, retries included
        resp = session.post(...)
        limiter.observe(resp.headers)
    """

    HOLD_POLL = 0.02  # seconds between checks while the budget is 0 or the lease has run out
    MAX_SLEEP = 0.1  # the longest sleep between two checks of a waiting acquire()

    def __init__(self, budget: int = 3000, window: float = 3.0, *, margin: float = 0.03,
                 catch_up: float | None = None,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep):
        if budget < 1 or window <= 0 or margin < 0:
            raise ValueError(f"rate limit needs budget >= 1, window > 0, margin >= 0; got {budget}, {window}, {margin}")
        self.window = window
        self.margin = margin
        self._span = window + margin  # how long a send keeps its slot, as seen from our side
        # How late a woken thread may still take its reserved slot (see the module doc, point 5).
        self.catch_up = margin / 3 if catch_up is None else catch_up
        if not 0 <= self.catch_up <= margin:
            raise ValueError(f"catch_up must be between 0 and the margin ({margin}), got {self.catch_up}")
        self.budget = float(budget)
        self.interval = self._span / budget  # the smallest gap between two slots
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        created = clock()
        self._last = created  # the slot of the latest grant; "made" counts as one (module doc, point 3)
        self._next_slot = created + self.interval  # the slot the next acquire() reserves
        self._generation = 0  # bumped by set_budget(): reservations made before are void
        self._sent: deque[float] = deque()  # grants still inside the window (for observe())
        self._blocked_until = float("-inf")  # clock() before which the server told us to hold off
        self._valid_until = float("inf")  # clock() from which nothing is granted (a lease not renewed)
        self.grants = 0  # requests granted so far (for SharedBudget and the benchmarks)

    def set_budget(self, budget: float) -> None:
        """Pace `budget` requests per window (+ margin) from now on; 0 holds every acquire().

        A lower budget applies at once (the next slot is one new interval after the latest
        grant); a higher one only from now: the next slot is one new interval after now (or after
        the latest grant, if later), so no slot of the new pace lies before the change.
        """
        if budget < 0:
            raise ValueError(f"budget must be >= 0, got {budget}")
        with self._lock:
            budget = float(budget)
            if budget == self.budget:
                return
            if budget > self.budget:
                self._last = max(self._last, self._clock())
            self.budget = budget
            self.interval = self._span / budget if budget > 0 else float("inf")
            self._next_slot = self._last + self.interval
            self._generation += 1

    def set_valid_until(self, when: float) -> None:
        """Grant nothing from `when` (this limiter's clock) on, until called again with a later time."""
        with self._lock:
            self._valid_until = when

    def acquire(self) -> float:
        """Block until this request's turn (its slot, `interval` after the previous one); returns the seconds waited."""
        slot, generation = None, -1
        waited = 0.0
        while True:
            with self._lock:
                now = self._clock()
                if self.budget <= 0 or now >= self._valid_until:
                    slot, wait = None, self.HOLD_POLL  # held: no slot reserved while there is no pace
                else:
                    if slot is None or generation != self._generation:
                        # Reserve in arrival order (first come, first served), so the waiting threads
                        # of one process do not all wake for every slot.
                        slot, generation = max(self._next_slot, now), self._generation
                        self._next_slot = slot + self.interval
                    # The slot this grant takes: ours, one interval after the previous grant's slot,
                    # and at most `catch_up` before now (a thread woken later loses the rest).
                    taken = max(slot, self._last + self.interval, now - self.catch_up, self._blocked_until)
                    if now >= taken:
                        self._last = taken
                        self._next_slot = max(self._next_slot, taken + self.interval)
                        while self._sent and self._sent[0] + self._span <= now:
                            self._sent.popleft()
                        self._sent.append(now)
                        self.grants += 1
                        return waited
                    wait = taken - now
            # Sleep outside the lock, then re-check: a pause(), a new budget or a late grant may have moved our turn
            # (at least every MAX_SLEEP: a thread waiting for a slot of a small budget sees a raise soon).
            wait = min(wait, self.MAX_SLEEP)
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
