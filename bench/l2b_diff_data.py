"""Streaming generation of the diff benchmark's snapshot files, for audiences too large to build in memory.

`l2b_diff_worker.task_prep` (10M) builds each side as one Arrow array and stores it with
`write_snapshot`. At 100,000,000 members that would be ~1.4 GB per string array plus several
temporaries; here the ids are made and written a slice of the number line at a time:

- the universe is the numbers 0 .. members + changed - 1; `changed` of them (random, sorted) are
  the *new* ids (only in current); `changed` of the others (random ranks among them) are the
  *removed* ids (only in previous). previous = universe - new, current = universe - removed.
  Only the two sorted `changed`-long number arrays are held whole (8 MB each per million).
- an id is `u` + the number zero-padded to 9 digits, formatted with numpy (one uint8 matrix per
  slice, no Python strings), so numeric order is byte order and every file comes out sorted.
- the files are written exactly as `write_snapshot` writes them (`StateStore.write_table` ->
  `pyarrow.parquet.write_table(table, compression="zstd", use_dictionary=False)`, default row
  groups of 1,048,576 rows): a `ParquetWriter` with the same options, fed exactly 1,048,576 rows
  per row group (`same_layout_as_write_snapshot` checks that the bytes match on a small sample).
"""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ID_WIDTH = 9  # u000000000 .. u999999999
ROW_GROUP = 1024 * 1024  # pyarrow.parquet.write_table's default row group size (write_snapshot uses it)
SLICE = 1 << 22  # numbers of the universe formatted per step
WRITE_OPTIONS = {"compression": "zstd", "use_dictionary": False}  # write_snapshot's options
SCHEMA = pa.schema([("id", pa.string())])


def format_ids(numbers: np.ndarray) -> pa.Array:
    """`u` + each number zero-padded to `ID_WIDTH` digits, as one string array (vectorized)."""
    numbers = np.asarray(numbers, dtype=np.int64)
    width = ID_WIDTH + 1
    chars = np.empty((len(numbers), width), dtype=np.uint8)
    chars[:, 0] = ord("u")
    rest = numbers.copy()
    for col in range(width - 1, 0, -1):
        chars[:, col] = rest % 10 + ord("0")
        rest //= 10
    offsets = np.arange(0, (len(numbers) + 1) * width, width, dtype=np.int32)
    return pa.Array.from_buffers(pa.string(), len(numbers), [None, pa.py_buffer(offsets), pa.py_buffer(chars.ravel())])


class SnapshotWriter:
    """A Parquet file written like `write_snapshot`'s, from ids appended in order, any number at a time."""

    def __init__(self, path: str):
        self.path = path
        self._tmp = f"{path}.tmp"
        self._writer = pq.ParquetWriter(self._tmp, SCHEMA, **WRITE_OPTIONS)
        self._pending: list[pa.Array] = []
        self._pending_rows = 0
        self.rows = 0

    def append(self, ids: pa.Array) -> None:
        self._pending.append(ids)
        self._pending_rows += len(ids)
        while self._pending_rows >= ROW_GROUP:
            self._flush(ROW_GROUP)

    def close(self) -> None:
        if self._pending_rows:
            self._flush(self._pending_rows)
        self._writer.close()
        os.replace(self._tmp, self.path)

    def _flush(self, rows: int) -> None:
        joined = pa.concat_arrays(self._pending) if len(self._pending) > 1 else self._pending[0]
        self._writer.write_table(pa.table({"id": joined.slice(0, rows)}, schema=SCHEMA), row_group_size=ROW_GROUP)
        rest = joined.slice(rows)
        self._pending = [rest] if len(rest) else []
        self._pending_rows = len(rest)
        self.rows += rows


def generate(directory: str, members: int, churn: float, seed: int) -> dict:
    """previous/current/expected_adds/expected_removes.parquet in `directory`; their sizes."""
    changed = int(round(members * churn))
    universe = members + changed
    rng = np.random.default_rng(seed)
    new = np.sort(rng.choice(universe, changed, replace=False))  # numbers only in current
    removed_ranks = np.sort(rng.choice(universe - changed, changed, replace=False))  # among the others
    # The r-th (0-based) number that is not new is r + #{j : new[j] - j <= r} (new[j] - j = how many
    # numbers below new[j] are not new).
    removed = removed_ranks + np.searchsorted(new - np.arange(changed), removed_ranks, side="right")
    names = ("previous", "current", "expected_adds", "expected_removes")
    writers = {name: SnapshotWriter(os.path.join(directory, f"{name}.parquet")) for name in names}
    for lo in range(0, universe, SLICE):
        hi = min(lo + SLICE, universe)
        numbers = np.arange(lo, hi, dtype=np.int64)
        is_new = np.zeros(hi - lo, dtype=bool)
        is_new[new[np.searchsorted(new, lo):np.searchsorted(new, hi)] - lo] = True
        is_removed = np.zeros(hi - lo, dtype=bool)
        is_removed[removed[np.searchsorted(removed, lo):np.searchsorted(removed, hi)] - lo] = True
        writers["previous"].append(format_ids(numbers[~is_new]))
        writers["current"].append(format_ids(numbers[~is_removed]))
    writers["expected_adds"].append(format_ids(new))
    writers["expected_removes"].append(format_ids(removed))
    for writer in writers.values():
        writer.close()
    sizes = {name: writers[name].rows for name in names}
    assert sizes["previous"] == sizes["current"] == members, sizes
    return {"previous": members, "current": members, "changed": changed,
            "bytes": {name: os.path.getsize(writers[name].path) for name in names}}


def same_layout_as_write_snapshot(directory: str, rows: int = 3 * ROW_GROUP + 12345) -> bool:
    """True when `SnapshotWriter`'s file is byte-identical (apart from the footer's writer string) to
    `write_snapshot`'s for the same ids (a sanity check of the benchmark's data, run by the prep)."""
    from include.audiences_to_braze.snapshot import write_snapshot
    from include.clients.state_store import StateStore

    ids = format_ids(np.arange(0, 3 * rows, 3))
    writer = SnapshotWriter(os.path.join(directory, "layout_stream.parquet"))
    for start in range(0, len(ids), 777_777):  # uneven appends
        writer.append(ids.slice(start, 777_777))
    writer.close()
    store = StateStore(os.path.join(directory, "layout_store"))
    key = write_snapshot(store, "layout", "r", ids)
    ours, theirs = pq.ParquetFile(writer.path).metadata, pq.ParquetFile(store.path(key)).metadata
    same = (ours.num_row_groups == theirs.num_row_groups
            and all(ours.row_group(i).to_dict() == theirs.row_group(i).to_dict() for i in range(ours.num_row_groups))
            and pq.read_table(writer.path).equals(pq.read_table(store.path(key))))
    os.remove(writer.path)
    import shutil

    shutil.rmtree(os.path.join(directory, "layout_store"), ignore_errors=True)
    return same
