"""One rate budget shared by the parallel processes that are sending, through leases in a shared store.

The pool's `deliver_chunk` tasks of one run start a few hundred ms apart and end at different
times. A static split (each task paces `limit / N`) wastes what the absent tasks do not use: with
the scheduler's stagger a 200,000-change delivery cannot pass 73 % of the limit
(bench/results_l2b_delivery.md). Here every sending task holds a **lease**, a small JSON object
in the run's state store (local directory or S3, whatever the run already uses):

    {"member": "chunk-2-1f0c...", "claim": 62.5, "expires": <epoch s>, "pid": ..., "host": ...}

`claim` is the budget (requests per window) the task may be pacing; `expires` is when the lease
stops counting unless renewed. Each task runs `tick()` every `refresh` seconds (faster while it is
waiting for its share): it reads the other live leases and moves its own limiter
(`RateLimiter.set_budget`) towards the fair share `total / number of live leases`:

* **Lower** (a task joined): the limiter is lowered first, then the lower claim is published.
* **Raise** (alone, a task left or died): the higher claim is published first (pending), the
  leases are read again, and the limiter is raised only to what the others' claims *as read after
  that publication* leave free (never above the claim published). If the room is not there, the
  claim is withdrawn.

**Why the sum of the rates in use never passes `total`** (the invariant; with the limiter's pacing
it gives "at most `total` (+ one per task) requests in any window + margin", module doc of
`include.common.rate_limit`, point 6): every task's rate in use is at most its published claim
(raised after publishing, lowered before). Take the raise in effect whose publication came last,
by task Z. Every other task published the claim behind its rate in use before that, so Z's read
(after its publication; the stores used are read-after-write consistent, S3 included, listings
too) saw claims at least as high as those rates, and Z raised only within what they left. A new
task starts at 0 and raises like any other: **a task that joins takes only what the window still
has room for**; it gets its fair share once the others have lowered theirs (within a `refresh`).
Two tasks raising at the same time may both see the other's pending claim and both back off; they
retry at the next tick (no overshoot, at worst a tick lost).

**Dead tasks**: a lease that is not renewed expires after `ttl` seconds and stops counting, so the
survivors take the share of a task killed with SIGKILL within about `ttl`. A task that could not
renew its lease in time (a stalled process, an unreachable store) must not keep sending on a
claim the others no longer count: the limiter stops granting `guard` seconds before the lease
published last expires (`RateLimiter.set_valid_until`), and the task joins again from 0 when it
can write. `guard` covers clock differences between workers (leases use the wall clock).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable

from include.common.rate_limit import RateLimiter

log = logging.getLogger(__name__)


class SharedBudget:
    """Keeps `limiter`'s budget at this process's share of `total`, coordinated through leases under `prefix`.

    `store` needs `list(prefix)`, `read_bytes(key)`, `write_bytes(key, data)`, `delete(key)`
    (a `include.clients.state_store.StateStore`). Use as a context manager around the sending:
    entering publishes the lease and takes what is free, leaving deletes it (the others take its
    share at their next tick).

    Example::

        limiter = RateLimiter(3000, 3.0)
        with SharedBudget(store, "runs/r1/delivery-leases", limiter, total=2996, member="chunk-0"):
            ...  # every request: limiter.acquire()
    """

    def __init__(self, store, prefix: str, limiter: RateLimiter, *, total: float, member: str = "",
                 refresh: float = 0.15, ttl: float = 3.0, guard: float = 0.75,
                 wall: Callable[[], float] = time.time):
        if total <= 0 or refresh <= 0 or not 0 < guard < ttl:
            raise ValueError(f"shared budget needs total > 0, refresh > 0, 0 < guard < ttl; "
                             f"got {total}, {refresh}, {guard}, {ttl}")
        self.store = store
        self.prefix = prefix.rstrip("/")
        self.limiter = limiter
        self.total = float(total)
        self.member = f"{member or 'member'}-{uuid.uuid4().hex[:12]}"
        self.key = f"{self.prefix}/{self.member}.json"
        self.refresh, self.ttl, self.guard = refresh, ttl, guard
        self._wall = wall
        self._clock = limiter._clock
        self.claim = 0.0  # what the limiter is pacing now (<= the claim last published)
        self._published: float | None = None  # the claim in the lease now
        self._published_at = float("-inf")  # wall clock of the last publication
        self._valid_until = float("-inf")  # limiter clock: no grant from then on
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # one tick at a time
        self.changes: list[tuple[float, float]] = []  # (limiter clock, budget): for tests and benchmarks
        limiter.set_budget(0)

    # -- lifecycle ---------------------------------------------------------------------------------

    def __enter__(self) -> SharedBudget:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self) -> None:
        """Publish the lease and take what is free now, then keep it up to date in a daemon thread."""
        self.tick()
        self._thread = threading.Thread(target=self._run, name=f"shared-budget-{self.member}", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop, hold the limiter, delete the lease (best effort: otherwise it expires after `ttl`)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        with self._lock:
            self._apply(0.0)
            try:
                self.store.delete(self.key)
            except Exception as exc:  # noqa: BLE001 - it expires anyway
                log.warning("Could not delete the rate lease %s (it expires in %g s): %s", self.key, self.ttl, exc)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                waiting = self.tick()
            except Exception as exc:  # noqa: BLE001 - keep going: the lease runs out if this persists
                log.warning("Rate lease %s: could not coordinate (%s); the limiter stops if it lasts", self.key, exc)
                waiting = False
            self._stop.wait(self.refresh / 4 if waiting else self.refresh)

    # -- the protocol --------------------------------------------------------------------------------

    def tick(self) -> bool:
        """One coordination step (module doc); True while this task waits for more than it has."""
        with self._lock:
            if self._clock() >= self._valid_until and self.claim > 0:
                # Our lease ran out (or nearly): the others may have taken our share. Start again from 0.
                log.warning("Rate lease %s was not renewed in time: rejoining from 0", self.key)
                self._apply(0.0)
            others = self._others()
            fair = self.total / (len(others) + 1)
            if self.claim > fair + 1e-9:
                self._apply(fair)  # lower first, then say so
                self._publish(fair)
                return False
            want = min(fair, self.total - sum(others.values()))
            if want > self.claim + 1e-9:
                self._publish(want)  # pending: not used before the others' claims are read again
                others = self._others()
                room = min(want, self.total - sum(others.values()), self.total / (len(others) + 1))
                if room > self.claim + 1e-9:
                    self._apply(room)
                if self._published != self.claim:
                    self._publish(self.claim)  # withdraw what is not used
                return self.claim < fair - 1e-9
            if self._published != self.claim or self._wall() - self._published_at >= self.ttl / 4:
                self._publish(self.claim)  # renew
            return self.claim < fair - 1e-9

    def _apply(self, budget: float) -> None:
        self.claim = budget
        self.limiter.set_budget(budget)
        self.changes.append((self._clock(), budget))

    def _publish(self, claim: float) -> None:
        started, wall = self._clock(), self._wall()
        record = {"member": self.member, "claim": claim, "expires": wall + self.ttl, "pid": os.getpid(),
                  "host": socket.gethostname()}
        self.store.write_bytes(self.key, json.dumps(record).encode())
        self._published, self._published_at = claim, wall
        # Counted from before the write began: the others may see the lease from its first byte on.
        self._valid_until = started + self.ttl - self.guard
        self.limiter.set_valid_until(self._valid_until)

    def _others(self) -> dict[str, float]:
        """The claims of the other live (unexpired) leases."""
        now = self._wall()
        claims: dict[str, float] = {}
        for key in self.store.list(self.prefix):  # listed afresh: StateStore.list skips fsspec's listing cache
            if key == self.key or not key.endswith(".json"):
                continue
            try:
                lease = json.loads(self.store.read_bytes(key))
                expires, claim = float(lease["expires"]), float(lease["claim"])
            except Exception as exc:  # noqa: BLE001 - deleted meanwhile (finished), or half-written elsewhere
                if self._recently_written(key, now):
                    # A lease we cannot read may be in use: count it as the whole budget until it is
                    # `ttl` old (the safe side; leases are written whole, so this is a damaged file).
                    log.warning("Rate lease %s unreadable (%s): counting it as the whole budget", key, exc)
                    claims[key] = self.total
                continue
            if expires > now:
                claims[key] = claim
        return claims

    def _recently_written(self, key: str, now: float) -> bool:
        try:
            return self.store.modified(key).timestamp() + self.ttl > now
        except Exception:  # noqa: BLE001 - gone (a finished task deleted it): not in use
            return False
