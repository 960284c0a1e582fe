"""Committed member snapshots of Lytics audiences: what Braze was last told, per audience.

Layout in a `StateStore` (keys relative to the store's URL)::

    audiences/<slug>/snapshots/<run_key>.parquet   one column `id` (string), sorted, unique, no nulls
                                                   (`<run_key>-2.parquet` when a re-run must not
                                                   overwrite the run's committed snapshot)
    audiences/<slug>/committed.json                the commit pointer:
        {"snapshot": "audiences/<slug>/snapshots/<run_key>.parquet",
         "members": 1234, "run_key": "...", "committed_at": "2026-11-23T00:00:00+00:00",
         "recent": [the last 3 committed snapshot keys, newest first]}

A run writes its snapshot first (`write_snapshot`), diffs it against the committed one, delivers
the changes to Braze, and only then `commit`s: the commit replaces `committed.json` in one atomic
write and touches nothing else first, so a run that fails before it leaves the previous state in
force and its retry diffs against the same base (re-sending a delta is harmless: Braze arrays
behave as sets, docs/vendor-contracts.md#braze-post-userstrack). Snapshots are immutable once committed.

Pruning (after the pointer swap, best effort): the last 3 committed snapshots are kept (the
current one plus two to investigate or roll back to); a committed snapshot that drops out of
that window is deleted, and so is an uncommitted one (a run that never committed) once it is
older than the oldest of the 3 kept. One writer per audience at a time: the pointer swap is not
a compare-and-swap, so the DAG must not run two commits for the same audience concurrently
(`max_active_runs=1`).
"""

from __future__ import annotations

import logging
import re

import numpy as np
import pyarrow as pa

from include.audiences_to_braze.diff import sorted_unique
from include.clients.state_store import StateStore
from include.common.errors import BrazeLyticsError, NotFoundError, PermanentError
from include.common.names import file_safe

log = logging.getLogger(__name__)

KEEP_COMMITTED = 3
_SLUG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,199}$")


def audience_prefix(slug: str) -> str:
    if not _SLUG.match(slug or ""):
        raise PermanentError(
            f"audience slug {slug!r} cannot name state files: use letters, digits, '_', '-', '.' "
            "(at most 200 characters, not starting with '.')"
        )
    return f"audiences/{slug}"


def pointer_key(slug: str) -> str:
    return f"{audience_prefix(slug)}/committed.json"


def snapshot_key(slug: str, run_key: str) -> str:
    """Where `run_key`'s snapshot of `slug` lives (characters unsafe in a key become '_')."""
    safe = file_safe(run_key, 200)
    if not safe:
        raise PermanentError(f"run key {run_key!r} cannot name a snapshot file")
    return f"{audience_prefix(slug)}/snapshots/{safe}.parquet"


def write_snapshot(store: StateStore, slug: str, run_key: str, ids: pa.Array | pa.ChunkedArray) -> str:
    """Store this run's members of `slug` (sorted and de-duplicated if they were not); the key.

    A committed snapshot is never overwritten: when `run_key` already committed one (a finished
    run cleared and re-run), this one goes to `<run_key>-2.parquet` (`-3`, ...) instead, so the
    re-run still diffs against what Braze was really told.
    """
    key = snapshot_key(slug, run_key)
    pointer = committed(store, slug)
    taken = set(pointer.get("recent") or []) | {pointer["snapshot"]} if pointer else set()
    n = 1
    while key in taken:
        n += 1
        key = snapshot_key(slug, f"{run_key}-{n}")
    ids = sorted_unique(ids, what=f"members of audience {slug!r}")
    # Unique ids make a dictionary useless: plain encoding + zstd is smaller and faster.
    store.write_table(key, pa.table({"id": ids}), use_dictionary=False, row_group_size=1 << 20)  # diff_files' blocks
    return key


def read_snapshot(store: StateStore, key: str) -> pa.Array:
    """The ids of a stored snapshot as one contiguous string array."""
    return _read_id_column(store.parquet_file(key), store.path(key))


def committed(store: StateStore, slug: str) -> dict | None:
    """The commit pointer of `slug`, or None when nothing was ever committed."""
    key = pointer_key(slug)
    try:
        pointer = store.read_json(key)
    except NotFoundError:
        return None
    if not isinstance(pointer, dict) or not isinstance(pointer.get("snapshot"), str):
        raise PermanentError(
            f"commit pointer {store.path(key)} is damaged (no `snapshot`): restore it, or delete it "
            "to treat the audience as new (a first run, see `existing_users`)"
        )
    return pointer


def committed_ids(store: StateStore, slug: str) -> pa.Array | None:
    """The members Braze was last told about for `slug`, or None when nothing was committed."""
    pointer = committed(store, slug)
    if pointer is None:
        return None
    return _read_id_column(_open_committed(store, slug, pointer), store.path(pointer["snapshot"]))


def committed_file(store: StateStore, slug: str):
    """The committed snapshot of `slug` as a `pyarrow.parquet.ParquetFile` (read lazily, block by
    block, by `diff_files`), or None when nothing was committed."""
    pointer = committed(store, slug)
    return None if pointer is None else _open_committed(store, slug, pointer)


def _open_committed(store: StateStore, slug: str, pointer: dict):
    try:
        return store.parquet_file(pointer["snapshot"])
    except NotFoundError as exc:
        raise PermanentError(
            f"commit pointer {store.path(pointer_key(slug))} names snapshot {pointer['snapshot']!r}, "
            "which is gone: restore it, point `snapshot` at one of `recent`, or delete the pointer "
            "and run a full resync"
        ) from exc


def commit(store: StateStore, slug: str, run_key: str, snapshot_key: str, members: int,
           committed_at: str) -> dict:
    """Make `snapshot_key` the committed state of `slug` (one atomic write), then prune; the pointer."""
    prefix = f"{audience_prefix(slug)}/snapshots/"
    if not snapshot_key.startswith(prefix):
        raise PermanentError(f"snapshot {snapshot_key!r} does not belong to audience {slug!r}")
    if not store.exists(snapshot_key):
        raise PermanentError(
            f"cannot commit snapshot {store.path(snapshot_key)} of {slug!r}: it does not exist "
            "(write_snapshot first; was it pruned by a newer run?)"
        )
    previous = committed(store, slug)
    recent = [snapshot_key]
    if previous is not None:
        older = previous.get("recent") or [previous["snapshot"]]
        recent += [k for k in older if isinstance(k, str) and k != snapshot_key]
    pointer = {
        "snapshot": snapshot_key,
        "members": int(members),
        "run_key": run_key,
        "committed_at": committed_at,
        "recent": recent[:KEEP_COMMITTED],
    }
    store.write_json(pointer_key(slug), pointer)
    try:
        _prune(store, prefix, keep=recent[:KEEP_COMMITTED], dropped=recent[KEEP_COMMITTED:])
    except BrazeLyticsError as exc:  # the commit stands; the next commit prunes what is left
        log.warning("audience %s: committed, but pruning old snapshots failed: %s", slug, exc)
    return pointer


def _prune(store: StateStore, prefix: str, keep: list[str], dropped: list[str]) -> None:
    """Delete committed snapshots past the window, and uncommitted ones older than all kept."""
    for key in dropped:
        if key.startswith(prefix):
            store.delete(key)
    if len(keep) < KEEP_COMMITTED:
        return  # too little history to tell an abandoned snapshot from one a running task still needs
    cutoff = min(store.modified(k) for k in keep)
    for key in store.list(prefix):
        if key not in keep and key.endswith(".parquet") and store.modified(key) < cutoff:
            store.delete(key)


def _read_id_column(parquet, where: str) -> pa.Array:
    """Copy the `id` column batch by batch into one preallocated array.

    `read_table(...).combine_chunks()` holds the column twice (chunks + copy) on top of the
    decompressed pages: for 10M ids a 450 MB peak for a 133 MB result. Here the peak is the result
    plus one batch. The data buffer is sized from the column's uncompressed size, which bounds
    the string bytes of a plain-encoded column; untouched pages of it are never resident. It
    grows if a (dictionary-encoded) file holds more.
    """
    names = parquet.schema_arrow.names
    if "id" not in names:
        raise PermanentError(f"snapshot {where} has no `id` column (columns: {names})")
    meta = parquet.metadata
    rows = meta.num_rows
    index = names.index("id")
    capacity = sum(meta.row_group(i).column(index).total_uncompressed_size for i in range(meta.num_row_groups))
    offsets = np.empty(rows + 1, dtype=np.int32)
    offsets[0] = 0
    data = np.empty(max(capacity, 1), dtype=np.uint8)
    row = used = 0
    for batch in parquet.iter_batches(batch_size=1 << 17, columns=["id"]):
        ids = batch.column(0)
        if ids.type != pa.string():
            ids = ids.cast(pa.string())
        if ids.null_count:
            raise PermanentError(f"snapshot {where} holds {ids.null_count} null ids: it was not written by write_snapshot")
        _, offsets_buf, data_buf = ids.buffers()
        chunk = np.frombuffer(offsets_buf, dtype=np.int32, count=len(ids) + 1, offset=ids.offset * 4)
        first, last = int(chunk[0]), int(chunk[-1])
        size = last - first
        if used + size > len(data):
            if used + size >= 2**31:
                raise PermanentError(f"snapshot {where} holds more than 2 GiB of ids: too large for one array")
            grown = np.empty(max(2 * len(data), used + size), dtype=np.uint8)
            grown[:used] = data[:used]
            data = grown
        if size:
            data[used:used + size] = np.frombuffer(data_buf, dtype=np.uint8, count=size, offset=first)
        offsets[row + 1:row + len(ids) + 1] = chunk[1:] - first + used
        row += len(ids)
        used += size
    if row != rows:
        raise PermanentError(f"snapshot {where}: metadata says {rows} rows, read {row}")
    return pa.Array.from_buffers(pa.string(), rows, [None, pa.py_buffer(offsets), pa.py_buffer(data[:used])])
