"""RateLimiter: smooth pacing (never more than the budget in any window, from any start, shared by
any number of threads and parallel limiters), and the server's stop signals."""

from __future__ import annotations

import heapq
import itertools
import random
import threading
import time

import pytest

from include.common.rate_limit import RateLimiter

EPS = 1e-9  # float sums of intervals: a window of exactly `window` may gain or lose one ulp


class FakeTime:
    """A clock that only moves when someone sleeps (or the test advances it). One thread only."""

    def __init__(self, start: float = 1000.0):
        self.now = start
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds > 0, "the limiter must never sleep for nothing"
        self.sleeps.append(seconds)
        self.now += seconds


class VirtualClock:
    """Simulated time for many threads: it moves only when every thread sleeps, to the earliest wake-up.

    A thread's `clock()` readings between two sleeps are all the same instant, so the moment a
    thread records right after `acquire()` returned is exactly the moment its grant was made.
    """

    def __init__(self, start: float = 0.0):
        self.now = start
        self._cond = threading.Condition()
        self._running = 0
        self._sleepers: list[tuple[float, int]] = []
        self._released: set[int] = set()
        self._seq = itertools.count()

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds > 0, "the limiter must never sleep for nothing"
        with self._cond:
            me = next(self._seq)
            heapq.heappush(self._sleepers, (self.now + seconds, me))
            self._running -= 1
            self._advance()
            while me not in self._released:
                self._cond.wait()
            self._released.discard(me)

    def _advance(self) -> None:
        if self._running == 0 and self._sleepers:
            wake, who = heapq.heappop(self._sleepers)
            self.now = max(self.now, wake)
            self._released.add(who)
            self._running += 1
            self._cond.notify_all()

    def run(self, targets) -> None:
        """Run every callable in its own thread under this clock, until all have returned."""
        with self._cond:
            self._running = len(targets)

        def wrapped(fn):
            try:
                fn()
            finally:
                with self._cond:
                    self._running -= 1
                    self._advance()

        threads = [threading.Thread(target=wrapped, args=(fn,), daemon=True) for fn in targets]
        for th in threads:
            th.start()
        for th in threads:
            th.join(timeout=60)
        assert not any(th.is_alive() for th in threads), "simulation stuck"


def _limiter(budget: int, window: float, t, margin: float = 0.0) -> RateLimiter:
    return RateLimiter(budget, window, margin=margin, clock=t.clock, sleep=t.sleep)


def _max_in_any_window(times: list[float], window: float) -> int:
    """Most timestamps inside any half-open window (t - window, t] (the server's definition)."""
    times = sorted(times)
    best, lo = 0, 0
    for hi, t in enumerate(times):
        while times[lo] + window <= t + EPS:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def _min_gap(times: list[float]) -> float:
    times = sorted(times)
    return min((b - a for a, b in itertools.pairwise(times)), default=float("inf"))


# --------------------------------------------------------------------------- one thread, fake clock
def test_grants_are_evenly_spaced_and_never_later_than_needed():
    t = FakeTime()
    budget, window = 20, 1.0
    interval = window / budget
    made = t.now
    limiter = _limiter(budget, window, t)
    assert limiter.interval == pytest.approx(interval)
    rng = random.Random(42)
    grants: list[float] = []
    for _ in range(3_000):
        # bursts (no gap), short and long pauses
        t.now += rng.choice([0.0, 0.0, 0.0, rng.uniform(0, 0.05), rng.uniform(0, 0.3), rng.uniform(0, 2.0)])
        called_at = t.now
        waited = limiter.acquire()
        grants.append(t.now)
        assert waited == pytest.approx(t.now - called_at)
        # exactly the earliest moment the spacing allows: one interval after the previous grant
        # (after the limiter was made, for the first), and no catching up after a pause
        earliest = max(called_at, (grants[-2] if len(grants) > 1 else made) + interval)
        assert t.now == pytest.approx(earliest, abs=1e-9)
    assert _min_gap(grants) >= interval - EPS
    assert _max_in_any_window(grants, window) == budget


def test_a_new_limiter_does_not_burst():
    """The first grant comes one interval after the limiter was made, then one per interval:
    a task starting right after another one (same pool slot) ended keeps the spacing."""
    t = FakeTime(start=0.0)
    limiter = _limiter(10, 1.0, t)
    grants = []
    for _ in range(10):
        limiter.acquire()
        grants.append(t.now)
    assert grants == pytest.approx([0.1 * k for k in range(1, 11)])
    # The predecessor's grants (one per 0.1 s up to 0.0) and ours never put more than 10 in a window.
    predecessor = [-0.1 * k for k in range(10)]
    assert _max_in_any_window(predecessor + grants, 1.0) == 10


def test_margin_widens_the_spacing():
    """The server counts a request when it arrives, a little after acquire() let it go."""
    t = FakeTime(start=0.0)
    limiter = _limiter(2, 1.0, t, margin=0.01)
    limiter.acquire()
    assert limiter.acquire() == pytest.approx(0.505)
    assert limiter.acquire() == pytest.approx(0.505)


@pytest.mark.parametrize("args", [(0, 1.0), (10, 0), (10, 1.0, -0.1)])
def test_bad_settings_are_refused(args):
    budget, window, *margin = args
    with pytest.raises(ValueError):
        RateLimiter(budget, window, margin=margin[0] if margin else 0.01)


# --------------------------------------------------------------------------- many threads, virtual clock
def test_many_threads_never_exceed_the_share_in_any_window_and_lose_no_slot():
    vc = VirtualClock(start=5.0)
    budget, window, threads, per_thread = 25, 1.0, 16, 20
    interval = window / budget
    limiter = _limiter(budget, window, vc)
    grants: list[float] = []
    lock = threading.Lock()

    def worker():
        for _ in range(per_thread):
            limiter.acquire()
            with lock:
                grants.append(vc.clock())

    vc.run([worker] * threads)
    grants.sort()
    assert len(grants) == threads * per_thread
    # 16 threads all waiting: not one burst, one grant per interval from the first interval on
    assert grants == pytest.approx([5.0 + interval * k for k in range(1, len(grants) + 1)], abs=1e-6)
    assert _min_gap(grants) >= interval - EPS
    assert _max_in_any_window(grants, window) == budget


def test_threads_in_flight_with_round_trips_and_a_pause_keep_the_spacing():
    vc = VirtualClock(start=0.0)
    budget, window = 40, 1.0
    interval = window / budget
    limiter = _limiter(budget, window, vc)
    grants: list[float] = []
    lock = threading.Lock()
    paused: list[float] = []

    def worker(seed):
        rng = random.Random(seed)
        for _ in range(30):
            limiter.acquire()
            with lock:
                grants.append(vc.clock())
                if len(grants) == 100:  # a 429's Retry-After: every thread holds, then no burst
                    paused.append(vc.clock())
                    limiter.pause(0.5)
            vc.sleep(rng.uniform(0.001, 0.3))  # the request's round trip

    vc.run([lambda s=s: worker(s) for s in range(8)])
    assert len(grants) == 240
    assert _min_gap(grants) >= interval - EPS
    assert _max_in_any_window(grants, window) <= budget
    assert not [g for g in grants if paused[0] < g < paused[0] + 0.5]


class _Slot:
    """One slot of a task pool: tasks one after another, each with its own limiter (made when the
    task starts, after the previous task's last response) and `threads` requests in flight."""

    def __init__(self, clock: VirtualClock, sizes: list[int], budget: int, window: float):
        self.clock, self.sizes, self.budget, self.window = clock, list(sizes), budget, window
        self.lock = threading.Lock()
        self.task: dict | None = None
        self.grants: list[float] = []

    def job(self):
        with self.lock:
            task = self.task
            if task is None or (task["taken"] == task["size"] and task["active"] == 0):
                if not self.sizes:
                    return None
                task = self.task = {"limiter": _limiter(self.budget, self.window, self.clock),
                                    "size": self.sizes.pop(0), "taken": 0, "active": 0}
            if task["taken"] == task["size"]:
                return "wait"  # the task's last requests are still in flight
            task["taken"] += 1
            task["active"] += 1
            return task

    def worker(self, start: float, seed: int) -> None:
        rng = random.Random(seed)
        self.clock.sleep(start)
        while (task := self.job()) is not None:
            if task == "wait":
                self.clock.sleep(0.005)
                continue
            task["limiter"].acquire()
            with self.lock:
                self.grants.append(self.clock.clock())
            self.clock.sleep(rng.uniform(0.001, 0.06))  # round trip
            with self.lock:
                task["active"] -= 1


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_parallel_tasks_started_at_any_time_never_exceed_the_workspace_budget(seed):
    """The invariant behind the pool's budget split: N slots, each a chain of tasks pacing
    budget/N smoothly (tasks of uneven sizes, 1-8 requests in flight, staggered starts, a new
    task the moment the previous one ends) -> no window of the server ever sees more than the budget."""
    rng = random.Random(seed)
    total, window, slots = 40, 1.0, 4
    share = total // slots
    vc = VirtualClock()
    pool = [_Slot(vc, [rng.randint(3, 40) for _ in range(rng.randint(2, 4))], share, window) for _ in range(slots)]
    starts = [0.001, 0.4, 0.9, 1.7]
    targets = [lambda p=p, s=s, k=k: p.worker(s, seed * 100 + k)
               for p, s in zip(pool, starts, strict=True) for k in range(rng.randint(1, 8))]
    vc.run(targets)
    everything = [g for p in pool for g in p.grants]
    assert len(everything) == sum(len(p.grants) for p in pool) > 100
    assert _max_in_any_window(everything, window) <= total
    for p in pool:
        assert _max_in_any_window(p.grants, window) <= share
        assert _min_gap(p.grants) >= window / share - EPS  # across task boundaries too


# --------------------------------------------------------------------------- real threads, real clock
def test_real_threads_sharing_one_limiter_keep_the_spacing():
    budget, window, threads, total = 50, 0.5, 4, 200
    interval = window / budget
    local = threading.local()

    def clock() -> float:
        # acquire() reads the clock inside its lock; the last read of a thread's successful
        # acquire() is the exact moment its slot was granted.
        local.last = time.monotonic()
        return local.last

    began = time.monotonic()  # the limiter paces from its creation
    limiter = RateLimiter(budget, window, margin=0.0, clock=clock)
    grants: list[float] = []
    grants_lock = threading.Lock()
    start = threading.Barrier(threads)

    def worker() -> None:
        start.wait()
        for _ in range(total // threads):
            limiter.acquire()
            with grants_lock:
                grants.append(local.last)

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for th in pool:
        th.start()
    for th in pool:
        th.join(timeout=30)
    elapsed = time.monotonic() - began
    assert len(grants) == total
    assert _min_gap(grants) >= interval
    assert _max_in_any_window(grants, window) <= budget
    assert elapsed >= total * interval  # 200 at one per 10 ms: 2 s
    assert elapsed < total * interval + 2.0  # and the limiter does not dawdle


# --------------------------------------------------------------------------- the server's signals
EPOCH = 1_800_000_000.25  # wall-clock time at FakeTime 0.0 in the observe() tests


def _headers(remaining: int, reset: int, limit: int | None = None, case=str.title) -> dict[str, str]:
    h = {case("X-RateLimit-Remaining"): str(remaining), case("X-RateLimit-Reset"): str(reset)}
    if limit is not None:
        h[case("X-RateLimit-Limit")] = str(limit)
    return h


@pytest.mark.parametrize("name_case", [str.title, str.lower, str.upper])
def test_observe_remaining_zero_from_the_first_response_holds_until_reset(name_case):
    """A task that starts while others filled the window learns it from its first answer."""
    t = FakeTime(start=0.0)
    limiter = _limiter(1000, 3.0, t)
    limiter.acquire()  # the first request (3 ms after the limiter was made)
    limiter.observe(_headers(0, int(EPOCH) + 2, case=name_case), now_epoch=EPOCH + t.now)
    assert limiter.acquire() == pytest.approx(1.75 - 0.003)  # reset is 1,800,000,002 = 1.75 s after 0.0
    assert limiter.acquire() == pytest.approx(limiter.interval)  # the hold is over: back to the pacing


def test_observe_zero_from_other_senders_holds_until_the_earliest_possible_reset():
    """We sent 3 of the server's 10: others (the pool's other tasks) used the rest.

    Reset is a whole second rounded up (epoch+2 = 1.75 s away), so the window may free a slot
    from 0.75 s on: hold until then, not the full rounded second (429 stays the hard stop).
    """
    t = FakeTime(start=0.0)
    limiter = _limiter(10, 1.0, t)
    for _ in range(3):
        limiter.acquire()
    assert t.now == pytest.approx(0.3)
    limiter.observe(_headers(0, int(EPOCH) + 2, limit=10), now_epoch=EPOCH + t.now)
    assert limiter.acquire() == pytest.approx(0.45)
    assert t.now == pytest.approx(0.75)


def test_observe_zero_explained_by_our_own_sends_costs_no_extra_wait():
    """A server stricter than our budget (10 per second, we pace 20): our own clock knows when our
    oldest counted send leaves the window, earlier than the rounded-up Reset says."""
    t = FakeTime(start=0.0)
    limiter = _limiter(20, 1.0, t)
    for _ in range(10):
        limiter.acquire()  # at 0.05, 0.10, ..., 0.50
    # the server: 10 of 10 used, the oldest (ours at 0.05 = epoch ...0.30) leaves at ...1.30 -> "...2"
    limiter.observe(_headers(0, int(EPOCH) + 2, limit=10), now_epoch=EPOCH + t.now)
    limiter.acquire()
    assert t.now == pytest.approx(1.05)  # not at the rounded 1.75


def test_observe_caps_a_reset_that_only_a_wrong_clock_explains():
    t = FakeTime(start=0.0)
    limiter = _limiter(1000, 3.0, t)
    limiter.observe(_headers(0, int(EPOCH) + 3600), now_epoch=EPOCH)  # our clock is an hour behind
    assert limiter.acquire() == pytest.approx(4.0)  # one window + the rounding second, not an hour


@pytest.mark.parametrize("headers", [
    {"X-RateLimit-Remaining": "3", "X-RateLimit-Reset": "1800000005"},
    {"X-RateLimit-Remaining": "0"},
    {"X-RateLimit-Remaining": "zero", "X-RateLimit-Reset": "1800000005"},
    {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "1799999990"},  # already past
    {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "soon"},
    {},
])
def test_observe_ignores_headers_that_do_not_say_stop(headers):
    t = FakeTime()
    limiter = _limiter(1000, 1.0, t)
    limiter.observe(headers, now_epoch=1_800_000_000.0)
    assert limiter.acquire() == pytest.approx(0.001)  # the pacing's own interval, nothing more
    assert t.sleeps == [pytest.approx(0.001)]


def test_pause_holds_every_acquire_and_only_extends():
    t = FakeTime(start=0.0)
    limiter = _limiter(1000, 1.0, t)
    limiter.pause(2.0)
    limiter.pause(0.5)  # a shorter wait must not cut the longer one short
    assert limiter.acquire() == pytest.approx(2.0)
    limiter.pause(0)
    assert limiter.acquire() == pytest.approx(0.001)


# --------------------------------------------------------------------------- a budget that changes
def test_a_lower_budget_applies_at_once_and_a_higher_one_only_from_the_change():
    t = FakeTime(start=0.0)
    limiter = _limiter(10, 1.0, t)  # one per 0.1 s
    limiter.acquire()
    assert t.now == pytest.approx(0.1)
    limiter.set_budget(5)  # one per 0.2 s, from the latest grant on
    limiter.acquire()
    assert t.now == pytest.approx(0.3)
    t.now = 0.35
    limiter.set_budget(20)  # one per 0.05 s, but no slot of the new pace before the change
    limiter.acquire()
    assert t.now == pytest.approx(0.40)
    limiter.acquire()
    assert t.now == pytest.approx(0.45)


def test_budget_zero_holds_until_raised_and_a_lapsed_lease_holds_until_renewed():
    vc = VirtualClock(start=0.0)
    limiter = _limiter(10, 1.0, vc)
    limiter.set_budget(0)
    grants: list[float] = []

    def sender():
        for _ in range(3):
            limiter.acquire()
            grants.append(vc.clock())

    def coordinator():
        vc.sleep(0.5)
        limiter.set_valid_until(0.75)
        limiter.set_budget(10)
        vc.sleep(1.5)
        limiter.set_valid_until(10.0)

    vc.run([sender, coordinator])
    # held until 0.5; the first slot one interval after the raise; then nothing from 0.75 (the
    # lease ran out) until it was renewed at 2.0
    assert grants[0] == pytest.approx(0.6)
    assert grants[1] == pytest.approx(0.7)
    assert 2.0 <= grants[2] <= 2.0 + RateLimiter.HOLD_POLL + 1e-9


def test_late_wake_ups_are_caught_up_within_the_margin_and_never_overshoot():
    """Threads that wake a little late (a busy machine) take their reserved slot: the rate stays
    the budget instead of losing every late wake-up for good, and no window of the server (the
    window without our margin) ever sees more than the budget."""
    budget, window, margin = 50, 1.0, 0.03
    rng = random.Random(7)
    vc = VirtualClock(start=0.0)

    def late_sleep(seconds: float) -> None:
        vc.sleep(seconds + rng.uniform(0, 0.012))  # up to 12 ms late, more than the 10 ms catch-up

    limiter = RateLimiter(budget, window, margin=margin, clock=vc.clock, sleep=late_sleep)
    assert limiter.catch_up == pytest.approx(margin / 3)
    grants: list[float] = []
    lock = threading.Lock()

    def worker():
        for _ in range(40):
            limiter.acquire()
            with lock:
                grants.append(vc.clock())
            vc.sleep(rng.uniform(0.001, 0.05))  # round trip

    vc.run([worker] * 8)
    assert len(grants) == 320
    assert _max_in_any_window(grants, window) <= budget
    # 320 grants at one per 20.6 ms: 6.59 s when no time is lost; pushing the schedule back by each
    # late wake-up (the former behaviour) takes ~6 ms more per grant, ~8.5 s
    assert max(grants) < 320 * limiter.interval + 0.3


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_limiters_whose_budgets_add_up_to_the_total_never_exceed_it_in_any_window(seed):
    """Three limiters whose budgets move (lowered before another is raised, as SharedBudget does),
    with 4 threads each: the server's window never sees more than the total. The margin covers
    the one request per limiter that a change of pace may add (module doc, point 6)."""
    rng = random.Random(seed)
    total, window, margin = 40, 1.0, 0.1  # 40 * 0.1 / 1.1 = 3.6 >= 3 limiters
    vc = VirtualClock(start=0.0)
    limiters = [RateLimiter(1, window, margin=margin, catch_up=0.0, clock=vc.clock, sleep=vc.sleep)
                for _ in range(3)]
    budgets = [total, 0, 0]
    limiters[0].set_budget(total)
    for lim in limiters[1:]:
        lim.set_budget(0)
    grants: list[float] = []
    lock = threading.Lock()
    done = threading.Event()

    def worker(lim):
        while not done.is_set():
            lim.acquire()
            if done.is_set():
                return
            with lock:
                grants.append(vc.clock())
            vc.sleep(rng.uniform(0.001, 0.08))

    def coordinator():
        for _ in range(40):
            vc.sleep(rng.uniform(0.02, 0.4))
            a, b = rng.sample(range(3), 2)
            moved = rng.uniform(0, budgets[a])
            budgets[a] -= moved  # lower first...
            limiters[a].set_budget(budgets[a])
            budgets[b] += moved  # ...then raise
            limiters[b].set_budget(budgets[b])
        done.set()
        for lim in limiters:  # let the waiting threads finish
            lim.set_budget(total)

    vc.run([coordinator] + [lambda lim=lim: worker(lim) for lim in limiters for _ in range(4)])
    assert len(grants) > 150
    assert _max_in_any_window(grants, window) <= total
