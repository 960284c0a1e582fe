"""Duplicate ids: keep the first occurrence in export order, without a second pass over the CSV.

Shaping writes each part (a contiguous run of export files, one per worker process) to its own
file and returns, per written row, three small numbers: a 64-bit digest of the row's id, the
row's length in bytes and its line number in its source file (16 bytes a row; 80 MB for 5M
users). Here, after the workers are done:

1. `find_duplicates` sorts the digests of all parts, in export order, with numpy. A row whose
   digest already occurred earlier is a *candidate*; only candidates and the rows they collide
   with are read back (by byte offset) and compared exactly, so two different ids that happen to
   share a digest are both kept. Among equal ids the first in export order is kept.
2. `join_parts` concatenates the parts behind the header, leaving out the dropped rows' byte
   ranges (`os.copy_file_range`: the kernel copies, Python never sees the bytes), and the dropped
   rows go to the quarantine with the place of the occurrence that was kept.

Export order is the order of the parts, then of the rows within a part; the output is
byte-identical whatever the number of worker processes.
"""

from __future__ import annotations

import csv
import io
import os
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from zlib import adler32, crc32

from include.common.scratch import open_private


def id_digest(key: str) -> int:
    """A 64-bit digest of an id, the same in every process and every run (Python's `hash()` of a str
    is salted per process, so worker processes could disagree). CRC-32 and Adler-32 side by side:
    both C-speed; a rare equal digest of two different ids only costs an exact comparison."""
    data = key.encode()
    return (crc32(data) << 32) | adler32(data)


@dataclass
class PartRows:
    """Where each written row of one part is, for finding duplicates after all parts are written."""

    path: Path
    digests: array = field(default_factory=lambda: array("Q"))  # id digest per row
    lengths: array = field(default_factory=lambda: array("I"))  # bytes per row, CRLF included
    lines: array = field(default_factory=lambda: array("I"))  # line number in its source file
    sources: list[tuple[int, str]] = field(default_factory=list)  # (first row index, source name)

    def source_of(self, row: int) -> str:
        """The source file of row `row` (sources are few, in row order)."""
        name = self.sources[0][1]
        for start, source in self.sources:
            if start > row:
                break
            name = source
        return name


@dataclass(frozen=True)
class Duplicate:
    part: int
    row: int  # index within its part
    key: str  # the id cell as written
    record: list[str]  # the row's cells
    first_source: str
    first_line: int
    first_output_row: int  # 1-based row number of the kept occurrence in the delivered CSV


def _row_offsets(part: PartRows, rows: list[int]) -> dict[int, tuple[int, int]]:
    """Byte offset and length of the given rows of a part."""
    import numpy as np

    lengths = np.frombuffer(part.lengths, dtype=np.uint32)
    starts = np.concatenate(([0], np.cumsum(lengths, dtype=np.int64)[:-1]))
    return {r: (int(starts[r]), int(lengths[r])) for r in rows}


def _read_rows(part: PartRows, rows: list[int]) -> dict[int, list[str]]:
    """The cells of a few rows of a part, read by offset (rows may hold quoted newlines)."""
    cells = {}
    with open(part.path, "rb") as fh:
        for row, (offset, length) in sorted(_row_offsets(part, rows).items(), key=lambda kv: kv[1][0]):
            fh.seek(offset)
            text = fh.read(length).decode("utf-8")
            cells[row] = next(csv.reader(io.StringIO(text, newline="")))
    return cells


def find_duplicates(parts: list[PartRows], id_index: int) -> list[Duplicate]:
    """Every row whose id occurred earlier in export order (across all parts), in export order."""
    import numpy as np

    counts = [len(p.digests) for p in parts]
    if sum(counts) < 2:
        return []
    digests = np.concatenate([np.frombuffer(p.digests, dtype=np.uint64) for p in parts])
    order = np.argsort(digests, kind="stable")  # stable: equal digests stay in export order
    ordered = digests[order]
    repeated = np.flatnonzero(ordered[1:] == ordered[:-1]) + 1  # positions (in `order`) of later rows
    if not len(repeated):
        return []
    # Every row of a digest group that has a repeat: the group's first row is a candidate too.
    starts = repeated[np.concatenate(([True], repeated[1:] != repeated[:-1] + 1))] - 1
    involved = np.unique(np.concatenate([order[repeated], order[starts]]))
    bounds = np.cumsum([0, *counts])
    wanted: dict[int, list[int]] = {}
    for g in involved.tolist():
        p = int(np.searchsorted(bounds, g, side="right")) - 1
        wanted.setdefault(p, []).append(g - int(bounds[p]))
    cells = {(p, r): row for p, rows in wanted.items() for r, row in _read_rows(parts[p], rows).items()}

    dropped: list[tuple[int, int, int]] = []  # (global index, part, row)
    first_of: dict[int, tuple[int, int, str]] = {}
    seen: dict[tuple[int, str], tuple[int, int]] = {}  # (digest, id) -> (part, row) of the first occurrence
    for g in involved.tolist():  # ascending global index = export order
        p = int(np.searchsorted(bounds, g, side="right")) - 1
        r = g - int(bounds[p])
        key = cells[(p, r)][id_index]
        first = seen.setdefault((int(digests[g]), key), (p, r))
        if first != (p, r):
            dropped.append((g, p, r))
            first_of[g] = (*first, key)
    drop_globals = np.array([d[0] for d in dropped], dtype=np.int64)
    result = []
    for g, p, r in dropped:
        fp, fr, key = first_of[g]
        first_global = int(bounds[fp]) + fr
        kept_before = first_global - int(np.searchsorted(drop_globals, first_global))
        result.append(Duplicate(part=p, row=r, key=key, record=cells[(p, r)],
                                first_source=parts[fp].source_of(fr), first_line=parts[fp].lines[fr],
                                first_output_row=kept_before + 1))
    return result


def join_parts(dest: Path, header_line: bytes, parts: list[PartRows], drops: list[Duplicate]) -> None:
    """`header_line`, then every part's bytes in order, without the dropped rows."""
    by_part: dict[int, list[int]] = {}
    for d in drops:
        by_part.setdefault(d.part, []).append(d.row)
    with open_private(dest, "wb") as out:
        out.write(header_line)
        out.flush()
        position = out.tell()
        for i, part in enumerate(parts):
            size = os.path.getsize(part.path)
            ranges = _kept_ranges(part, sorted(by_part.get(i, [])), size)
            with open(part.path, "rb") as src:
                for start, end in ranges:
                    position += _copy_range(src.fileno(), out.fileno(), start, end - start, position)


def _kept_ranges(part: PartRows, dropped_rows: list[int], size: int) -> list[tuple[int, int]]:
    if not dropped_rows:
        return [(0, size)]
    spans = _row_offsets(part, dropped_rows)
    ranges, cursor = [], 0
    for row in dropped_rows:
        offset, length = spans[row]
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
