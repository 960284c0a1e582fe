"""Read Braze export files as a stream of records, whatever their packaging.

Braze API exports are newline-delimited JSON, one user per line, usually ~5,000 users per
file, delivered as a zip of files or as gzip (docs/vendor-contracts.md#braze-segment-exports);
dashboard exports are a CSV, often zipped. The reading contract:

- **Records.** `iter_records` yields `(source, line_no, payload)`; `source` names the file (and
  zip member), `line_no` is the line the record ends on. `payload` is `bytes` (an NDJSON line,
  unparsed, so a malformed one can be quarantined as it was; blank lines are skipped), `dict`
  (a CSV row keyed by the header), `str` (the raw text of a CSV row whose field count does not
  match the header) or a `RejectedRecord` (a record the reader refused: quarantine it).
- **Order.** Zip members are read in export order (`export_order`: `x-2.json` before
  `x-10.json`), lines in file order; `member_groups` splits that order into contiguous runs, so
  the same file always yields the same records in the same order.
- **Limits.** Memory stays bounded whatever the input: a record (an NDJSON line, a CSV record)
  longer than `max_record_bytes` (default 16 MiB) is read in bounded chunks up to its end and
  yielded as a `RejectedRecord`, never held whole; decompression is incremental and capped at
  `max_inflate_ratio` times the compressed size (export_streams.py).
- **Errors.** All are `PermanentError`s (a retry reads the same bytes): `DamagedExportError`
  (truncated, corrupt), `InflateRatioError` (decompression bomb), `ExportFormatError` (a zip
  method we cannot read, an encrypted member, a zip without data files, binary data instead of
  NDJSON, a CSV that is not UTF-8 or lacks `required_fields`), all `ExportFileError`s. Messages
  name the file, member and line, say what to do, and quote at most a short excerpt of data.
"""

from __future__ import annotations

import codecs
import csv
import difflib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from include.common.errors import ConfigError
from include.segments_to_lytics.export_streams import (
    _AGAIN,
    DEFAULT_MAX_INFLATE_RATIO,
    ZIP_MAGIC,
    DamagedExportError,
    ExportFileError,
    ExportFormatError,
    InflateRatioError,
    data_members,
    export_order,
    is_junk,
    is_zip,
    member_streams,
    open_zip,
    sniff,
)

__all__ = [
    "DEFAULT_MAX_INFLATE_RATIO", "DEFAULT_MAX_RECORD_BYTES", "DamagedExportError", "ExportFileError",
    "ExportFormatError", "InflateRatioError", "Record", "RejectedRecord", "detect_kind", "excerpt",
    "export_order", "is_blank_line", "iter_csv_records", "iter_json_blocks", "iter_json_lines",
    "iter_record_blocks", "iter_records", "member_groups",
]

DEFAULT_MAX_RECORD_BYTES = 16 << 20
_EXCERPT_CHARS = 200
_CHUNK = 1 << 20  # what an over-long record is skipped by
_BLOCK = 128 << 10  # what a block of lines is cut from: small enough that its lines are still in the CPU cache
_ESCAPES = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0))}


@dataclass(frozen=True, slots=True)
class RejectedRecord:
    """A record the reader refused to hold or could not parse: quarantine it with `reason`."""

    reason: str  # e.g. "record longer than 16 MiB (1,073,741,824 bytes)"
    excerpt: str  # its first <= 200 characters, invalid UTF-8 replaced, control characters escaped


# Records are plain tuples `(source, line_no, payload)`: millions of them pass through, and a
# tuple costs a fraction of a dataclass instance.
Record = tuple[str, int, "bytes | dict[str, str] | str | RejectedRecord"]


def excerpt(raw: bytes) -> str:
    """The first <= 200 characters of `raw`, printable: safe to put in a quarantine file or a log."""
    text = raw[:_EXCERPT_CHARS * 4].rstrip(b"\r\n").decode("utf-8", "replace")
    return text[:_EXCERPT_CHARS].translate(_ESCAPES)[:_EXCERPT_CHARS]


def _too_long(limit: int, size: int, start: bytes) -> RejectedRecord:
    shown = f"{limit >> 20} MiB" if limit % (1 << 20) == 0 else f"{limit:,} bytes"
    return RejectedRecord(f"record longer than {shown} ({size:,} bytes)", excerpt(start))


def _is_csv_name(name: str) -> bool:
    return name.lower().removesuffix(".gz").endswith(".csv")


def member_groups(path: Path, parts: int) -> list[list[str] | None]:
    """Split a zip's data files into up to `parts` contiguous runs (export order kept).

    Anything that is not a zip of several files is one group, `[None]` (= the whole file).
    """
    if parts < 2 or sniff(path) != ZIP_MAGIC:
        return [None]
    with open_zip(path) as zf:
        names = data_members(zf)
    if len(names) < 2:
        return [None]
    return contiguous_runs(names, parts)


def contiguous_runs(items: list, parts: int) -> list[list]:
    """`items` cut into at most `parts` contiguous runs of nearly equal length, order kept."""
    parts = max(1, min(parts, len(items)))
    size, extra = divmod(len(items), parts)
    runs, start = [], 0
    for i in range(parts):
        end = start + size + (1 if i < extra else 0)
        runs.append(items[start:end])
        start = end
    return runs


def detect_kind(path: Path) -> str:
    """'csv' when the file (or the zip's members) is a dashboard CSV, else 'ndjson'."""
    if is_zip(sniff(path)):
        with open_zip(path) as zf:
            names = [n for n in zf.namelist() if not n.endswith("/") and not is_junk(n)]
        return "csv" if names and all(_is_csv_name(n) for n in names) else "ndjson"
    return "csv" if _is_csv_name(path.name.removesuffix(".zip")) else "ndjson"


def iter_records(path: Path, kind: str, members: list[str] | None = None, *,
                 max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
                 max_inflate_ratio: float | None = DEFAULT_MAX_INFLATE_RATIO,
                 required_fields: list[str] | None = None) -> Iterator[Record]:
    """The records of `path` (or of the given zip members, read in export order), NDJSON or CSV per `kind`.

    `max_record_bytes`: a longer record (without its line break) is yielded as a `RejectedRecord`.
    `max_inflate_ratio`: how many times its compressed size a member may inflate to (None: no cap).
    `required_fields` (CSV only; ignored for NDJSON, whose fields vary per record): header names
    every CSV member must have, else `ExportFormatError` before its first row.
    """
    if kind == "csv":
        return iter_csv_records(path, members, max_record_bytes=max_record_bytes,
                                max_inflate_ratio=max_inflate_ratio, required_fields=required_fields)
    return iter_json_lines(path, members, max_record_bytes=max_record_bytes,
                           max_inflate_ratio=max_inflate_ratio)


def iter_record_blocks(path: Path, kind: str, members: list[str] | None = None, *,
                       max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
                       max_inflate_ratio: float | None = DEFAULT_MAX_INFLATE_RATIO,
                       required_fields: list[str] | None = None) -> Iterator[Block]:
    """The records of `iter_records`, a block at a time (`iter_json_blocks`' shape, for hot loops).

    NDJSON blocks include blank lines (`is_blank_line`: skip them); CSV rows come grouped by source.
    """
    if kind == "csv":
        return _grouped(iter_csv_records(path, members, max_record_bytes=max_record_bytes,
                                         max_inflate_ratio=max_inflate_ratio, required_fields=required_fields))
    return iter_json_blocks(path, members, max_record_bytes=max_record_bytes, max_inflate_ratio=max_inflate_ratio)


def _grouped(records: Iterator[Record], size: int = 2000) -> Iterator[Block]:
    """Records as blocks of at most `size`, each from one source."""
    source, numbers, payloads = None, [], []
    for record_source, line_no, payload in records:
        if record_source != source or len(payloads) >= size:
            if payloads:
                yield source, numbers, payloads
            source, numbers, payloads = record_source, [], []
        numbers.append(line_no)
        payloads.append(payload)
    if payloads:
        yield source, numbers, payloads


def is_blank_line(line: bytes) -> bool:
    """A line that is no record: empty, or one whitespace byte (a lone CR of a CR LF, a space).
    Longer whitespace-only lines are kept, and quarantined as invalid JSON."""
    return len(line) <= 1 and not line.strip()


def _check_limits(max_record_bytes: int, max_inflate_ratio: float | None) -> None:
    if type(max_record_bytes) is not int or max_record_bytes < 1:
        raise ConfigError(f"max_record_bytes must be a positive number of bytes, got {max_record_bytes!r}")
    if max_inflate_ratio is not None and not max_inflate_ratio >= 1:
        raise ConfigError(f"max_inflate_ratio must be at least 1 (or None for no limit), "
                          f"got {max_inflate_ratio!r}")


Block = tuple[str, "range | list[int]", list]  # (source, line numbers, payloads), see iter_json_blocks


def iter_json_lines(path: Path, members: list[str] | None = None, *,
                    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
                    max_inflate_ratio: float | None = DEFAULT_MAX_INFLATE_RATIO) -> Iterator[Record]:
    """Every non-blank line of every NDJSON file inside `path` (without its line break); over-long
    lines as `RejectedRecord`s."""
    for source, numbers, payloads in iter_json_blocks(path, members, max_record_bytes=max_record_bytes,
                                                      max_inflate_ratio=max_inflate_ratio):
        for line_no, payload in zip(numbers, payloads, strict=True):
            if type(payload) is not bytes or not is_blank_line(payload):
                yield source, line_no, payload


def iter_json_blocks(path: Path, members: list[str] | None = None, *,
                     max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
                     max_inflate_ratio: float | None = DEFAULT_MAX_INFLATE_RATIO) -> Iterator[Block]:
    """The lines of `iter_json_lines`, a read (`_BLOCK`) at a time: `(source, line_numbers, payloads)`.

    `payloads[i]` is line `line_numbers[i]` (a `range`: consecutive lines) without its `\n` (a CR
    of a CR LF stays, which JSON parsers read as whitespace), or a `RejectedRecord` for a line
    longer than `max_record_bytes`. Blank lines are included, to keep the numbering: the consumer
    skips them (`is_blank_line`). For a hot loop: one generator step per block instead of one per record, and
    `bytes.split` finds the line breaks in C.
    """
    _check_limits(max_record_bytes, max_inflate_ratio)
    limit = max_record_bytes
    for source, stream in member_streams(path, members, max_inflate_ratio):
        if stream.peek(3)[:3] == codecs.BOM_UTF8:  # a UTF-8 BOM (hand-made drops) is not part of the first line
            stream.read(3)
        _check_ndjson_start(source, stream)
        read, line_no = stream.read, 0
        head: list[bytes] = []  # the pieces of a line that goes on past the last read (at most ~limit bytes)
        held = 0  # their length
        rest = b""  # what followed an over-long line in the read that ended it
        while True:
            if held - (head[-1][-1:] == b"\r" if head else 0) > limit:  # skip to its end, never hold it
                line_no += 1
                rejected, rest = _skip_long_line(read, head[0], held, head[-1][-1:], limit)
                head, held = [], 0
                yield source, range(line_no, line_no + 1), [rejected]
            chunk = rest or read(_BLOCK)
            rest = b""
            if not chunk:  # the end of the file ends its last line
                if head:
                    line_no += 1
                    yield source, range(line_no, line_no + 1), [b"".join(head)]
                break
            if head:
                end = chunk.find(b"\n")
                if end < 0:  # the line goes on
                    head.append(chunk)
                    held += len(chunk)
                    continue
                lines = chunk[end + 1:].split(b"\n")
                lines.insert(0, b"".join([*head, chunk[:end]]))
                head, held = [], 0
            else:
                lines = chunk.split(b"\n")
            tail = lines.pop()  # the start of a line that goes on in the next read (or b"")
            if lines:
                if max(map(len, lines)) > limit:
                    _reject_long_lines(lines, limit)
                yield source, range(line_no + 1, line_no + 1 + len(lines)), lines
                line_no += len(lines)
            if tail:
                head, held = [tail], len(tail)


def _reject_long_lines(lines: list, limit: int) -> None:
    for i, line in enumerate(lines):
        size = len(line) - (line[-1:] == b"\r")
        if size > limit:
            lines[i] = _too_long(limit, size, line)


def _skip_long_line(read, start: bytes, size: int, last: bytes, limit: int) -> tuple[RejectedRecord, bytes]:
    """Read past the rest of an over-long line (`size` bytes so far, beginning with `start`, the last
    of them `last`): its rejection, and the bytes after its line break in the read that ended it."""
    head = start[:_EXCERPT_CHARS * 4]
    while chunk := read(_CHUNK):
        end = chunk.find(b"\n")
        if end < 0:
            size, last = size + len(chunk), chunk[-1:]
            continue
        size += end
        before = chunk[end - 1:end] if end else last
        return _too_long(limit, size - (before == b"\r"), head), chunk[end + 1:]
    return _too_long(limit, size, head), b""  # the end of the file ends the line


def _eol(line: bytes) -> int:
    """The length of the line break that ends `line` (CR LF, LF, or none)."""
    return 0 if line[-1:] != b"\n" else 2 if line[-2:] == b"\r\n" else 1


_BINARY_HINTS = {b"PK": "a zip archive", b"\x1f\x8b": "gzip data (compressed twice?)", b"%PDF": "a PDF",
                 b"PAR1": "a Parquet file", b"BZh": "bzip2 data", b"\xfd7zXZ": "xz data"}


def _check_ndjson_start(source: str, stream) -> None:
    """Binary data where NDJSON should be (NUL bytes or invalid UTF-8 at the start) fails the file,
    instead of quarantining garbage line by line. Text that is not JSON is left to the consumer."""
    head = stream.peek(512)[:512]
    body = head.lstrip(b" \t\r\n")
    if not body or body[:1] == b"{" or (b"\x00" not in head and _utf8_prefix(head)):
        return
    hint = next((f": looks like {what}" for magic, what in _BINARY_HINTS.items() if head.startswith(magic)), "")
    raise ExportFormatError(
        f"{source}: not NDJSON text, it starts with binary data ({head[:8].hex(' ')}{hint}); the export "
        f"should be newline-delimited JSON (Braze output_format zip or gzip): check the file, or "
        f"re-export the segment"
    )


def _utf8_prefix(data: bytes) -> bool:
    try:
        data.decode()
    except UnicodeDecodeError as exc:  # a character cut at the end of the sample is fine
        return exc.reason == "unexpected end of data"
    return True


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
            more = self._readline(_CHUNK)
            if not more:  # end of file ends the record
                break
            self.line_no += last[-1] == 10  # a new physical line starts
            size += len(more)
            inside ^= more.count(b'"') & 1
            before, last = last[-1:], more
        self.size = 0
        raise _LongRecord(self.line_no, _too_long(self._limit, size - _eol(before + last[-2:]), start))


def iter_csv_records(path: Path, members: list[str] | None = None, *,
                     max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
                     max_inflate_ratio: float | None = DEFAULT_MAX_INFLATE_RATIO,
                     required_fields: list[str] | None = None) -> Iterator[Record]:
    """Rows of the dashboard CSV(s) inside `path`, as dicts keyed by the header.

    Raises the process-wide `csv.field_size_limit` to `max_record_bytes` if lower: records are
    bounded here, before the csv module sees them.
    """
    _check_limits(max_record_bytes, max_inflate_ratio)
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
