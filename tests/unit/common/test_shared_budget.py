"""SharedBudget: the workspace budget follows the tasks that are sending (leases in a shared store).

Manual ticks with a fake wall clock for the protocol's steps (join, lower, raise, leave, expiry,
a lapsed lease), and real threads racing on one store for the invariant: the budgets in use never
add up to more than the total, whatever the interleaving.
"""

from __future__ import annotations

import random
import threading
import time

import pytest

from include.clients.state_store import StateStore
from include.common.rate_limit import RateLimiter
from include.common.shared_budget import SharedBudget

PREFIX = "runs/r1/delivery-leases"


class Wall:
    def __init__(self, now: float = 1_800_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


class Mono:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _member(store, wall, mono, name, total=100.0, **kw) -> SharedBudget:
    limiter = RateLimiter(100, 1.0, clock=mono, sleep=lambda s: None)
    return SharedBudget(store, PREFIX, limiter, total=total, member=name, wall=wall, **kw)


@pytest.fixture
def store(tmp_path):
    return StateStore(str(tmp_path / "state"))


def test_alone_takes_everything_a_joiner_waits_for_room_then_both_share(store):
    wall, mono = Wall(), Mono()
    a = _member(store, wall, mono, "a")
    a.tick()
    assert a.claim == 100 and a.limiter.budget == 100
    b = _member(store, wall, mono, "b")
    assert b.limiter.budget == 0  # held from the moment it is made
    assert b.tick() is True  # announced (claim 0); no room yet: waiting
    assert b.claim == 0
    a.tick()  # a sees b: lowers to the fair share first
    assert a.claim == 50 and a.limiter.budget == 50
    b.tick()  # b takes what a left
    assert b.claim == 50 and b.limiter.budget == 50
    c = _member(store, wall, mono, "c")
    c.tick()
    a.tick(), b.tick(), c.tick()
    assert [m.claim for m in (a, b, c)] == pytest.approx([100 / 3] * 3)
    b.close()  # finished: its lease is deleted, the others take its share at their next tick
    a.tick(), c.tick()
    assert [a.claim, c.claim] == pytest.approx([50, 50])
    assert store.list(PREFIX) == sorted([a.key, c.key])


def test_a_dead_tasks_lease_expires_and_the_survivor_takes_its_share(store):
    wall, mono = Wall(), Mono()
    a, b = _member(store, wall, mono, "a", ttl=3.0), _member(store, wall, mono, "b", ttl=3.0)
    a.tick(), b.tick(), a.tick(), b.tick()
    assert a.claim == b.claim == 50
    # b is SIGKILLed: it never ticks again, its lease stays
    wall.now += 2.9
    mono.now += 2.9
    a.tick()
    assert a.claim == 50  # b's lease still counts
    wall.now += 0.2
    mono.now += 0.2
    a.tick()
    assert a.claim == 100


def test_a_task_that_could_not_renew_stops_sending_and_rejoins_from_zero(store):
    wall, mono = Wall(), Mono()
    a = _member(store, wall, mono, "a", ttl=3.0, guard=0.75)
    a.tick()
    assert a.limiter._valid_until == pytest.approx(100.0 + 3.0 - 0.75)
    mono.now += 2.5  # stalled past its lease's guard: the limiter grants nothing any more
    wall.now += 2.5
    assert mono.now >= a.limiter._valid_until
    b = _member(store, wall, mono, "b", ttl=3.0)
    wall.now += 0.6  # a's lease expired: b takes everything
    mono.now += 0.6
    b.tick()
    assert b.claim == 100
    a.tick()  # a wakes up: it starts again from 0, and only gets room once b lowered
    assert a.claim == 0
    b.tick()
    a.tick()
    assert a.claim == b.claim == 50


def test_a_raise_is_withdrawn_when_the_others_did_not_leave_room(store):
    """Two tasks raising at once: each publishes first, then reads; one that sees the other's
    pending claim takes only what is left (here: nothing) and withdraws the rest."""
    wall, mono = Wall(), Mono()
    a, b = _member(store, wall, mono, "a"), _member(store, wall, mono, "b")
    real_others = a._others
    calls = []

    def others_then_b_raises():
        calls.append(1)
        if len(calls) == 2:  # a published its pending claim; before a reads again, b does a whole tick
            b.tick()
        return real_others()

    a._others = others_then_b_raises
    a.tick()
    # a read first (nobody there) and published 100 pending; b then saw a's 100 and got nothing;
    # a's second read sees b (claim 0) and takes min(100, 100 - 0, fair 50) = 50
    assert b.claim == 0
    assert a.claim == 50
    assert a.claim + b.claim <= 100
    b.tick()
    assert a.claim + b.claim <= 100 and b.claim == 50


def test_unreadable_fresh_lease_counts_as_the_whole_budget(store):
    wall, mono = Wall(time.time()), Mono()
    store.write_bytes(f"{PREFIX}/broken.json", b"{not json")
    a = _member(store, wall, mono, "a")
    a.tick()
    assert a.claim == 0  # safe side: it may be someone's lease
    wall.now += 10  # older than ttl: no longer counted
    a.tick()
    assert a.claim == 100


def test_bad_settings_are_refused(store):
    limiter = RateLimiter(10, 1.0)
    with pytest.raises(ValueError):
        SharedBudget(store, PREFIX, limiter, total=0)
    with pytest.raises(ValueError):
        SharedBudget(store, PREFIX, limiter, total=10, ttl=1.0, guard=1.0)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_racing_tasks_never_use_more_than_the_total(store, seed):
    """Five tasks joining, ticking and leaving in real threads, with random delays inside every
    store operation: at every change of any task's budget, the budgets in use add up to <= total."""
    rng = random.Random(seed)
    total = 60.0
    in_use: dict[str, float] = {}
    lock = threading.Lock()
    violations: list[float] = []

    class SlowStore(StateStore):
        def _jitter(self):
            time.sleep(rng.uniform(0, 0.003))

        def write_bytes(self, key, data):
            self._jitter()
            super().write_bytes(key, data)
            self._jitter()

        def read_bytes(self, key):
            self._jitter()
            return super().read_bytes(key)

        def list(self, prefix=""):
            self._jitter()
            return super().list(prefix)

    slow = SlowStore(store.url)

    class Watched(RateLimiter):
        def set_budget(self, budget):
            with lock:
                in_use[self.name] = budget
                if sum(in_use.values()) > total + 1e-6:
                    violations.append(sum(in_use.values()))
            super().set_budget(budget)

    def task(k: int):
        time.sleep(rng.uniform(0, 0.1))
        limiter = Watched(100, 1.0)
        limiter.name = f"t{k}"
        share = SharedBudget(slow, PREFIX, limiter, total=total, member=f"t{k}", refresh=0.01)
        share.start()
        time.sleep(rng.uniform(0.2, 0.6))
        share.close()

    threads = [threading.Thread(target=task, args=(k,)) for k in range(5)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=30)
    assert not violations, violations[:5]
    assert max(in_use.values(), default=0) == 0  # all closed
    assert slow.list(PREFIX) == []


@pytest.mark.sandbox
def test_on_s3_every_process_lists_the_others_leases_afresh(s3_bucket, monkeypatch):
    """Two processes = two s3fs instances, each with its own listing cache (moto on loopback)."""
    import fsspec

    for name, value in (("AWS_ACCESS_KEY_ID", s3_bucket.access_key), ("AWS_SECRET_ACCESS_KEY", s3_bucket.secret_key),
                        ("AWS_DEFAULT_REGION", s3_bucket.region)):
        monkeypatch.setenv(name, value)
    stores = []
    for _ in range(2):
        store = StateStore(f"s3://{s3_bucket.name}/state")
        store.fs = fsspec.filesystem("s3", skip_instance_cache=True, endpoint_url=s3_bucket.endpoint_url)
        stores.append(store)
    wall, mono = Wall(time.time()), Mono()
    b = _member(stores[1], wall, mono, "b")
    b.tick()  # b alone: everything; its instance has now listed the prefix
    assert b.claim == 100
    a = _member(stores[0], wall, mono, "a")
    a.tick()
    assert a.claim == 0
    b.tick()  # a stale listing would show b alone: it must see a and lower
    assert b.claim == 50
    a.tick()
    assert a.claim == 50
