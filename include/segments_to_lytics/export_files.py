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
- **Modules.** NDJSON is read here, dashboard CSVs in `dashboard_csv`, the record types and limits
  both share are in `export_records`, packaging (zip, gzip, inflate caps) in `export_streams`.
- **Errors.** All are `PermanentError`s (a retry reads the same bytes): `DamagedExportError`
  (truncated, corrupt), `InflateRatioError` (decompression bomb), `ExportFormatError` (a zip
  method we cannot read, an encrypted member, a zip without data files, binary data instead of
  NDJSON, a CSV that is not UTF-8 or lacks `required_fields`), all `ExportFileError`s. Messages
  name the file, member and line, say what to do, and quote at most a short excerpt of data.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterator
from pathlib import Path

from include.segments_to_lytics.dashboard_csv import iter_csv_records
from include.segments_to_lytics.export_records import (
    DEFAULT_MAX_RECORD_BYTES,
    EXCERPT_CHARS,
    SKIP_CHUNK,
    Block,
    Record,
    RejectedRecord,
    check_limits,
    excerpt,
    too_long,
)
from include.segments_to_lytics.export_streams import (
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
    "ExportFormatError", "InflateRatioError", "Block", "Record", "RejectedRecord", "detect_kind", "excerpt",
    "export_order", "is_blank_line", "iter_csv_records", "iter_json_blocks", "iter_json_lines",
    "iter_record_blocks", "iter_records", "member_groups",
]

_BLOCK = 128 << 10  # what a block of lines is cut from: small enough that its lines are still in the CPU cache


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
    check_limits(max_record_bytes, max_inflate_ratio)
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
            lines[i] = too_long(limit, size, line)


def _skip_long_line(read, start: bytes, size: int, last: bytes, limit: int) -> tuple[RejectedRecord, bytes]:
    """Read past the rest of an over-long line (`size` bytes so far, beginning with `start`, the last
    of them `last`): its rejection, and the bytes after its line break in the read that ended it."""
    head = start[:EXCERPT_CHARS * 4]
    while chunk := read(SKIP_CHUNK):
        end = chunk.find(b"\n")
        if end < 0:
            size, last = size + len(chunk), chunk[-1:]
            continue
        size += end
        before = chunk[end - 1:end] if end else last
        return too_long(limit, size - (before == b"\r"), head), chunk[end + 1:]
    return too_long(limit, size, head), b""  # the end of the file ends the line


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
