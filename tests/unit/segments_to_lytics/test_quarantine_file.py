"""The quarantine file's rows: written as csv.writer writes them, readable back field for field."""

from __future__ import annotations

import csv
import io

import pytest

from include.segments_to_lytics.quarantine_file import quarantine_line

TRICKY = ["", "plain", "a,b", 'say "hi"', "two\nlines", "cr\ronly", "crlf\r\n", " lead", "trail ", "\u2028",
          "😀 שלום", '"', ",", "null", "x" * 70_000, "tab\there", "\x00nul"]


@pytest.mark.parametrize("record", TRICKY, ids=lambda v: repr(v[:20]))
def test_a_row_is_exactly_what_csv_writer_writes(record):
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\r\n").writerow([f"e.zip!x-{record[:5]}.json", 7, f"reason: {record[:30]}", record])
    assert quarantine_line(f"e.zip!x-{record[:5]}.json", 7, f"reason: {record[:30]}", record) == buf.getvalue()
    back = next(csv.reader(io.StringIO(buf.getvalue(), newline="")))
    assert back[3] == record
