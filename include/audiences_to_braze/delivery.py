"""Step 3 of a sync run: send one chunk of the plan to Braze, resumable after any failure.

Several requests in flight: one request at a time is bounded by the round trip (at 30 ms, ~33
requests/s per task: 4 tasks reach ~12-13 % of Braze's default 1,000 per second), so up to
`in_flight` (`IN_FLIGHT`, 16) batches are sent at once by a small thread pool, every attempt
paced by the client's one limiter. What one task can reach is about `min(its share of the rate
limit, in_flight / round trip)`: 16 in flight cover 250/s per task (Braze's default 3,000 per 3 s
shared by 4 tasks) up to ~60 ms of round trip, the whole 1,000/s of a task sending alone up to
~15 ms.

The share: the run's delivery tasks split the workspace budget between those that are actually
sending (`shared_budget`: leases in the run's state store, `include.common.shared_budget`). A task
alone paces the whole budget, a task that joins takes only what the others leave and gets its fair
share once they lowered theirs, a finished task's share goes to the others within a tick, and a
killed one's once its lease expired.

Ordered checkpoints: results are recorded strictly in batch order, and at most `in_flight`
batches are outstanding (sent or being sent, not yet recorded). A batch that finishes before an
earlier one waits, unrecorded, until every batch before it is done, so the progress file only
ever counts a finished *prefix* of the chunk. Progress is checkpointed every `CHECKPOINT_EVERY`
recorded batches, counted in *rows* of the chunk (rows are in a fixed order), so a killed or
cleared task re-sends at most the batches recorded since its last checkpoint plus the ones in
flight (< `CHECKPOINT_EVERY + in_flight`), whatever batch size the resuming try uses. Re-sending
is harmless: Braze applies array `add`/`remove` as set operations.

The counts (sent, failed rows, requests, retries, per audience) are added up from the recorded
batches in order, exactly as with one request at a time. A batch that fails (a permanent error,
or retries exhausted) stops the chunk: nothing more is sent, the requests under way finish, the
batches before it are checkpointed, and its error is raised.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from include.audiences_to_braze import run_files
from include.audiences_to_braze.diff import attribute_batches
from include.audiences_to_braze.planning import PlanOptions
from include.clients.state_store import StateStore
from include.common.progress import Progress
from include.common.rate_limit import RateLimiter
from include.common.shared_budget import SharedBudget

log = logging.getLogger(__name__)

CHECKPOINT_EVERY = 20  # recorded batches between progress checkpoints
IN_FLIGHT = 16  # batches sent at once per chunk (each task); 1 = one request at a time


def max_resent_batches(in_flight: int = IN_FLIGHT) -> int:
    """The most batches a killed or cleared delivery sends again: those recorded since the last checkpoint
    (< CHECKPOINT_EVERY) and those on the wire (<= in_flight) - 35 with the defaults."""
    return CHECKPOINT_EVERY - 1 + in_flight


def lease_prefix(run_key: str) -> str:
    """Where the run's sending tasks keep their rate leases (`include.common.shared_budget`)."""
    return f"runs/{run_key}/delivery-leases"


def shared_budget(store: StateStore, run_key: str, index: int, limiter: RateLimiter, *, limit: int,
                  slots: int, **options) -> SharedBudget:
    """The run's workspace budget `limit` (per the limiter's window), shared with the run's other
    delivery tasks through leases in the state store: this task paces what the others leave.

    `slots` requests are held back (the pool's parallel tasks, at most one request each beyond
    their share in a window: `include.common.rate_limit`, point 6). Use as a context manager
    around `deliver_chunk`.
    """
    return SharedBudget(store, lease_prefix(run_key), limiter, total=max(1, limit - max(0, slots)),
                        member=f"chunk-{index}", **options)


def _slugs(obj: dict, attribute: str) -> set[str]:
    ops = obj[attribute]
    return set(ops.get("add", [])) | set(ops.get("remove", []))


def _new_progress() -> dict:
    return {"rows_done": 0, "batches_done": 0, "sent": 0, "requests": 0, "retries": 0, "failed": [],
            "done": False, "per_audience": {}}


def _record(progress: dict, batch: list[dict], result, attribute: str) -> None:
    """Add one finished batch (the next in order) to the progress."""
    progress["sent"] += result.sent
    progress["requests"] += 1 + result.retries
    progress["retries"] += result.retries
    failed_at = dict(result.failed)
    for position, obj in enumerate(batch):
        if position in failed_at:
            ops = obj[attribute]
            progress["failed"].append({"external_id": obj["external_id"], "add": ops.get("add", []),
                                       "remove": ops.get("remove", []), "error": failed_at[position]})
    # Per audience: the requests (and retries) that carried at least one of its changes.
    for slug in {s for obj in batch for s in _slugs(obj, attribute)}:
        counts = progress["per_audience"].setdefault(slug, {})
        counts["requests"] = counts.get("requests", 0) + 1 + result.retries
        counts["retries"] = counts.get("retries", 0) + result.retries
    progress["rows_done"] += len(batch)
    progress["batches_done"] += 1


class _Stopped(Exception):
    """A queued batch not sent because an earlier one failed."""


def deliver_chunk(store: StateStore, run_key: str, index: int, track: Callable, options: PlanOptions,
                  *, update_existing_only: bool = False, in_flight: int = IN_FLIGHT) -> dict:
    """Send one chunk's batches, resuming after the last checkpoint; `track(batch)` -> TrackResult.

    `track` is called from up to `in_flight` threads at once (BrazeTrackClient.track is safe for that).
    """
    if in_flight < 1:
        raise ValueError(f"in_flight must be >= 1, got {in_flight}")
    progress_key = run_files.progress_key(run_key, index)
    progress = store.read_json(progress_key) if store.exists(progress_key) else _new_progress()
    if progress["done"]:
        log.info("Chunk %d was delivered by an earlier try; nothing to send", index)
        return progress
    table = store.read_table(run_files.chunk_key(run_key, index))
    # Before sending anything, prove the state store takes a write beside the checkpoints: one that cannot
    # (read-only, full) fails the chunk here, not after CHECKPOINT_EVERY batches went out unrecorded.
    probe = progress_key.removesuffix(".json") + ".write-check"
    store.write_bytes(probe, json.dumps(progress).encode())  # a checkpoint's size: an empty file fits a full disk
    store.delete(probe)
    start = progress["rows_done"]
    if start:
        log.info("Chunk %d: resuming after row %d of %d", index, start, table.num_rows)
    batches = attribute_batches(table.slice(start), options.attribute, options.batch_size)
    shown = Progress(log, f"Delivering chunk {index}", total=table.num_rows, unit="users")
    shown.set(start)
    stop = threading.Event()  # set when a batch failed: the queued ones are not sent

    def send(batch: list[dict]):
        if stop.is_set():
            raise _Stopped
        try:
            return track(batch, update_existing_only=update_existing_only)
        except BaseException:
            stop.set()
            raise

    outstanding: deque[tuple[list[dict], Future]] = deque()  # sent or being sent, in batch order
    recorded = 0

    def record_first() -> None:
        """Wait for the oldest outstanding batch and record it (or raise the error that stopped the chunk)."""
        nonlocal recorded
        batch, future = outstanding.popleft()
        try:
            result = future.result()
        except _Stopped:
            # Skipped because a batch after it failed first (the threads race): raise that batch's error.
            for _, later in outstanding:
                error = later.exception()
                if error is not None and not isinstance(error, _Stopped):
                    raise error from None
            raise
        _record(progress, batch, result, options.attribute)
        shown.set(progress["rows_done"])
        recorded += 1
        if recorded % CHECKPOINT_EVERY == 0:
            store.write_json(progress_key, progress)

    pool = ThreadPoolExecutor(max_workers=in_flight, thread_name_prefix=f"deliver-chunk-{index}")
    try:
        for batch in batches:
            if stop.is_set():
                break  # record what finished before the failed batch, then raise its error (below)
            if len(outstanding) == in_flight:
                record_first()
            outstanding.append((batch, pool.submit(send, batch)))
        while outstanding:
            record_first()
    except BaseException as exc:
        stop.set()
        # A failed batch: let the requests under way finish, so nothing is sent after we return.
        # An interrupt (the task being killed): do not wait for them.
        pool.shutdown(wait=isinstance(exc, Exception), cancel_futures=True)
        if recorded % CHECKPOINT_EVERY:
            store.write_json(progress_key, progress)  # keep the finished prefix: a retry resumes after it
        raise
    pool.shutdown(wait=True)
    shown.done()
    progress["done"] = True
    store.write_json(progress_key, progress)
    # `sent` counts the objects Braze accepted: the rejected ones are already left out of it.
    log.info("Chunk %d: %d batch(es), %d object(s) accepted, %d rejected by Braze (dead-lettered), %d retries",
             index, progress["batches_done"], progress["sent"], len(progress["failed"]), progress["retries"])
    return progress
