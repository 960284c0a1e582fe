"""Read Braze dashboard exports: CSV files (often zipped), as dicts keyed by the header.

Part of the export reading contract of `export_files` (which dispatches here for `kind == "csv"`):
records are bounded by `max_record_bytes` before the csv module sees them (an over-long record is
skipped to its end and yielded as a `RejectedRecord`), an unreadable row is rejected on its own,
and a header that lacks a mapped column fails the file with the close matches it found
(`Email` for `email`), never a column delivered blank.
"""

from __future__ import annotations

import codecs
import csv
import difflib
from collections.abc import Iterator
from pathlib import Path

from include.segments_to_lytics.export_records import (
    DEFAULT_MAX_RECORD_BYTES,
    SKIP_CHUNK,
    Record,
    RejectedRecord,
    check_limits,
    excerpt,
    too_long,
)
from include.segments_to_lytics.export_streams import (
    _AGAIN,
    DEFAULT_MAX_INFLATE_RATIO,
    DamagedExportError,
    ExportFormatError,
    member_streams,
)


def _eol(line: bytes) -> int:
    """The length of the line break that ends `line` (CR LF, LF, or none)."""
    return 0 if line[-1:] != b"\n" else 2 if line[-2:] == b"\r\n" else 1




class _LongRecord(Exception):  # noqa: N818 - internal signal, never escapes this module
    def __init__(self, line_no: int, record: RejectedRecord):
        self.line_no, self.record = line_no, record


class _CsvLines:
    """The physical lines of one CSV member, decoded, fed to `csv.reader`.

    Counts the bytes of the current record (the reader's loop sets `size = 0` after each row).
    A record over the limit is skipped up to the newline that ends it outside quotes, and
    signalled with `_LongRecord`; csv.reader starts afresh on its next call. Quotes are counted
    only for records that span lines (rare), to keep the common path short.
    """

    __slots__ = ("_readline", "_cap", "_limit", "_source", "line_no", "size", "first", "more", "eof")

    def __init__(self, source: str, stream, limit: int):
        self._readline, self._cap, self._limit, self._source = stream.readline, limit + 2, limit, source
        self.line_no = self.size = 0
        self.first, self.more = b"", None
        self.eof = False  # the end of the member was reached (csv.reader asked for a line after the last)

    def __iter__(self):
        return self

    def __next__(self) -> str:
        line = self._readline(self._cap)  # room for CR LF
        if not line:
            self.eof = True
            raise StopIteration
        self.line_no += 1
        if self.size:
            self._continued(line)
        else:
            self.first = line
        size = self.size = self.size + len(line)
        if size > self._limit and size - _eol(line) > self._limit:
            self._skip_record(line)
        try:
            return line.decode()
        except UnicodeDecodeError as exc:
            raise ExportFormatError(f"{self._source} line {self.line_no}: not UTF-8 text ({exc.reason} at "
                                    f"byte {exc.start + 1}); re-export the CSV as UTF-8") from None

    def _continued(self, line: bytes) -> None:
        """A further line of a record (a quoted field with line breaks): count quotes, grow the excerpt."""
        if self.more is None or self.more[2] is not self.first:  # this record's first continuation
            self.more = [self.first.count(b'"'), self.first[:800], self.first]
        self.more[0] += line.count(b'"')
        if len(self.more[1]) < 800:
            self.more[1] += line[:800]

    def _quotes_and_start(self) -> tuple[int, bytes]:
        more = self.more
        if more is None or more[2] is not self.first:  # the record is one line
            return self.first.count(b'"'), self.first
        return more[0], more[1]

    def skipped(self, reason: str) -> RejectedRecord:
        record = RejectedRecord(reason, excerpt(self._quotes_and_start()[1]))
        self.size = 0
        return record

    def _skip_record(self, line: bytes):
        quotes, start = self._quotes_and_start()
        size, inside, last, before = self.size, quotes & 1, line, b""
        while inside or last[-1] != 10:
            more = self._readline(SKIP_CHUNK)
            if not more:  # end of file ends the record
                break
            self.line_no += last[-1] == 10  # a new physical line starts
            size += len(more)
            inside ^= more.count(b'"') & 1
            before, last = last[-1:], more
        self.size = 0
        raise _LongRecord(self.line_no, too_long(self._limit, size - _eol(before + last[-2:]), start))


def iter_csv_records(path: Path, members: list[str] | None = None, *,
                     max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
                     max_inflate_ratio: float | None = DEFAULT_MAX_INFLATE_RATIO,
                     required_fields: list[str] | None = None) -> Iterator[Record]:
    """Rows of the dashboard CSV(s) inside `path`, as dicts keyed by the header.

    Raises the process-wide `csv.field_size_limit` to `max_record_bytes` if lower: records are
    bounded here, before the csv module sees them.
    """
    check_limits(max_record_bytes, max_inflate_ratio)
    if csv.field_size_limit() < max_record_bytes:
        csv.field_size_limit(max_record_bytes)
    for source, stream in member_streams(path, members, max_inflate_ratio):
        if stream.peek(3)[:3] == codecs.BOM_UTF8:
            stream.read(3)
        lines = _CsvLines(source, stream, max_record_bytes)
        reader = csv.reader(lines)
        try:
            header = next(reader)
        except StopIteration:
            continue
        except (_LongRecord, csv.Error) as exc:
            why = exc.record.reason if isinstance(exc, _LongRecord) else str(exc)
            raise ExportFormatError(f"{source}: the header line is unreadable ({why}); "
                                    f"is this a CSV export?") from None
        if not header:
            raise ExportFormatError(f"{source}: the first line, the header, is empty; is this a CSV export?")
        if required_fields:
            _check_header(source, header, required_fields)
        width = len(header)
        while True:
            lines.size = 0
            try:
                for row in reader:
                    lines.size = 0
                    if lines.eof:  # csv.reader only reads past a record's end when a quoted field is open
                        raise DamagedExportError(
                            f"{source} line {lines.line_no}: the file ends inside a quoted field (a field's "
                            f"opening quote is never closed): the CSV is truncated or damaged, so "
                            f"rows may be missing; {_AGAIN}")
                    if len(row) == width:
                        yield source, lines.line_no, dict(zip(header, row, strict=False))  # width checked
                    elif row:
                        yield source, lines.line_no, ",".join(row)
                break
            except _LongRecord as long:
                yield source, long.line_no, long.record
            except csv.Error as exc:
                yield source, lines.line_no, lines.skipped(f"unreadable CSV row: {exc}")


def _check_header(source: str, header: list[str], required: list[str]) -> None:
    """Every required field must be a column of this CSV's header, spelled exactly."""
    present = set(header)
    missing = [f for f in required if f not in present]
    if not missing:
        return
    folded: dict[str, str] = {}
    for h in header:
        folded.setdefault(h.casefold(), h)
    hints = []
    for field in missing:
        close = difflib.get_close_matches(field.casefold(), list(folded), n=3)
        if close:
            hints.append(f"{field!r}: found {' or '.join(repr(folded[c]) for c in close)}")
    shown = ", ".join(repr(h[:60]) for h in header[:30]) + (", …" if len(header) > 30 else "")
    raise ExportFormatError(
        f"{source}: the CSV header has no column {', '.join(map(repr, missing))}"
        f"{' (close matches: ' + '; '.join(hints) + ')' if hints else ''}; header found: [{shown[:300]}]. "
        f"Fix the segment's `columns` mapping to the header's exact spelling, or re-export the CSV "
        f"with those columns"
    )
