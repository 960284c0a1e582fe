"""Fault injection for the Braze sandbox: failures on demand and a seeded share of ``/users/track``.

Two sources, checked in this order for every request:

* ``fail_next(n, status)`` -- the next ``n`` requests, to any endpoint, are faulted;
* ``share`` (0..1) -- that share of ``POST /users/track`` requests, drawn with
  ``random.Random(seed)`` (deterministic for a sequential client) from ``kinds``.

A fault is an HTTP status 400-599 (429 and 503 carry ``Retry-After: 1``), ``"timeout"`` (sleep
``sleep`` seconds, then 500) or ``"reset"`` (close the connection without a response). A faulted
request applies nothing and does not count against a rate limit.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterable

from sandbox.braze_http import Response, json_response
from sandbox.rate_window import SlidingWindowLimiter

__all__ = ["FAULT_KINDS", "FaultInjector", "check_fault"]

FAULT_KINDS: tuple[int | str, ...] = (429, 500, 503, "timeout", "reset")


def check_fault(kind: int | str) -> int | str:
    if kind in ("timeout", "reset"):
        return kind
    if isinstance(kind, int) and not isinstance(kind, bool) and 400 <= kind <= 599:
        return kind
    raise ValueError(f"invalid fault {kind!r}: expected an HTTP status 400-599, 'timeout' or 'reset'")


class FaultInjector:
    """Decides which requests fail and how. Not locked itself: ``BrazeSandbox`` calls
    :meth:`arm` and :meth:`draw` with its lock held."""

    def __init__(
        self, share: float = 0.0, seed: int = 0, sleep: float = 2.0, kinds: Iterable[int | str] = FAULT_KINDS
    ) -> None:
        self.share = float(share)
        self.sleep = float(sleep)
        self.kinds = tuple(check_fault(k) for k in kinds)
        if not self.kinds:
            raise ValueError("fault_kinds must not be empty")
        self._rng = random.Random(seed)
        self._fail_count = 0
        self._fail_status: int | str = 500

    def arm(self, n: int, status: int | str) -> None:
        """Fault the next ``n`` requests with ``status`` (already checked with :func:`check_fault`)."""
        self._fail_count = n
        self._fail_status = status

    def draw(self, track: bool) -> int | str | None:
        """The fault for this request (``track``: a ``POST /users/track``), or None."""
        if self._fail_count > 0:
            self._fail_count -= 1
            return self._fail_status
        if track and self.share > 0 and self._rng.random() < self.share:
            return self._rng.choice(self.kinds)
        return None

    def respond(self, fault: int | str, limiter: SlidingWindowLimiter) -> Response:
        """The answer to a faulted request, with ``limiter``'s headers (nothing counted)."""
        if fault == "reset":
            return Response(0, reset=True)
        if fault == "timeout":
            time.sleep(self.sleep)
            resp = json_response(500, {"message": "Injected failure (timeout)"})
        else:
            resp = json_response(fault, {"message": f"Injected failure ({fault})"})
            if fault in (429, 503):
                resp.headers["Retry-After"] = "1"
        resp.headers.update(limiter.peek())
        return resp
