"""The audience diff of `diff.py`, streamed from the two snapshot files: memory bounded by blocks, not members.

`diff_audience` needs both member arrays in memory: ~14 bytes an id each side, 1.4 GB per side for
a 100,000,000-member audience. Snapshots are already stored sorted and unique
(`snapshot.write_snapshot`: one `id` column, row groups of 1,048,576 rows), so the diff can walk
both files in step instead, block by block:

- each side is read batch by batch (`ParquetFile.iter_batches`, `block_rows` ids at a time) into a
  small buffer topped up to at least `block_rows` ids;
- the two buffers are cut at `t = min(last id of current's buffer, last id of previous's buffer)`:
  every id <= t of *both* sides is then in the buffers (the files are sorted), so the two heads
  are diffed with the in-memory merge of `diff.py` (`_match_sorted`) and the side that was cut
  carries its tail into the next round. Each round consumes at least one side's whole buffer;
  neither buffer ever holds more than ~2 x `block_rows` ids, whatever the other side looks like
  (an empty side, a gap of a million ids on one side only, ...).

Each side is read by its own thread, one block ahead (`PREFETCH`): decoding Parquet releases the
GIL, so on two cores the reads overlap the merge. Only the changes are collected (the adds and
removes: ~1% of the members at everyday churn).

The result is exactly `diff_audience(slug, read_snapshot(current), read_snapshot(previous), ...)`:
the same arrays, the same first run / `full_resync` semantics, the same refusals (a missing `id`
column, null ids; a column that is not `string` is cast to it, as `read_snapshot` does). Two
cases are not bounded by the block size, by the nature of the result: a first run with
`existing_users` and a `full_resync` return every current member as an add, so the whole current
side ends in memory (once: it is copied into one preallocated array). Files that turn out not to
be sorted and unique (not written by `write_snapshot`) are detected while streaming (each batch
checked, and across batches); the diff then falls back to reading both files whole and
`diff_audience` (with a warning), so the result stays right and only the memory bound is lost.

The memory bound also assumes the file is read lazily: `StateStore.parquet_file` memory-maps a
local file (the pages touched count in RSS as file pages, ~65 MB a side for 100M short ids), but
from an object store it fetches the whole compressed file into memory first.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from include.audiences_to_braze.diff import AudienceChanges, _match_sorted, _strictly_ascending, diff_audience
from include.audiences_to_braze.snapshot import _read_id_column
from include.common.errors import ConfigError, PermanentError

log = logging.getLogger(__name__)

# Ids per read batch and the size each side's buffer is topped up to. 1 Mi ids of ~10 bytes is
# ~14 MB (plus `_match_sorted`'s temporaries, ~50 MB): write_snapshot's row group size. Smaller
# blocks cost more rounds and calls (100M ids, loaded machine: 256 Ki 23 s / 390 MB peak, 1 Mi 16 s / 540 MB).
BLOCK_ROWS = 1 << 20
# Blocks each side's reader thread may have ready ahead of the merge (0: no threads, read inline).
# Decoding the Parquet pages (zstd + plain strings, ~35 ns an id) releases the GIL, so on two
# cores it overlaps the merge (measured on 10M ids: ~40% of the single-threaded time is reading).
# Costs (PREFETCH + 1) blocks a side.
PREFETCH = 1
_EMPTY = pa.array([], pa.string())


class _NotSortedUnique(Exception):
    """A snapshot file is not sorted and unique: streaming cannot diff it."""


def diff_snapshot_files(slug: str, current: pq.ParquetFile, previous: pq.ParquetFile | None, *,
                        existing_users: bool = True, full_resync: bool = False,
                        block_rows: int = BLOCK_ROWS) -> AudienceChanges:
    """`diff_audience` of two snapshot files (`id` column, sorted, unique), streamed block by block.

    :param current: this run's snapshot, e.g. `StateStore.parquet_file(key)`.
    :param previous: the committed snapshot, or None on the audience's first run.
    :param existing_users: see `diff_audience` (first run only).
    :param full_resync: see `diff_audience` (every current member is an add).
    :param block_rows: ids per block; memory is a few times this, not the members.
    """
    if block_rows < 1:
        raise ConfigError(f"block_rows must be at least 1, got {block_rows}")
    what_current = f"current members of {slug!r}"
    what_previous = f"committed members of {slug!r}"
    _check_schema(current, what_current)
    if previous is not None:
        _check_schema(previous, what_previous)
    try:
        if previous is None:
            if existing_users or full_resync:
                return AudienceChanges(slug, _collect(_blocks(current, what_current, block_rows), current), _EMPTY)
            _validate_only(current, what_current, block_rows)
            return AudienceChanges(slug, _EMPTY, _EMPTY)
        return _diff_streams(slug, current, previous, what_current, what_previous, full_resync, block_rows)
    except _NotSortedUnique as exc:
        log.warning("audience %s: %s; diffing the whole files in memory instead of streaming", slug, exc)
        current_ids = _read_whole(current, what_current)
        previous_ids = None if previous is None else _read_whole(previous, what_previous)
        return diff_audience(slug, current_ids, previous_ids, existing_users=existing_users,
                             full_resync=full_resync)


def _diff_streams(slug: str, current: pq.ParquetFile, previous: pq.ParquetFile, what_current: str,
                  what_previous: str, full_resync: bool, block_rows: int) -> AudienceChanges:
    with _reader(current, what_current, block_rows) as cur_blocks, \
            _reader(previous, what_previous, block_rows) as prev_blocks:
        cur, prev = _Buffer(cur_blocks, block_rows), _Buffer(prev_blocks, block_rows)
        everyone = _Collector(current) if full_resync else None
        adds: list[pa.Array] = []
        removes: list[pa.Array] = []
        while True:
            cur.fill()
            prev.fill()
            if not len(cur.ids) or not len(prev.ids):  # one side is done: the rest of the other is unmatched
                for part in cur.drain():
                    (everyone.append if everyone is not None else adds.append)(part)
                removes.extend(prev.drain())
                break
            cut = min(cur.last, prev.last)
            c, p = cur.take_through(cut), prev.take_through(cut)
            c_in_p, p_in_c = _match_sorted(c, p)
            if everyone is not None:
                everyone.append(c)
            else:
                adds.append(c.filter(pa.array(~c_in_p)))
            removes.append(p.filter(pa.array(~p_in_c)))
    added = everyone.result() if everyone is not None else _concat(adds)
    return AudienceChanges(slug, added, _concat(removes))


class _reader:  # noqa: N801 - used like a function: `with _reader(...) as blocks`
    """`_blocks(...)` read ahead by a thread (`PREFETCH` blocks), as a context manager.

    Exceptions raised while reading (null ids, `_NotSortedUnique`, I/O) are re-raised in the
    consumer at the block where they happened. Leaving the `with` stops and joins the thread, so
    the file is not read concurrently by anything that comes after (e.g. the whole-file fallback).
    """

    _END = object()

    def __init__(self, parquet: pq.ParquetFile, what: str, block_rows: int):
        self._source = _blocks(parquet, what, block_rows)
        self._thread: threading.Thread | None = None
        if PREFETCH > 0:
            self._queue: queue.Queue = queue.Queue(maxsize=PREFETCH)
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._run, name="diff-files-reader", daemon=True)

    def __enter__(self) -> Iterator[pa.Array]:
        if self._thread is None:
            return self._source
        self._thread.start()
        return self._consume()

    def __exit__(self, *exc) -> None:
        if self._thread is not None:
            self._stop.set()
            while self._thread.is_alive():  # unblock a reader waiting on a full queue
                try:
                    self._queue.get_nowait()
                except queue.Empty:
                    pass
                self._thread.join(0.01)
        self._source.close()

    def _run(self) -> None:
        try:
            for block in self._source:
                if not self._put(block):
                    return
            self._put(self._END)
        except BaseException as exc:  # handed to the consumer
            self._put(exc)

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def _consume(self) -> Iterator[pa.Array]:
        while True:
            item = self._queue.get()
            if item is self._END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item


class _Buffer:
    """One side's ids not yet diffed: at least `block_rows` of them while the file has more."""

    def __init__(self, blocks: Iterator[pa.Array], block_rows: int):
        self._blocks = blocks
        self._block_rows = block_rows
        self._done = False
        self.ids = _EMPTY

    def fill(self) -> None:
        if self._done or len(self.ids) >= self._block_rows:
            return
        parts, have = [self.ids], len(self.ids)
        while have < self._block_rows:
            block = next(self._blocks, None)
            if block is None:
                self._done = True
                break
            parts.append(block)
            have += len(block)
        parts = [p for p in parts if len(p)]
        self.ids = parts[0] if len(parts) == 1 else (pa.concat_arrays(parts) if parts else _EMPTY)

    @property
    def last(self) -> str:
        return self.ids[len(self.ids) - 1].as_py()

    def take_through(self, cut: str) -> pa.Array:
        """The buffered ids <= `cut` (removed from the buffer)."""
        ids = self.ids
        k = len(ids) if self.last <= cut else int(pc.search_sorted(ids, pa.scalar(cut, pa.string()), side="right").as_py())
        head, self.ids = ids.slice(0, k), ids.slice(k)
        return head

    def drain(self) -> Iterator[pa.Array]:
        """Everything left: the buffer, then the rest of the file."""
        if len(self.ids):
            yield self.ids
        self.ids = _EMPTY
        if not self._done:
            for block in self._blocks:
                if len(block):
                    yield block
            self._done = True


def _blocks(parquet: pq.ParquetFile, what: str, block_rows: int) -> Iterator[pa.Array]:
    """The `id` column of `parquet`, batch by batch, as string arrays checked sorted and unique."""
    _check_schema(parquet, what)
    last = None
    for batch in parquet.iter_batches(batch_size=block_rows, columns=["id"]):
        ids = _as_ids(batch.column(0), what)
        if not len(ids):
            continue
        if len(ids) > 1 and not _strictly_ascending(ids):
            raise _NotSortedUnique(f"{what} are not sorted and unique")
        first = ids[0].as_py()
        if last is not None and not last < first:  # Python str order is UTF-8 byte order, Arrow's
            raise _NotSortedUnique(f"{what} are not sorted and unique (across batches)")
        last = ids[len(ids) - 1].as_py()
        yield ids


def _as_ids(ids: pa.Array, what: str) -> pa.Array:
    """A batch of ids as `read_snapshot` takes it: cast to `string` if it is not, nulls refused."""
    if ids.type != pa.string():
        ids = ids.cast(pa.string())
    if ids.null_count:
        raise PermanentError(f"{what}: {ids.null_count} ids are null; every member needs an id")
    return ids


def _check_schema(parquet: pq.ParquetFile, what: str) -> None:
    names = parquet.schema_arrow.names
    if "id" not in names:
        raise PermanentError(f"{what}: the snapshot has no `id` column (columns: {names})")


def _validate_only(parquet: pq.ParquetFile, what: str, block_rows: int) -> None:
    """What reading the ids would refuse (a missing `id` column, null ids), without keeping them.

    A string column whose statistics vouch for no nulls in every row group needs no reading;
    otherwise the file is read through (`_blocks`; a `_NotSortedUnique` it raises is harmless:
    the fallback then reads the file whole, as `diff_audience` would).
    """
    _check_schema(parquet, what)
    meta = parquet.metadata
    index = parquet.schema_arrow.names.index("id")
    vouched = parquet.schema_arrow.field("id").type == pa.string()
    for i in range(meta.num_row_groups):
        stats = meta.row_group(i).column(index).statistics
        vouched = vouched and stats is not None and stats.has_null_count and stats.null_count == 0
    if not vouched:
        for _ in _blocks(parquet, what, block_rows):
            pass


def _read_whole(parquet: pq.ParquetFile, what: str) -> pa.Array:
    """The ids as `snapshot.read_snapshot` reads them (the fallback for files that are not sorted)."""
    return _read_id_column(parquet, what)


def _concat(parts: list[pa.Array]) -> pa.Array:
    parts = [p for p in parts if len(p)]
    if not parts:
        return _EMPTY
    return parts[0] if len(parts) == 1 else pa.concat_arrays(parts)


def _collect(blocks: Iterator[pa.Array], parquet: pq.ParquetFile) -> pa.Array:
    collector = _Collector(parquet)
    for block in blocks:
        collector.append(block)
    return collector.result()


class _Collector:
    """String arrays appended into one preallocated array (no second copy at the end, unlike concat).

    The byte buffer is sized from the column's uncompressed size (which bounds the string bytes of
    a plain-encoded column; pages never written to are never resident) and grows if it is short.
    """

    def __init__(self, parquet: pq.ParquetFile):
        meta = parquet.metadata
        index = parquet.schema_arrow.names.index("id")
        capacity = sum(meta.row_group(i).column(index).total_uncompressed_size for i in range(meta.num_row_groups))
        self._offsets = np.empty(meta.num_rows + 1, dtype=np.int32)
        self._offsets[0] = 0
        self._data = np.empty(max(capacity, 1), dtype=np.uint8)
        self._rows = self._used = 0

    def append(self, ids: pa.Array) -> None:
        n = len(ids)
        if not n:
            return
        _, offsets_buf, data_buf = ids.buffers()
        chunk = np.frombuffer(offsets_buf, dtype=np.int32, count=n + 1, offset=ids.offset * 4)
        first, size = int(chunk[0]), int(chunk[-1]) - int(chunk[0])
        if self._used + size >= 2**31:
            raise PermanentError("more than 2 GiB of member ids: too large for one array")
        if self._used + size > len(self._data):
            grown = np.empty(max(2 * len(self._data), self._used + size), dtype=np.uint8)
            grown[:self._used] = self._data[:self._used]
            self._data = grown
        if self._rows + n + 1 > len(self._offsets):  # more rows than the metadata said: cannot happen, but grow
            grown = np.empty(max(2 * len(self._offsets), self._rows + n + 1), dtype=np.int32)
            grown[:self._rows + 1] = self._offsets[:self._rows + 1]
            self._offsets = grown
        if size:
            self._data[self._used:self._used + size] = np.frombuffer(data_buf, dtype=np.uint8, count=size, offset=first)
        self._offsets[self._rows + 1:self._rows + n + 1] = chunk[1:] - first + self._used
        self._rows += n
        self._used += size

    def result(self) -> pa.Array:
        if not self._rows:
            return _EMPTY
        return pa.Array.from_buffers(pa.string(), self._rows, [
            None, pa.py_buffer(self._offsets[:self._rows + 1]), pa.py_buffer(self._data[:self._used])])
