"""RateLimiter: an exact sliding window (never more than the budget in any window), server stop signals."""

from __future__ import annotations

import random
import threading
import time

import pytest

from include.common.rate_limit import RateLimiter


class FakeTime:
    """A clock that only moves when someone sleeps (or the test advances it)."""

    def __init__(self, start: float = 1000.0):
        self.now = start
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds > 0, "the limiter must never sleep for nothing"
        self.sleeps.append(seconds)
        self.now += seconds


def _limiter(budget: int, window: float, t: FakeTime, margin: float = 0.0) -> RateLimiter:
    return RateLimiter(budget, window, margin=margin, clock=t.clock, sleep=t.sleep)


def _max_in_any_window(times: list[float], window: float) -> int:
    """Most timestamps inside any half-open window (t - window, t] (the server's definition)."""
    times = sorted(times)
    best, lo = 0, 0
    for hi, t in enumerate(times):
        while times[lo] + window <= t:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def test_never_more_than_budget_in_any_window_and_never_later_than_needed():
    t = FakeTime()
    budget, window = 20, 1.0
    limiter = _limiter(budget, window, t)
    rng = random.Random(42)
    grants: list[float] = []
    for _ in range(5_000):
        # bursts (no gap), short and long pauses
        t.now += rng.choice([0.0, 0.0, 0.0, rng.uniform(0, 0.05), rng.uniform(0, 0.3), rng.uniform(0, 2.0)])
        called_at = t.now
        waited = limiter.acquire()
        grants.append(t.now)
        assert waited == pytest.approx(t.now - called_at)
        # exactly the earliest moment the window allows: not a token bucket's average rate
        earliest = max(called_at, grants[-budget - 1] + window) if len(grants) > budget else called_at
        assert t.now == pytest.approx(earliest, abs=1e-9)
    assert _max_in_any_window(grants, window) == budget


def test_a_full_burst_blocks_until_the_oldest_send_leaves_the_window():
    t = FakeTime(start=0.0)
    limiter = _limiter(3, 1.0, t)
    for at in (0.0, 0.2, 0.5):
        t.now = at
        assert limiter.acquire() == 0.0
    t.now = 0.6
    assert limiter.acquire() == pytest.approx(0.4)  # until 0.0 + 1.0
    assert t.now == pytest.approx(1.0)
    assert limiter.acquire() == pytest.approx(0.2)  # until 0.2 + 1.0
    assert limiter.acquire() == pytest.approx(0.3)  # until 0.5 + 1.0
    assert t.now == pytest.approx(1.5)


def test_no_double_burst_at_a_window_boundary():
    """A token bucket would allow 2x budget around a boundary; the sliding window allows budget."""
    t = FakeTime(start=0.0)
    limiter = _limiter(10, 1.0, t)
    t.now = 0.99
    for _ in range(10):
        limiter.acquire()
    t.now = 1.01  # a fixed window would have reset at 1.0
    limiter.acquire()
    assert t.now == pytest.approx(1.99)


def test_margin_keeps_each_slot_a_little_longer():
    """The server counts a request when it arrives, a little after acquire() let it go."""
    t = FakeTime(start=0.0)
    limiter = _limiter(2, 1.0, t, margin=0.01)
    limiter.acquire()
    limiter.acquire()
    assert limiter.acquire() == pytest.approx(1.01)


EPOCH = 1_800_000_000.25  # wall-clock time at FakeTime 0.0 in the observe() tests


def _headers(remaining: int, reset: int, limit: int | None = None, case=str.title) -> dict[str, str]:
    h = {case("X-RateLimit-Remaining"): str(remaining), case("X-RateLimit-Reset"): str(reset)}
    if limit is not None:
        h[case("X-RateLimit-Limit")] = str(limit)
    return h


@pytest.mark.parametrize("name_case", [str.title, str.lower, str.upper])
def test_observe_remaining_zero_holds_until_reset(name_case):
    t = FakeTime(start=0.0)
    limiter = _limiter(1000, 3.0, t)
    limiter.observe(_headers(0, int(EPOCH) + 2, case=name_case), now_epoch=EPOCH)
    assert limiter.acquire() == pytest.approx(1.75)  # reset is 1,800,000,002 = 1.75 s from now
    assert limiter.acquire() == 0.0  # the hold is over


def test_observe_zero_from_other_senders_holds_until_the_earliest_possible_reset():
    """We sent 3 of the server's 10: others (the pool's other tasks) used the rest.

    Reset is a whole second rounded up (epoch+2 = 1.75 s away), so the window may free a slot
    from 0.75 s on: hold until then, not the full rounded second (429 stays the hard stop).
    """
    t = FakeTime(start=0.0)
    limiter = _limiter(10, 1.0, t)
    for _ in range(3):
        limiter.acquire()
    limiter.observe(_headers(0, int(EPOCH) + 2, limit=10), now_epoch=EPOCH)
    assert limiter.acquire() == pytest.approx(0.75)


def test_observe_zero_explained_by_our_own_sends_costs_no_extra_wait():
    """Reset is rounded up to a whole second; our own clock knows when our oldest send leaves."""
    t = FakeTime(start=0.0)
    limiter = _limiter(10, 1.0, t)
    for _ in range(10):
        limiter.acquire()
        t.now += 0.01
    # the server: 10 of 10 used, the oldest (ours at 0.0 = epoch ...0.25) leaves at ...1.25 -> "...2"
    limiter.observe(_headers(0, int(EPOCH) + 2, limit=10), now_epoch=EPOCH + t.now)
    assert limiter.acquire() == pytest.approx(1.0 - 0.1)  # at 1.0, not at the rounded 1.75
    assert t.now == pytest.approx(1.0)


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
    assert limiter.acquire() == 0.0
    assert t.sleeps == []


def test_pause_holds_every_acquire_and_only_extends():
    t = FakeTime(start=0.0)
    limiter = _limiter(1000, 1.0, t)
    limiter.pause(2.0)
    limiter.pause(0.5)  # a shorter wait must not cut the longer one short
    assert limiter.acquire() == pytest.approx(2.0)
    limiter.pause(0)
    assert limiter.acquire() == 0.0


@pytest.mark.parametrize("args", [(0, 1.0), (10, 0), (10, 1.0, -0.1)])
def test_bad_settings_are_refused(args):
    budget, window, *margin = args
    with pytest.raises(ValueError):
        RateLimiter(budget, window, margin=margin[0] if margin else 0.01)


def test_threads_sharing_one_limiter_never_exceed_the_budget():
    budget, window, threads, total = 50, 0.5, 4, 300
    local = threading.local()

    def clock() -> float:
        # acquire() reads the clock once per try, inside its lock; the last read of a
        # thread's successful acquire() is the exact moment its slot was granted.
        local.last = time.monotonic()
        return local.last

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

    began = time.monotonic()
    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for th in pool:
        th.start()
    for th in pool:
        th.join(timeout=30)
    elapsed = time.monotonic() - began
    assert len(grants) == total
    assert _max_in_any_window(grants, window) <= budget
    # 300 at 50 per 0.5 s: the 251st can go no earlier than 5 windows after the first
    assert elapsed >= (total // budget - 1) * window
    assert elapsed < (total // budget) * window + 2.0  # and the limiter does not dawdle
