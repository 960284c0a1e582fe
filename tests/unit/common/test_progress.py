"""Progress lines: one at every 10% of a known total, at least every 30 s without one."""

from __future__ import annotations

import logging

from include.common.progress import Progress


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def lines(caplog):
    return [r.getMessage() for r in caplog.records]


def test_a_known_total_logs_every_ten_percent_and_once_at_the_end(caplog):
    caplog.set_level(logging.INFO)
    progress = Progress(logging.getLogger("t"), "Delivering chunk 0", total=1_000, unit="batches", clock=Clock())
    for _ in range(1_000):
        progress.advance()
    progress.done()
    assert lines(caplog) == [f"Delivering chunk 0: {p}% ({p * 10:,} of 1,000 batches)" for p in range(10, 101, 10)]


def test_bytes_are_shown_in_megabytes_and_big_steps_skip_no_line(caplog):
    caplog.set_level(logging.INFO)
    progress = Progress(logging.getLogger("t"), "Downloading", total=50_000_000, unit="bytes", clock=Clock())
    progress.advance(26_000_000)  # one call past two marks: one line
    progress.advance(24_000_000)
    progress.done()
    assert lines(caplog) == ["Downloading: 52% (26.0 of 50.0 MB)", "Downloading: 100% (50.0 of 50.0 MB)"]


def test_without_a_total_a_line_every_30_seconds_and_a_closing_one(caplog):
    caplog.set_level(logging.INFO)
    clock = Clock()
    progress = Progress(logging.getLogger("t"), "Shaping", total=None, unit="rows", clock=clock)
    for second in range(95):
        clock.now = float(second)
        progress.advance(100)
    progress.done()
    assert lines(caplog) == ["Shaping: 3,100 rows so far", "Shaping: 6,100 rows so far", "Shaping: 9,100 rows so far",
                             "Shaping: 9,500 rows so far (done)"]


def test_a_slow_step_with_a_total_still_speaks_every_30_seconds(caplog):
    caplog.set_level(logging.INFO)
    clock = Clock()
    progress = Progress(logging.getLogger("t"), "Scanning", total=1_000_000, unit="members", clock=clock)
    clock.now = 31.0
    progress.advance(5)
    assert lines(caplog) == ["Scanning: 0% (5 of 1,000,000 members)"]
