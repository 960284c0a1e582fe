"""Shape Braze export records into the CSV a Lytics "Import CSV" job expects.

Lytics' conventions (docs/vendor-contracts.md#lytics-sftp-csv-import): a header that matches the job's
sample file, in the same order, on every delivery; a timestamp on every record; UTF-8.
Quoting follows RFC 4180 (CRLF line ends, fields with commas, quotes or newlines quoted,
quotes doubled), so embedded commas, quotes and newlines survive.

Rows without the id go to a quarantine CSV with the reason. Duplicate ids are resolved
deterministically: the first occurrence in export order (members in name order, lines in
order) is kept; later ones are quarantined as duplicates. Memory stays bounded: records
stream through one at a time and duplicates are found from 8 bytes per row (a hash), with
exact comparison only for the few rows whose hashes collide.
"""

from __future__ import annotations

import csv
import os
import re
import shutil
from array import array
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from zlib import adler32, crc32

import orjson

from include.common.errors import ConfigError
from include.segments_to_lytics.export_files import detect_kind, iter_records, member_groups

QUARANTINE_HEADER = ["source", "line", "reason", "record"]
_BATCH = 2000


@dataclass
class ShapeStats:
    rows_read: int = 0
    rows_written: int = 0
    rows_rejected: int = 0  # missing id, malformed: counted against max_rejected_share
    rows_duplicate: int = 0  # later occurrences of an id already written
    reasons: Counter = field(default_factory=Counter)

    @property
    def rows_quarantined(self) -> int:
        return self.rows_rejected + self.rows_duplicate

    @property
    def rejected_share(self) -> float:
        return self.rows_rejected / self.rows_read if self.rows_read else 0.0


def format_value(value) -> str:
    """One CSV cell: '' for missing, true/false for booleans, compact JSON for objects/lists."""
    if value is None:
        return ""
    kind = type(value)
    if kind is str:
        return value
    if kind is bool:
        return "true" if value else "false"
    if kind is int or kind is float:
        return str(value)
    return orjson.dumps(value).decode()


def _compile_row(paths: list[tuple[str, ...]], timestamp_value: str, id_index: int):
    """Build `record -> (CSV line, id cell)` for this header as one flat function.

    Shaping is the hot loop (millions of records); a generated function with each lookup and
    each cell's RFC 4180 quoting spelled out inline runs several times faster than walking the
    paths and calling a formatter per cell. Field names only ever appear as string literals
    (repr), never as code.
    """
    lines = ["def row(r):"]
    cells = []
    parents: dict[tuple[str, ...], str] = {(): "r"}
    for path in paths:
        for depth in range(1, len(path)):
            parent = path[:depth]
            if parent not in parents:
                name = f"p{len(parents)}"
                lines.append(f"    {name} = {parents[parent[:-1]]}.get({parent[-1]!r})")
                lines.append(f"    {name} = {name} if type({name}) is dict else EMPTY")
                parents[parent] = name
        v = f"v{len(cells)}"
        lines.append(f"    {v} = {parents[path[:-1]]}.get({path[-1]!r})")
        # A plain string without , " CR or LF is written as is; anything else goes through Q.
        lines.append(f"    {v} = {v} if type({v}) is str and not NEEDS({v}) else Q({v})")
        cells.append(v)
    lines.append(f"    return ','.join([{', '.join(cells)}, TS]), v{id_index}")
    namespace = {"EMPTY": {}, "Q": _quoted_cell, "NEEDS": _NEEDS_QUOTES, "TS": _quote(timestamp_value)}
    exec("\n".join(lines), namespace)  # noqa: S102 - code built above from literals only
    return namespace["row"]


def _quoted_cell(value) -> str:
    return _quote(format_value(value))


def _lookup(record: dict, path: tuple[str, ...]):
    value = record
    for key in path:
        if type(value) is not dict:
            return None
        value = value.get(key)
    return value


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
        self._row = _compile_row(self._paths, timestamp_value, self.id_index)

    # --- record -> row ------------------------------------------------------------------------

    def _id_problem(self, value) -> str | None:
        if value is None:
            return f"missing {self.id_field}"
        if type(value) is str:
            return None if value.strip() else f"empty {self.id_field}"
        if type(value) is int:
            return None
        return f"{self.id_field} is not a string ({type(value).__name__})"

    def _rows(self, records: Iterable[tuple], quarantine: _QuarantineRows,
              stats: ShapeStats) -> Iterator[tuple[str, str]]:
        """(CSV line, id cell) of each valid record; everything else goes to quarantine with its reason.

        `records` are `(source, line_no, payload)`: payload is an NDJSON line (bytes), a CSV
        row (dict), or, for a CSV row with the wrong field count, its raw text (str).
        This is the hot loop, so it is written flat, with locals instead of attributes.
        """
        loads, decode_error, make_row = orjson.loads, orjson.JSONDecodeError, self._row
        id_path = self._id_path
        id_key = id_path[0] if len(id_path) == 1 else None
        read = 0
        try:
            for source, line_no, payload in records:
                read += 1
                if type(payload) is bytes:
                    try:
                        obj = loads(payload)
                    except decode_error as exc:
                        quarantine.add(source, line_no, f"invalid JSON: {exc}", _text(payload), stats)
                        continue
                    if type(obj) is not dict:
                        quarantine.add(source, line_no, "not a JSON object", _text(payload), stats)
                        continue
                elif type(payload) is dict:
                    obj = payload
                else:
                    quarantine.add(source, line_no, "wrong number of fields for the header", payload, stats)
                    continue
                value = obj.get(id_key) if id_key is not None else _lookup(obj, id_path)
                if type(value) is not str or not value or value.isspace():
                    problem = self._id_problem(value)
                    if problem:
                        raw = _text(payload) if type(payload) is bytes else orjson.dumps(obj).decode()
                        quarantine.add(source, line_no, problem, raw, stats)
                        continue
                yield make_row(obj)
        finally:
            stats.rows_read += read

    # --- one run of records -----------------------------------------------------------------

    def __reduce__(self):
        # Worker processes rebuild the shaper: its generated row function does not pickle.
        return (_rebuild_shaper, (self._init_args,))

    def write_part(self, records: Iterable[tuple], rows_path: Path, rejects_path: Path,
                   *, header: bool = False) -> tuple[ShapeStats, bytes]:
        """Write rows (after the header if asked) and rejected rows; return counts and id hashes."""
        stats = ShapeStats()
        ids = array("Q")  # digest of each written row's id, in row order: 8 bytes a row
        digest = id_digest
        with _QuarantineRows(rejects_path) as quarantine, open(rows_path, "w", encoding="utf-8", newline="") as fh:
            if header:
                fh.write(",".join([_quote(h) for h in self.header]) + "\r\n")
            batch: list[str] = []
            for line, key in self._rows(records, quarantine, stats):
                ids.append(digest(key))
                batch.append(line)
                if len(batch) >= _BATCH:
                    batch.append("")
                    fh.write("\r\n".join(batch))
                    batch.clear()
            if batch:
                batch.append("")
                fh.write("\r\n".join(batch))
        stats.rows_written = len(ids)
        return stats, ids.tobytes()

    def drop_duplicates(self, out_csv: Path, ids: array, duplicate_hashes: set[int], rejects, stats: ShapeStats) -> None:
        """Second pass, only when some id hashes repeat: keep each id's first row."""
        tmp = out_csv.with_name(out_csv.name + ".dedup")
        seen: dict[str, int] = {}
        kept = 0
        with open(out_csv, encoding="utf-8", newline="") as src, open(tmp, "w", encoding="utf-8", newline="") as dst:
            reader = csv.reader(src)
            writer = csv.writer(dst, lineterminator="\r\n")
            writer.writerow(next(reader))
            for n, row in enumerate(reader):
                if ids[n] in duplicate_hashes:
                    key = row[self.id_index]
                    first = seen.setdefault(key, n)
                    if first != n:  # equal hashes of different ids (a collision) are both kept
                        stats.rows_duplicate += 1
                        stats.reasons["duplicate id"] += 1
                        record = orjson.dumps(dict(zip(self.header, row, strict=True))).decode()
                        rejects.writerow([out_csv.name, n + 2, f"duplicate {self.id_field} {key!r}: first "
                                          f"occurrence (output row {first + 1}) kept", record])
                        continue
                writer.writerow(row)
                kept += 1
        os.replace(tmp, out_csv)
        stats.rows_written = kept


def _rebuild_shaper(args: dict) -> CsvShaper:
    return CsvShaper(**args)


def _shape_part(shaper: CsvShaper, export: Path, kind: str, members: list[str] | None,
                rows_path: Path, rejects_path: Path, header: bool) -> tuple[ShapeStats, bytes]:
    return shaper.write_part(iter_records(export, kind, members), rows_path, rejects_path, header=header)


def shape_export(export: Path, shaper: CsvShaper, out_csv: Path, quarantine_path: Path, *,
                 kind: str | None = None, workers: int = 1) -> ShapeStats:
    """Shape a whole export file into `out_csv` (plain RFC 4180 CSV with header).

    With `workers` > 1 and a zip of several files, contiguous runs of files are shaped in
    parallel processes and joined in export order, so the output is byte-identical to a
    single-process run. The quarantine file is replaced on every run (same logical date,
    same result) and removed when nothing was quarantined.
    """
    kind = kind or detect_kind(export)
    groups = member_groups(export, workers)
    # The first part is written straight into out_csv (after the header); the others are appended.
    parts = [(out_csv if i == 0 else out_csv.with_name(f"{out_csv.name}.{i}.rows"),
              out_csv.with_name(f"{out_csv.name}.{i}.rejects"), i == 0) for i in range(len(groups))]
    q_tmp = quarantine_path.with_name(quarantine_path.name + ".part")
    try:
        if len(groups) == 1:
            results = [_shape_part(shaper, export, kind, groups[0], *parts[0])]
        else:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            # fork: workers start in milliseconds and inherit the imported modules.
            with ProcessPoolExecutor(len(groups), mp_context=multiprocessing.get_context("fork")) as pool:
                futures = [pool.submit(_shape_part, shaper, export, kind, g, *p)
                           for g, p in zip(groups, parts, strict=True)]
                _import_numpy_meanwhile()  # needed for the duplicate check; the parent is idle now
                results = [f.result() for f in futures]
        stats = ShapeStats()
        ids = array("Q")
        for part_stats, part_ids in results:
            stats.rows_read += part_stats.rows_read
            stats.rows_written += part_stats.rows_written
            stats.rows_rejected += part_stats.rows_rejected
            stats.reasons.update(part_stats.reasons)
            ids.frombytes(part_ids)
        _append(out_csv, [p[0] for p in parts[1:]])
        quarantine_path.parent.mkdir(parents=True, exist_ok=True)
        _join(q_tmp, QUARANTINE_HEADER, [p[1] for p in parts])
        duplicate_hashes = _repeated(ids)
        if duplicate_hashes:
            with open(q_tmp, "a", encoding="utf-8", newline="") as qfh:
                shaper.drop_duplicates(out_csv, ids, duplicate_hashes, csv.writer(qfh, lineterminator="\r\n"), stats)
        if stats.rows_quarantined:
            os.replace(q_tmp, quarantine_path)
        else:
            quarantine_path.unlink(missing_ok=True)  # a re-run that rejects nothing leaves no stale file
        return stats
    finally:
        for rows_path, _rejects, _header in parts[1:]:
            rows_path.unlink(missing_ok=True)
        for _rows, rejects_path, _header in parts:
            rejects_path.unlink(missing_ok=True)
        q_tmp.unlink(missing_ok=True)


def _join(dest: Path, header: list[str], part_paths: list[Path]) -> None:
    """The header row, then each part's bytes in order."""
    with open(dest, "wb") as out:
        out.write(",".join(_quote(h) for h in header).encode() + b"\r\n")
    _append(dest, part_paths)


def _append(dest: Path, part_paths: list[Path]) -> None:
    with open(dest, "ab") as out:
        for part in part_paths:
            with open(part, "rb") as src:
                shutil.copyfileobj(src, out, 1 << 20)


def _import_numpy_meanwhile() -> None:
    import threading

    threading.Thread(target=__import__, args=("numpy",), daemon=True).start()


_NEEDS_QUOTES = re.compile(r'[",\r\n]').search


def _quote(cell: str) -> str:
    """RFC 4180 quoting of one cell: exactly csv.writer's QUOTE_MINIMAL, ~30% faster per row.

    (csv.writer re-checks its dialect per field; a compiled search per cell is cheaper, and
    shaping is the hot loop. tests/unit/test_csv_shape.py compares the two byte for byte.)
    """
    return '"' + cell.replace('"', '""') + '"' if _NEEDS_QUOTES(cell) else cell


def _text(line: bytes) -> str:
    return line.decode("utf-8", "replace").rstrip("\r\n")


def id_digest(key: str) -> int:
    """A 64-bit digest of an id, the same in every process and every run (Python's `hash()` of a str
    is salted per process, so worker processes could disagree). CRC-32 and Adler-32 side by side:
    both C-speed; a rare equal digest of two different ids only costs an exact comparison."""
    data = key.encode()
    return (crc32(data) << 32) | adler32(data)


def _repeated(hashes: array) -> set[int]:
    """The hash values that occur more than once (numpy sort: fast, 8 bytes per row)."""
    if len(hashes) < 2:
        return set()
    import numpy as np

    arr = np.sort(np.frombuffer(hashes, dtype=np.uint64))
    return set(np.unique(arr[1:][arr[1:] == arr[:-1]]).tolist())


class _QuarantineRows:
    """Rejected rows of one part with their reasons, written beside, never into, the output."""

    def __init__(self, path: Path):
        self._fh = open(path, "w", encoding="utf-8", newline="")
        self._writer = csv.writer(self._fh, lineterminator="\r\n")

    def __enter__(self) -> _QuarantineRows:
        return self

    def add(self, source: str, line: int, reason: str, record: str, stats: ShapeStats) -> None:
        self._writer.writerow([source, line, reason, record])
        # Count by kind of reason, not by the varying detail after ':' (JSON error positions).
        stats.reasons[reason.split(":", 1)[0]] += 1
        stats.rows_rejected += 1

    def __exit__(self, *exc) -> None:
        self._fh.close()
