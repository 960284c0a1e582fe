"""RateLimiter: an exact sliding window (never more than the budget in any window), server stop signals."""

from __future__ import annotations

import random
import threading
import time

import pytest

from include.rate_limit import RateLimiter


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


def _limiter(budget: int, window: float, t: FakeTime) -> RateLimiter:
    return RateLimiter(budget, window, clock=t.clock, sleep=t.sleep)


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


@pytest.mark.parametrize("name_case", [str.title, str.lower, str.upper])
def test_observe_remaining_zero_holds_until_reset(name_case):
    t = FakeTime()
    limiter = _limiter(1000, 1.0, t)
    epoch = 1_800_000_000.0
    limiter.observe({name_case("X-RateLimit-Remaining"): "0", name_case("X-RateLimit-Reset"): str(int(epoch) + 5)},
                    now_epoch=epoch)
    assert limiter.acquire() == pytest.approx(5.0)
    assert limiter.acquire() == 0.0  # the hold is over


@pytest.mark.parametrize("headers", [
    {"X-RateLimit-Remaining": "3", "X-RateLimit-Reset": "1800000005"},
    {"X-RateLimit-Remaining": "0"},
    {"X-RateLimit-Remaining": "zero", "X-RateLimit-Reset": "1800000005"},
    {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "1799999990"},  # already past
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


def test_bad_settings_are_refused():
    with pytest.raises(ValueError):
        RateLimiter(0, 1.0)
    with pytest.raises(ValueError):
        RateLimiter(10, 0)


def test_threads_sharing_one_limiter_never_exceed_the_budget():
    budget, window, threads, total = 50, 0.5, 4, 300
    local = threading.local()

    def clock() -> float:
        # acquire() reads the clock once per try, inside its lock; the last read of a
        # thread's successful acquire() is the exact moment its slot was granted.
        local.last = time.monotonic()
        return local.last

    limiter = RateLimiter(budget, window, clock=clock)
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
