"""What a test can do to the Lytics sandbox's scans, and the log of the requests it answered.

:class:`LyticsKnobs` is a mixin of :class:`sandbox.lytics_server.LyticsSandbox`: the knob methods
(``fail_next``, ``empty_pages``, ``end_scans_after``, ``total_offset``, ``expire_tokens``,
``rename_user_field``) set state that the sandbox reads when it answers a request, under the
sandbox's ``_lock``. Standard library only.
"""

from __future__ import annotations

import re
import threading
import time

__all__ = ["RESET", "LyticsKnobs"]

RESET = "reset"  # fail_next(n, RESET): close the connection (TCP RST) without answering


class LyticsKnobs:
    """Test knobs and the request log; the class using it sets ``_lock`` and calls ``_init_knobs``."""

    _lock: threading.Lock

    def _init_knobs(self) -> None:
        self._requests: list[tuple[str, str, int]] = []
        self._fail_count = 0
        self._fail_status: int | str = 500
        self._empty_pages: dict[str | None, tuple[int, int]] = {}  # audience id (None: any) -> (after, run)
        self._end_after: dict[str | None, int] = {}  # audience id (None: any) -> pages
        self._total_offset: dict[str | None, int] = {}  # audience id (None: any) -> delta
        self._renamed: dict[str, str | None] = {}  # user field -> its new name (None: removed)
        self._tokens_valid_from = 0.0

    def fail_next(self, n: int, status: int | str = 500) -> None:
        """The next ``n`` requests, to any endpoint and before auth, answer ``status`` (e.g.
        429/500/503) -- or, with ``status="reset"``, get their connection aborted (TCP RST)
        without any response (logged with status 0)."""
        if status != RESET and not (isinstance(status, int) and 100 <= status <= 599):
            raise ValueError(f"status must be an HTTP status or {RESET!r}, got {status!r}")
        with self._lock:
            self._fail_count = n
            self._fail_status = status

    def empty_pages(self, run: int, after: int = 1, audience_id: str | None = None) -> None:
        """In every scan (of ``audience_id``, or of any audience), once ``after`` pages with members
        were served, serve ``run`` pages with ``"data": []`` and a non-empty ``_next`` (pointing at
        the same place), then go on. ``run=0`` turns it off. Lytics scans walk the user table in
        parts, so a page may hold no member of the audience and still not be the last."""
        if run < 0 or after < 0:
            raise ValueError("run and after must be >= 0")
        with self._lock:
            if run:
                self._empty_pages[audience_id] = (after, run)
            else:
                self._empty_pages.pop(audience_id, None)

    def end_scans_after(self, pages: int | None, audience_id: str | None = None) -> None:
        """Scans (of ``audience_id``, or of any audience) end with ``"_next": ""`` after ``pages``
        pages although members remain (``total`` still counts them all); None turns it off."""
        if pages is not None and pages < 1:
            raise ValueError("pages must be >= 1 (or None)")
        with self._lock:
            if pages is None:
                self._end_after.pop(audience_id, None)
            else:
                self._end_after[audience_id] = pages

    def total_offset(self, delta: int, audience_id: str | None = None) -> None:
        """Scan pages report ``total`` = members + ``delta`` (a count that disagrees with the scan)."""
        with self._lock:
            if delta:
                self._total_offset[audience_id] = delta
            else:
                self._total_offset.pop(audience_id, None)

    def expire_tokens(self) -> None:
        """Every scan token issued so far is refused from now on (400 ``scan token expired``), as
        when a long scan outlives its cursor; scans started afterwards work."""
        with self._lock:
            self._tokens_valid_from = time.time()

    def rename_user_field(self, old: str, new: str | None) -> None:
        """Rename a user field account-wide (``new=None``: remove it): scans no longer return
        ``old`` (asking for it in ``fields`` gives records without it) and return the values under
        ``new`` instead; ``restore_user_fields`` undoes every rename."""
        if new is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,63}", new):
            raise ValueError(f"not a field name: {new!r}")
        with self._lock:
            self._renamed[old] = new

    def restore_user_fields(self) -> None:
        with self._lock:
            self._renamed.clear()

    def _knob(self, knobs: dict, audience_id: str):
        return knobs.get(audience_id, knobs.get(None))

    @property
    def requests(self) -> list[tuple[str, str, int]]:
        """A snapshot of the (method, path without query, status) of every request so far."""
        with self._lock:
            return list(self._requests)

    def clear_requests(self) -> None:
        with self._lock:
            self._requests.clear()

    def _record(self, method: str, path: str, status: int) -> None:
        with self._lock:
            self._requests.append((method, path, status))
