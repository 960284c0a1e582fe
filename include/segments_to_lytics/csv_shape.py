"""Shape Braze export records into the CSV a Lytics "Import CSV" job expects.

Lytics' conventions (docs/vendor-contracts.md#lytics-sftp-csv-import): a header that matches the job's
sample file, in the same order, on every delivery; a timestamp on every record; UTF-8.
Quoting follows RFC 4180 (CRLF line ends, fields with commas, quotes or newlines quoted,
quotes doubled), so embedded commas, quotes and newlines survive.

Rows without the id go to a quarantine CSV with the reason. Duplicate ids are resolved
deterministically: the first occurrence in export order (files `-0 … -N` in numeric order,
lines in order) is kept; later ones are quarantined as duplicates. Memory stays bounded: records
stream through one at a time and duplicates are found from a 64-bit hash per row, spilled to
disk and sorted a partition at a time (`duplicate_ids`), with exact comparison only for the few
rows whose hashes collide.

Cells and the per-record row function are in `csv_cells` (and the native `fast_rows.c`), the
quarantine file in `quarantine_file`, the worker processes in `shape_workers`.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from include.common import settings
from include.common.errors import ConfigError
from include.common.progress import Progress
from include.common.scratch import open_private, private_dirs
from include.segments_to_lytics.csv_cells import compile_row, lookup, quote
from include.segments_to_lytics.duplicate_ids import (
    PartRows,
    RowSpill,
    find_duplicates,
    id_digest,
    iter_duplicates,
    join_parts,
    spill_files,
)
from include.segments_to_lytics.export_files import (
    Block,
    detect_kind,
    is_blank_line,
)
from include.segments_to_lytics.quarantine_file import (
    QuarantineRows,
    join_quarantine,
    quarantine_errors,
    quarantine_line,
    rejected_text,
)
from include.segments_to_lytics.shape_workers import shape_in_workers, shape_part, work_groups

try:  # built by `pip install .` (setup.py, optional: without a compiler shaping stays in Python)
    from include.segments_to_lytics._fast_rows import RowWriter as _RowWriter
except ImportError:
    _RowWriter = None

log = logging.getLogger(__name__)



@dataclass
class ShapeStats:
    rows_read: int = 0
    rows_written: int = 0
    rows_rejected: int = 0  # missing id, malformed: counted against max_rejected_share
    rows_duplicate: int = 0  # later occurrences of an id already written
    rows_native: int = 0  # rows written by the native row writer (fast_rows.c), not the Python path
    reasons: Counter = field(default_factory=Counter)

    @property
    def rows_quarantined(self) -> int:
        return self.rows_rejected + self.rows_duplicate

    @property
    def rejected_share(self) -> float:
        return self.rows_rejected / self.rows_read if self.rows_read else 0.0


class CsvShaper:
    """Turns records into rows of a fixed header: mapped columns, then the timestamp column.

    `columns` maps CSV column -> source field ("email", "custom_attributes.tier"); for
    dashboard CSV input (`nested=False`) the source field is a header name taken literally.
    """

    def __init__(self, columns: dict[str, str], *, id_field: str, timestamp_column: str,
                 timestamp_value: str, nested: bool = True):
        if id_field not in columns.values():
            raise ConfigError(
                f"the id field {id_field!r} is not mapped to any CSV column; Lytics needs it in the file: "
                f"add e.g. `user_id: {id_field}` under columns"
            )
        self._init_args = dict(columns=columns, id_field=id_field, timestamp_column=timestamp_column,
                               timestamp_value=timestamp_value, nested=nested)
        self.header = [*columns, timestamp_column]
        self.id_field = id_field
        self.id_index = list(columns.values()).index(id_field)
        self.timestamp_value = timestamp_value
        self.nested = nested
        self._paths = [tuple(src.split(".")) if nested else (src,) for src in columns.values()]
        self._id_path = tuple(id_field.split(".")) if nested else (id_field,)
        self._row = compile_row(self._paths, timestamp_value, self.id_index)

    # --- record -> row ------------------------------------------------------------------------

    def _id_problem(self, value) -> str | None:
        if value is None:
            return f"missing {self.id_field}"
        if type(value) is str:
            return None if value.strip() else f"empty {self.id_field}"
        if type(value) is int:
            return None
        return f"{self.id_field} is not a string ({type(value).__name__})"

    # --- one run of records -----------------------------------------------------------------

    def __reduce__(self):
        # Worker processes rebuild the shaper: its generated row function does not pickle.
        return (_rebuild_shaper, (self._init_args,))

    def write_part(self, blocks: Iterable[Block], rows_path: Path, rejects_path: Path,
                   progress: Progress | None = None) -> tuple[ShapeStats, PartRows]:
        """Write the rows of valid records (no header) and the rejected ones; return counts and,
        per row, what `duplicate_ids` needs (id digest, byte length, source line: in the part's
        spill files, written in blocks, so memory does not grow with the export).

        `blocks` are `(source, line_numbers, payloads)` (`export_files.iter_record_blocks`): a
        payload is an NDJSON line (bytes; blank ones are skipped), a CSV row (dict), for a CSV row
        with the wrong field count its raw text (str), or a record the reader refused (too long,
        ...) with its reason and a short excerpt. Everything that is not a valid record goes to
        quarantine with its reason. This is the hot loop (millions of records): NDJSON lines go
        to the native row writer (`fast_rows.c`, when built) up to the first line it leaves to the
        Python path (`_python_rows`: invalid, no id, or a value it does not write byte for byte as
        Python does), that line to Python, and on; one write per block.
        """
        stats = ShapeStats()
        part = PartRows(rows_path)
        native = self._native_rows()
        last_source = None
        n = read = 0
        with (QuarantineRows(rejects_path) as quarantine, open_private(rows_path, "wb") as fh,
              RowSpill(rows_path) as spill):
            python_rows = self._python_rows(quarantine, spill, stats)
            digests, lengths, lines = spill.digests.frombytes, spill.lengths.frombytes, spill.lines.extend
            out: list[bytes] = []
            add_out = out.append
            for source, numbers, payloads in blocks:
                if source != last_source:
                    part.sources.append((n, source))
                    last_source = source
                read += len(payloads)
                if native is None:
                    blank, written = python_rows(source, numbers, payloads, out)
                    read -= blank
                    n += written
                else:  # native rows up to the first line it leaves to Python, that line, and on
                    i, count = 0, len(payloads)
                    while i < count:
                        stop, rows, row_digests, row_lengths = native(payloads, i)
                        if stop > i:
                            add_out(rows)
                            digests(row_digests)
                            lengths(row_lengths)
                            lines(numbers[i:stop])
                            n += stop - i
                            stats.rows_native += stop - i
                            i = stop
                        if i < count:
                            blank, written = python_rows(source, numbers[i:i + 1], payloads[i:i + 1], out)
                            read -= blank
                            n += written
                            i += 1
                if out:
                    fh.write(b"".join(out))
                    out.clear()
                    if spill.due():
                        spill.flush()
                if progress is not None:
                    progress.set(read)
        stats.rows_read = read
        stats.rows_written = part.rows = n
        return stats, part

    def _python_rows(self, quarantine: QuarantineRows, spill: RowSpill, stats: ShapeStats):
        """`rows(source, numbers, payloads, out) -> (blank lines, rows written)`: records shaped
        in Python, rows (with CR LF) appended to `out`, rejects to `quarantine`. Every record the
        native writer leaves (and all of them without it) comes here."""
        loads, decode_error, make_row, digest = orjson.loads, orjson.JSONDecodeError, self._row, id_digest
        id_path = self._id_path
        id_key = id_path[0] if len(id_path) == 1 else None
        add_digest, add_length, add_line = spill.digests.append, spill.lengths.append, spill.lines.append
        add = quarantine.add

        def rows(source: str, numbers, payloads: list, out: list[bytes]) -> tuple[int, int]:
            blank = written = 0
            add_out = out.append
            for line_no, payload in zip(numbers, payloads):  # noqa: B905 - same length by construction
                if type(payload) is bytes:
                    try:
                        obj = loads(payload)
                    except decode_error as exc:
                        if is_blank_line(payload):
                            blank += 1
                        else:
                            add(source, line_no, f"invalid JSON: {exc}", rejected_text(payload), stats)
                        continue
                    if type(obj) is not dict:
                        add(source, line_no, "not a JSON object", rejected_text(payload), stats)
                        continue
                elif type(payload) is dict:
                    obj = payload
                elif type(payload) is str:
                    add(source, line_no, "wrong number of fields for the header", payload, stats)
                    continue
                else:  # the reader's RejectedRecord: refused before parsing (e.g. longer than the limit)
                    add(source, line_no, payload.reason, payload.excerpt, stats)
                    continue
                value = obj.get(id_key) if id_key is not None else lookup(obj, id_path)
                if type(value) is not str or not value or value.isspace():
                    problem = self._id_problem(value)
                    if problem:
                        raw = rejected_text(payload) if type(payload) is bytes else orjson.dumps(obj).decode()
                        add(source, line_no, problem, raw, stats)
                        continue
                line, key = make_row(obj)
                data = line.encode()
                add_digest(digest(key))
                add_length(len(data))
                add_line(line_no)
                add_out(data)
                written += 1
            return blank, written

        return rows

    def _native_rows(self):
        """The native writer's `rows(payloads, start)` for NDJSON records (fast_rows.c), or None:
        not built (a deployment that mounts include/ without installing), turned off
        (BRAZE_LYTICS_NATIVE_SHAPING=0), or dashboard CSV input."""
        if not self.nested or _RowWriter is None or not settings.native_shaping():
            return None
        try:
            return _RowWriter(self._paths, quote(self.timestamp_value).encode(), self.id_index).rows
        except ValueError:  # e.g. two columns read the same field: the Python path handles it
            return None


def _log_row_writer(shaper: CsvShaper, kind: str, stats: ShapeStats) -> None:
    """Say which row writer shaped the export: a slow run should not leave anyone guessing."""
    if kind == "csv":
        return
    if stats.rows_native:
        log.info("Rows: %d by the native row writer, %d by the Python path (lines it leaves: invalid, "
                 "no id, floats inside a mapped list or object, ...)", stats.rows_native,
                 stats.rows_written + stats.rows_duplicate - stats.rows_native)
    elif _RowWriter is None:
        log.info("Shaped in Python: the native row writer (fast_rows.c) is not built here - install the "
                 "project (pip install .) with gcc and zlib headers to shape ~3x faster; the output is the same")
    elif not settings.native_shaping():
        log.info("Shaped in Python: the native row writer is turned off (%s=0)", settings.NATIVE_SHAPING)


def _rebuild_shaper(args: dict) -> CsvShaper:
    return CsvShaper(**args)


def shape_export(export: Path | list[Path], shaper: CsvShaper, out_csv: Path, quarantine_path: Path, *,
                 kind: str | None = None, workers: int = 1, read_options: dict | None = None) -> ShapeStats:
    """Shape a whole export (one file, or the files of a bucket export in export order) into
    `out_csv` (plain RFC 4180 CSV with header).

    With `workers` > 1 and several data files (zip members, bucket objects), contiguous runs of
    files in export order are shaped in parallel processes and joined in order, so the output is
    byte-identical to a single-process run. Duplicate ids keep their first occurrence in export
    order, found without a second pass (`duplicate_ids`). `read_options` go to
    `export_files.iter_record_blocks` (record and inflate limits, required CSV fields). The quarantine
    file is replaced on every run (same logical date, same result) and removed when nothing was
    quarantined.
    """
    exports = [export] if isinstance(export, Path) else list(export)
    kind = kind or detect_kind(exports[0])
    read_options = read_options or {}
    groups = work_groups(exports, workers)
    paths = [(out_csv.with_name(f"{out_csv.name}.{i}.rows"), out_csv.with_name(f"{out_csv.name}.{i}.rejects"))
             for i in range(len(groups))]
    q_tmp = quarantine_path.with_name(quarantine_path.name + ".part")
    try:
        if len(groups) == 1:
            results = [shape_part(shaper, kind, groups[0], read_options, *paths[0])]
        else:
            results = shape_in_workers(shaper, kind, groups, read_options, paths)
        stats = ShapeStats()
        for part_stats, _ in results:
            stats.rows_read += part_stats.rows_read
            stats.rows_written += part_stats.rows_written
            stats.rows_rejected += part_stats.rows_rejected
            stats.rows_native += part_stats.rows_native
            stats.reasons.update(part_stats.reasons)
        parts = [part for _, part in results]
        drops = find_duplicates(parts, shaper.id_index, out_csv.with_name(f"{out_csv.name}.ids"))
        join_parts(out_csv, (",".join(quote(h) for h in shaper.header) + "\r\n").encode(), parts, drops)
        stats.rows_written -= len(drops)
        stats.rows_duplicate = len(drops)
        if drops:
            stats.reasons["duplicate id"] += len(drops)
        with quarantine_errors(quarantine_path):  # its own directory: BRAZE_LYTICS_QUARANTINE_DIR
            private_dirs(quarantine_path.parent)  # 0700: rejected rows are customer data
            join_quarantine(q_tmp, [p[1] for p in paths])
            if drops:
                with open(q_tmp, "a", encoding="utf-8", newline="") as qfh:
                    for d in iter_duplicates(parts, drops, shaper.id_index):
                        record = orjson.dumps(dict(zip(shaper.header, d.record, strict=True))).decode()
                        qfh.write(quarantine_line(
                            d.source, d.line, f"duplicate {shaper.id_field} {d.key!r}: the first occurrence "
                            f"({d.first_source} line {d.first_line}, output row {d.first_output_row}) is kept", record))
            if stats.rows_quarantined:
                os.replace(q_tmp, quarantine_path)
            else:
                quarantine_path.unlink(missing_ok=True)  # a re-run that rejects nothing leaves no stale file
        _log_row_writer(shaper, kind, stats)
        return stats
    finally:
        for rows_path, rejects_path in paths:
            for path in (rows_path, rejects_path, *spill_files(rows_path)):
                path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # an unwritable quarantine dir: already reported above
            q_tmp.unlink(missing_ok=True)
