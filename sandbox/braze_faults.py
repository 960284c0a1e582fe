"""Fault injection for the Braze sandbox: failures on demand and a seeded share of ``/users/track``.

Request faults, checked in this order for every request:

* ``fail_next(n, status, path=None)`` -- the next ``n`` requests (to ``path`` only, if given;
  to any endpoint otherwise) are faulted;
* ``share`` (0..1) -- that share of ``POST /users/track`` requests, drawn with
  ``random.Random(seed)`` (deterministic for a sequential client) from ``kinds``.

A request fault is an HTTP status 400-599 (429 and 503 carry ``Retry-After: 1``), ``"429-bare"``
(a 429 without ``Retry-After``), ``"timeout"`` (sleep ``sleep`` seconds, then 500), ``"reset"``
(close the connection without a response) or ``"html"`` (``200`` with ``Content-Type: text/html``
and an HTML page, as a misconfigured host or an intercepting proxy answers; no Braze headers). On
a download link the statuses answer in S3's XML. A faulted request applies nothing and does not
count against a rate limit -- except the *applied-then-failed* kinds (``APPLIED_FAULTS``, on
``POST /users/track`` only): the request is applied and counted as usual, then its answer is lost:
``"applied-500"`` (a 500 instead of the 201), ``"applied-reset"`` (the connection closes without
an answer), ``"applied-timeout"`` (the 201 comes ``sleep`` seconds late: past a client's read
timeout) or ``"applied-cut"`` (the 201's body breaks off half-way). A client that re-sends such a
request applies it twice. ``FaultInjector.counts`` counts the faults drawn, by kind.

Download faults (:class:`DownloadFaults`, ``BrazeSandbox.fail_downloads``) spoil the body of a
*full* GET of a ready export file (a ``Range`` request, such as a readiness probe, is answered
truthfully and does not use one up): ``"empty"`` (``200`` with a 0-byte body), ``"truncated"``
(``Content-Length`` of the whole file, then the connection closes after half of it) and
``"html"`` (``200``, ``text/html``, an HTML page).
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterable

from sandbox.braze_http import Response, json_response
from sandbox.rate_window import SlidingWindowLimiter
from sandbox.s3_link import s3_error

__all__ = [
    "APPLIED_FAULTS",
    "DOWNLOAD_FAULTS",
    "FAULT_KINDS",
    "HTML_PAGE",
    "DownloadFaults",
    "FaultInjector",
    "check_fault",
    "fail_after_applying",
]

FAULT_KINDS: tuple[int | str, ...] = (429, 500, 503, "timeout", "reset")
APPLIED_FAULTS = ("applied-500", "applied-reset", "applied-timeout", "applied-cut")
DOWNLOAD_FAULTS = ("empty", "truncated", "html")
HTML_PAGE = (
    b'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>Sign in</title></head>\n'
    b"<body><h1>Sign in to continue</h1><p>Your session has expired. Please sign in again.</p>\n"
    b'<form method="post" action="/login"><input name="user"><input name="password" type="password">'
    b"<button>Sign in</button></form></body></html>\n"
)
_S3_CODES = {
    500: ("InternalError", "We encountered an internal error. Please try again."),
    503: ("SlowDown", "Please reduce your request rate."),
}


def check_fault(kind: int | str) -> int | str:
    if kind in ("timeout", "reset", "html", "429-bare", *APPLIED_FAULTS):
        return kind
    if isinstance(kind, int) and not isinstance(kind, bool) and 400 <= kind <= 599:
        return kind
    raise ValueError(f"invalid fault {kind!r}: expected an HTTP status 400-599, 'timeout', 'reset', 'html', "
                     f"'429-bare' or one of {APPLIED_FAULTS}")


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
        self._fail_path: str | None = None
        self.counts: dict[str, int] = {}  # faults drawn, by kind (str of the kind)

    def arm(self, n: int, status: int | str, path: str | None = None) -> None:
        """Fault the next ``n`` requests (to ``path`` only, if given) with ``status`` (checked)."""
        self._fail_count = n
        self._fail_status = status
        self._fail_path = path

    def draw(self, track: bool, path: str = "") -> int | str | None:
        """The fault for this request (``track``: a ``POST /users/track``), or None."""
        fault = None
        if self._fail_count > 0 and self._fail_path in (None, path):
            self._fail_count -= 1
            fault = self._fail_status
        elif track and self.share > 0 and self._rng.random() < self.share:
            fault = self._rng.choice(self.kinds)
        if fault is not None:
            self.counts[str(fault)] = self.counts.get(str(fault), 0) + 1
        return fault

    def respond(self, fault: int | str, limiter: SlidingWindowLimiter | None, s3: bool = False) -> Response:
        """The answer to a faulted request, with ``limiter``'s headers if any (nothing counted).

        ``s3``: the request was to a download link, so a status answers in S3's XML.
        """
        if fault == "reset":
            return Response(0, reset=True)
        if fault == "html":
            return Response(200, HTML_PAGE, content_type="text/html; charset=utf-8")
        label = fault
        if fault == "timeout":
            time.sleep(self.sleep)
            fault = 500
        bare = fault == "429-bare"
        if bare:
            fault = 429
        if fault in APPLIED_FAULTS:  # off /users/track there is nothing to apply: a plain 500
            fault = 500
        if s3:
            code, message = _S3_CODES.get(fault, ("ServiceUnavailable", f"Injected failure ({label})"))
            resp = s3_error(fault, code, message)
        else:
            resp = json_response(fault, {"message": f"Injected failure ({label})"})
        if fault in (429, 503) and not bare:
            resp.headers["Retry-After"] = "1"
        if limiter is not None:
            resp.headers.update(limiter.peek())
        return resp


class DownloadFaults:
    """Download faults armed for the next ``n`` full GETs of ready export files (of one export,
    by ``object_prefix``, or of any). Not locked itself: ``BrazeSandbox`` holds its lock."""

    def __init__(self) -> None:
        self._armed: list[list] = []  # [remaining, kind, object_prefix or None], oldest first

    def arm(self, n: int, kind: str, object_prefix: str | None = None) -> None:
        if kind not in DOWNLOAD_FAULTS:
            raise ValueError(f"invalid download fault {kind!r}: expected one of {DOWNLOAD_FAULTS}")
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be an int >= 1, got {n!r}")
        self._armed.append([n, kind, object_prefix])

    def draw(self, object_prefix: str) -> str | None:
        """The fault for this full GET of ``object_prefix``'s file, or None (first armed match)."""
        for entry in self._armed:
            if entry[2] in (None, object_prefix):
                entry[0] -= 1
                if entry[0] == 0:
                    self._armed.remove(entry)
                return entry[1]
        return None


def fail_after_applying(fault: str, applied: Response, sleep: float) -> Response:
    """The answer to an applied-then-failed request (``APPLIED_FAULTS``) whose real answer was ``applied``."""
    if fault == "applied-reset":
        return Response(0, reset=True)
    if fault == "applied-timeout":
        time.sleep(sleep)
        return applied
    if fault == "applied-cut":
        applied.truncate_at = max(1, len(applied.body) // 2)
        return applied
    return json_response(500, {"message": f"Injected failure ({fault}, after applying the request)"})
