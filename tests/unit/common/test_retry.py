"""The one backoff mechanism: exponential with jitter, capped, server waits honoured."""

from __future__ import annotations

import random

import pytest

from include.common.errors import PermanentError, RetryAfterError, TransientError
from include.common.retry import RetryPolicy, retry_call


def test_delays_grow_exponentially_within_jitter_bounds_and_cap():
    policy = RetryPolicy(attempts=10, base_delay=1.0, max_delay=8.0)
    rng = random.Random(7)
    for n, ceiling in [(1, 1), (2, 2), (3, 4), (4, 8), (5, 8), (9, 8)]:
        for _ in range(50):
            assert ceiling / 2 <= policy.delay(n, rng=rng) <= ceiling


def test_server_wait_wins_but_is_capped():
    policy = RetryPolicy(max_delay=30)
    assert policy.delay(1, server_wait=12.5) == 12.5
    assert policy.delay(1, server_wait=3600) == 30


def test_transient_errors_are_retried_then_succeed():
    calls, waits = [], []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise RetryAfterError("429", retry_after=0.5)
        return "ok"

    assert retry_call(flaky, RetryPolicy(attempts=5), what="x", sleep=waits.append) == "ok"
    assert waits == [0.5, 0.5]


def test_permanent_errors_are_not_retried():
    calls = []

    def bad():
        calls.append(1)
        raise PermanentError("401")

    with pytest.raises(PermanentError):
        retry_call(bad, RetryPolicy(attempts=5), what="x", sleep=lambda s: None)
    assert len(calls) == 1


def test_giving_up_says_how_many_tries():
    def always():
        raise TransientError("503")

    with pytest.raises(TransientError, match="uploading: still failing after 3 tries: 503"):
        retry_call(always, RetryPolicy(attempts=3), what="uploading", sleep=lambda s: None)
