"""Progress lines for long steps: at every 10% of a known total, or every 30 s when it is unknown.

On-call staff watching a 40-minute download or a 2-hour delivery need to see that it moves:

    Downloading the Braze export of vip_users: 40% (38.2 of 95.6 MB)
    Delivering chunk 3: 30% (1,200 of 4,000 batches)

`Progress(log, "Downloading ...", total=n, unit="bytes")`, then `advance(k)` as work is done and
`done()` at the end (logs the final line once). Cheap enough for a per-row call: it compares one
integer per call.
"""

from __future__ import annotations

import logging
import time

_STEP = 0.10  # a line at every 10% of a known total
_EVERY_SECONDS = 30.0  # and, with no total (or between steps of a slow one), at least this often


class Progress:
    def __init__(self, log: logging.Logger, what: str, *, total: int | None, unit: str = "rows",
                 every_seconds: float = _EVERY_SECONDS, clock=time.monotonic):
        self.log, self.what, self.total, self.unit = log, what, total if total and total > 0 else None, unit
        self.done_so_far = 0
        self.every_seconds, self.clock = every_seconds, clock
        self._last_time = clock()
        self._next_mark = self._mark_after(0)
        self._finished = False
        self._emitted = -1  # the count the last line showed

    def _mark_after(self, n: int) -> float:
        """The next count at which a line is due (by share); inf with no total."""
        if self.total is None:
            return float("inf")
        step = max(1, int(self.total * _STEP))
        return (n // step + 1) * step

    def advance(self, n: int = 1) -> None:
        self.done_so_far += n
        if self.done_so_far >= self._next_mark:
            self._emit()
        elif self.clock() - self._last_time >= self.every_seconds:
            self._emit()

    def set(self, n: int) -> None:
        """The count reached so far (for callers that count themselves)."""
        self.advance(n - self.done_so_far)

    def done(self) -> None:
        """The closing line (once; not repeated when the last line already showed the final count)."""
        if not self._finished:
            self._finished = True
            if self._emitted != self.done_so_far or self.total is None:
                self._emit(final=True)

    def _emit(self, final: bool = False) -> None:
        self._emitted = self.done_so_far
        self._last_time = self.clock()
        self._next_mark = self._mark_after(self.done_so_far)
        if self.total is not None:
            share = min(self.done_so_far / self.total, 1.0)
            self.log.info("%s: %d%% (%s of %s %s)", self.what, int(share * 100 + 1e-9), _fmt(self.done_so_far,
                          self.unit), _fmt(self.total, self.unit), _unit(self.unit))
        else:
            self.log.info("%s: %s %s so far%s", self.what, _fmt(self.done_so_far, self.unit), _unit(self.unit),
                          " (done)" if final else "")


def _fmt(n: int, unit: str) -> str:
    return f"{n / 1e6:,.1f}" if unit == "bytes" else f"{n:,}"


def _unit(unit: str) -> str:
    return "MB" if unit == "bytes" else unit
