"""Duplicate ids: keep the first occurrence in export order, without a second pass over the CSV,
in memory bounded whatever the size of the export.

Shaping writes each part (a contiguous run of export files, one per worker process) to its own
file and, per written row, three small numbers to the part's *spill files* beside it (`RowSpill`,
written in blocks of `SPILL_ROWS`, so a worker holds at most that many): a 64-bit digest of the
row's id, the row's length in bytes and its line number in its source file (16 bytes a row on
disk, nothing in memory). Here, after the workers are done:

1. `find_duplicates` looks at the digests one *partition* at a time. With more than
   `ROWS_PER_PARTITION` rows in all, one pass over the digest files splits the rows by digest
   (CRC-32 half modulo k) into k partition files of (digest, export index) in export order;
   every occurrence of an id lands in the same partition. Each partition is sorted on its own
   with numpy (stable: equal digests stay in export order); a row whose digest already occurred
   earlier is a *candidate*. Only candidates and the rows they collide with are read back (by
   byte offset, from the lengths spill) and compared exactly, so two different ids that happen
   to share a digest are both kept. Among equal ids the first in export order is kept. Memory:
   ~25 bytes per row of one partition (~1/k of the rows), plus ~100 bytes per candidate (its id)
   and ~32 per dropped row: it grows with the duplicates, not with the export.
2. `join_parts` concatenates the parts behind the header, leaving out the dropped rows' byte
   ranges (`os.copy_file_range`: the kernel copies, Python never sees the bytes), and
   `iter_duplicates` reads the dropped rows back one at a time, for the quarantine, with the
   place of the occurrence that was kept.

Export order is the order of the parts, then of the rows within a part; the output is
byte-identical whatever the number of worker processes or partitions. Spill and partition files
are customer-derived data: created 0600 (`open_private`) beside the part files, removed by
`find_duplicates` (partitions) and by the caller with the part files (`spill_files`).
"""

from __future__ import annotations

import bisect
import contextlib
import csv
import io
import math
import os
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field
from operator import itemgetter
from pathlib import Path
from zlib import adler32, crc32

from include.common.scratch import open_private

SPILL_ROWS = 1 << 16  # rows a worker buffers before appending them to its spill files
ROWS_PER_PARTITION = 1 << 20  # rows the parent sorts at a time (~25 MB); more rows -> more partitions
_CHUNK_ROWS = 1 << 18  # rows read from a spill file at a time (2 MiB of digests)


def id_digest(key: str) -> int:
    """A 64-bit digest of an id, the same in every process and every run (Python's `hash()` of a str
    is salted per process, so worker processes could disagree). CRC-32 and Adler-32 side by side:
    both C-speed; a rare equal digest of two different ids only costs an exact comparison."""
    data = key.encode()
    return (crc32(data) << 32) | adler32(data)


def spill_files(rows_path: Path) -> tuple[Path, Path, Path]:
    """The spill files of the part written to `rows_path`: digests (u64), lengths (u32), lines (u32)."""
    return tuple(rows_path.with_name(f"{rows_path.name}.{kind}") for kind in ("digests", "lengths", "lines"))


class RowSpill:
    """Per-row numbers of one part, appended to its spill files in blocks (used in the worker).

    The hot loop appends to `digests`, `lengths`, `lines` (arrays) and calls `flush()` now and
    then (`due()`); leaving the `with` block writes the rest.
    """

    def __init__(self, rows_path: Path):
        self.digests, self.lengths, self.lines = array("Q"), array("I"), array("I")
        with contextlib.ExitStack() as stack:
            self._files = [stack.enter_context(open_private(p, "wb")) for p in spill_files(rows_path)]
            stack.pop_all()

    def due(self) -> bool:
        return len(self.digests) >= SPILL_ROWS

    def flush(self) -> None:
        for values, fh in zip((self.digests, self.lengths, self.lines), self._files, strict=True):
            values.tofile(fh)
            del values[:]

    def __enter__(self) -> RowSpill:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        try:
            if exc_type is None:
                self.flush()
        finally:
            for fh in self._files:
                fh.close()


@dataclass
class PartRows:
    """One written part: its rows file, row count and sources; the per-row numbers are in its spill files."""

    path: Path
    rows: int = 0
    sources: list[tuple[int, str]] = field(default_factory=list)  # (first row index, source name)

    def source_of(self, row: int) -> str:
        """The source file of row `row`: the last source starting at or before it (sources are in row
        order; one that wrote no row shares its start with the next, which wins)."""
        return self.sources[max(0, bisect.bisect_right(self.sources, row, key=itemgetter(0)) - 1)][1]

    @property
    def digest_file(self) -> Path:
        return spill_files(self.path)[0]

    @property
    def length_file(self) -> Path:
        return spill_files(self.path)[1]

    @property
    def line_file(self) -> Path:
        return spill_files(self.path)[2]


@dataclass
class Duplicates:
    """The dropped rows, in export order: global index (rows of all parts in export order), the
    global index of the occurrence kept for it, and its byte range in its part file."""

    rows: object  # np.ndarray[int64], ascending
    firsts: object  # np.ndarray[int64]
    offsets: object  # np.ndarray[int64]
    lengths: object  # np.ndarray[int64]

    def __len__(self) -> int:
        return len(self.rows)


@dataclass(frozen=True)
class Duplicate:
    part: int
    row: int  # index within its part
    source: str  # where the dropped row came from
    line: int
    key: str  # the id cell as written
    record: list[str]  # the row's cells
    first_source: str
    first_line: int
    first_output_row: int  # 1-based row number of the kept occurrence in the delivered CSV


def _chunks(path: Path, dtype, rows: int = _CHUNK_ROWS) -> Iterator:
    """The numbers of a spill file, `rows` at a time."""
    import numpy as np

    with open(path, "rb") as fh:
        while True:
            chunk = np.fromfile(fh, dtype=dtype, count=rows)
            if not len(chunk):
                return
            yield chunk


def _pick(path: Path, dtype, rows):
    """The values at `rows` (ascending, unique) of a spill file, read a chunk at a time."""
    import numpy as np

    out = np.empty(len(rows), dtype=dtype)
    start = 0
    for chunk in _chunks(path, dtype):
        lo, hi = np.searchsorted(rows, [start, start + len(chunk)])
        out[lo:hi] = chunk[rows[lo:hi] - start]
        start += len(chunk)
        if hi == len(rows):
            break
    return out


def _spans(part: PartRows, rows):
    """Byte offset and length of `rows` (ascending, unique) of a part, from its lengths spill."""
    import numpy as np

    offsets, lengths = np.empty(len(rows), dtype=np.int64), np.empty(len(rows), dtype=np.int64)
    start, base = 0, 0
    for chunk in _chunks(part.length_file, np.uint32):
        lo, hi = np.searchsorted(rows, [start, start + len(chunk)])
        ends = np.cumsum(chunk, dtype=np.int64)
        local = rows[lo:hi] - start
        lengths[lo:hi] = chunk[local]
        offsets[lo:hi] = base + ends[local] - lengths[lo:hi]
        base += int(ends[-1])
        start += len(chunk)
        if hi == len(rows):
            break
    return offsets, lengths


def _read_cells(part: PartRows, offsets, lengths) -> Iterator[list[str]]:
    """The cells of rows of a part read by byte range (ascending offsets; rows may hold quoted newlines)."""
    with open(part.path, "rb") as fh:
        for offset, length in zip(offsets.tolist(), lengths.tolist(), strict=True):
            fh.seek(offset)
            text = fh.read(length).decode("utf-8")
            yield next(csv.reader(io.StringIO(text, newline="")))


def _split(parts: list[PartRows], paths: list[tuple[Path, Path]]) -> None:
    """One pass over the digest spills: each row's digest and global index to the files of its
    partition (the CRC-32 half of its digest modulo the number of partitions), in export order."""
    import numpy as np

    k = len(paths)
    with contextlib.ExitStack() as stack:
        files = [(stack.enter_context(open_private(d, "wb")), stack.enter_context(open_private(g, "wb")))
                 for d, g in paths]
        first = 0
        for part in parts:
            for digests in _chunks(part.digest_file, np.uint64):
                bucket = ((digests >> np.uint64(32)) % np.uint64(k)).astype(np.intp)
                order = np.argsort(bucket, kind="stable")  # export order within each partition
                ends = np.cumsum(np.bincount(bucket, minlength=k)).tolist()
                sorted_digests, indexes = digests[order], order + first
                for (d_file, g_file), lo, hi in zip(files, [0, *ends[:-1]], ends, strict=True):
                    if hi > lo:
                        sorted_digests[lo:hi].tofile(d_file)
                        indexes[lo:hi].tofile(g_file)
                first += len(digests)


def _candidates(digests):
    """Positions (in `digests`) of the rows whose digest occurs more than once, ascending."""
    import numpy as np

    order = np.argsort(digests, kind="stable")  # stable: equal digests stay in export order
    ordered = digests[order]
    repeated = np.flatnonzero(ordered[1:] == ordered[:-1]) + 1  # positions (in `order`) of later rows
    del ordered
    if not len(repeated):
        return np.zeros(0, dtype=np.int64)
    # Every row of a digest group that has a repeat: the group's first row is a candidate too.
    starts = repeated[np.concatenate(([True], repeated[1:] != repeated[:-1] + 1))] - 1
    return np.unique(np.concatenate([order[repeated], order[starts]]))


def _involved(parts: list[PartRows], k: int, prefix: Path):
    """Global indexes (ascending) of every row whose digest occurs more than once, sorting the
    digests one partition at a time; partition files (named after `prefix`) removed on the way out."""
    import numpy as np

    if k == 1:
        digests = np.concatenate([np.fromfile(p.digest_file, dtype=np.uint64) for p in parts])
        return _candidates(digests)
    paths = [(prefix.with_name(f"{prefix.name}.{j}.digests"), prefix.with_name(f"{prefix.name}.{j}.indexes"))
             for j in range(k)]
    try:
        _split(parts, paths)
        found = []
        for d_path, g_path in paths:
            digests = np.fromfile(d_path, dtype=np.uint64)
            d_path.unlink()
            positions = _candidates(digests)
            del digests
            found.append(_pick(g_path, np.int64, positions))
            g_path.unlink()
        return np.unique(np.concatenate(found))
    finally:
        for d_path, g_path in paths:
            d_path.unlink(missing_ok=True)
            g_path.unlink(missing_ok=True)


def find_duplicates(parts: list[PartRows], id_index: int, spill_prefix: Path | None = None,
                    partitions: int | None = None) -> Duplicates:
    """Every row whose id occurred earlier in export order (across all parts), in export order.

    `partitions` (default: one per `ROWS_PER_PARTITION` rows) says in how many pieces the digests
    are sorted; partition files are named after `spill_prefix` (default: beside the first part)
    and removed before returning, also on failure.
    """
    import numpy as np

    counts = [p.rows for p in parts]
    total = sum(counts)
    empty = np.zeros(0, dtype=np.int64)
    if total < 2:
        return Duplicates(empty, empty, empty, empty)
    k = partitions or max(1, math.ceil(total / ROWS_PER_PARTITION))
    involved = _involved(parts, k, spill_prefix or parts[0].path.with_name(parts[0].path.name + ".ids"))
    if not len(involved):
        return Duplicates(empty, empty, empty, empty)

    bounds = np.cumsum([0, *counts])
    owner = np.searchsorted(bounds, involved, side="right") - 1
    keys: list[str] = [""] * len(involved)
    offsets, lengths = np.empty(len(involved), np.int64), np.empty(len(involved), np.int64)
    for p in np.unique(owner).tolist():
        at = np.flatnonzero(owner == p)
        offsets[at], lengths[at] = _spans(parts[p], involved[at] - bounds[p])
        for i, cells in zip(at.tolist(), _read_cells(parts[p], offsets[at], lengths[at]), strict=True):
            keys[i] = cells[id_index]

    dropped, firsts = [], []
    seen: dict[str, int] = {}  # id -> global index of its first occurrence (equal ids have equal digests)
    for i, (g, key) in enumerate(zip(involved.tolist(), keys, strict=True)):
        first = seen.setdefault(key, g)
        if first != g:
            dropped.append(i)
            firsts.append(first)
    at = np.array(dropped, dtype=np.int64)
    return Duplicates(involved[at], np.array(firsts, dtype=np.int64), offsets[at], lengths[at])


def iter_duplicates(parts: list[PartRows], drops: Duplicates, id_index: int) -> Iterator[Duplicate]:
    """Each dropped row, in export order, with its cells (read back from its part) and the place of
    the occurrence that was kept."""
    import numpy as np

    if not len(drops):
        return
    bounds = np.cumsum([0, *(p.rows for p in parts)])
    owner = np.searchsorted(bounds, drops.rows, side="right") - 1
    first_owner = np.searchsorted(bounds, drops.firsts, side="right") - 1
    lines, first_lines = np.empty(len(drops), np.int64), np.empty(len(drops), np.int64)
    for p in np.unique(np.concatenate([owner, first_owner])).tolist():
        at = np.flatnonzero(owner == p)
        lines[at] = _pick(parts[p].line_file, np.uint32, drops.rows[at] - bounds[p])
        at = np.flatnonzero(first_owner == p)
        wanted, where = np.unique(drops.firsts[at] - bounds[p], return_inverse=True)
        first_lines[at] = _pick(parts[p].line_file, np.uint32, wanted)[where]
    # The kept occurrence's row in the output: its global index minus the dropped rows before it.
    first_output_rows = drops.firsts - np.searchsorted(drops.rows, drops.firsts) + 1
    for p in np.unique(owner).tolist():  # drops are in export order: parts ascending, rows ascending
        at = np.flatnonzero(owner == p)
        for i, cells in zip(at.tolist(), _read_cells(parts[p], drops.offsets[at], drops.lengths[at]), strict=True):
            row, fp = int(drops.rows[i] - bounds[p]), int(first_owner[i])
            fr = int(drops.firsts[i] - bounds[fp])
            yield Duplicate(part=p, row=row, source=parts[p].source_of(row), line=int(lines[i]),
                            key=cells[id_index], record=cells, first_source=parts[fp].source_of(fr),
                            first_line=int(first_lines[i]), first_output_row=int(first_output_rows[i]))


def join_parts(dest: Path, header_line: bytes, parts: list[PartRows], drops: Duplicates) -> None:
    """`header_line`, then every part's bytes in order, without the dropped rows."""
    import numpy as np

    bounds = np.cumsum([0, *(p.rows for p in parts)])
    owner = np.searchsorted(bounds, drops.rows, side="right") - 1 if len(drops) else np.zeros(0, np.int64)
    with open_private(dest, "wb") as out:
        out.write(header_line)
        out.flush()
        position = out.tell()
        for i, part in enumerate(parts):
            size = os.path.getsize(part.path)
            at = np.flatnonzero(owner == i)
            ranges = _kept_ranges(drops.offsets[at].tolist(), drops.lengths[at].tolist(), size)
            with open(part.path, "rb") as src:
                for start, end in ranges:
                    position += _copy_range(src.fileno(), out.fileno(), start, end - start, position)


def _kept_ranges(offsets: list[int], lengths: list[int], size: int) -> list[tuple[int, int]]:
    """The byte ranges of a part outside the dropped rows (given by ascending offset)."""
    ranges, cursor = [], 0
    for offset, length in zip(offsets, lengths, strict=True):
        if offset > cursor:
            ranges.append((cursor, offset))
        cursor = offset + length
    if cursor < size:
        ranges.append((cursor, size))
    return ranges


def _copy_range(src_fd: int, dst_fd: int, offset: int, count: int, dst_offset: int) -> int:
    """Copy `count` bytes in the kernel where it can (copy_file_range), else through a buffer."""
    done = 0
    while done < count:
        try:
            n = os.copy_file_range(src_fd, dst_fd, count - done, offset + done, dst_offset + done)
        except OSError:
            n = 0
        if n == 0:  # not supported here (or across filesystems): plain reads and writes
            while done < count:
                chunk = os.pread(src_fd, min(1 << 20, count - done), offset + done)
                if not chunk:
                    raise OSError(f"part file ended {count - done} bytes early")
                os.pwrite(dst_fd, chunk, dst_offset + done)
                done += len(chunk)
            break
        done += n
    return done
