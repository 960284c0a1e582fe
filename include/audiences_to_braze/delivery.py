"""Step 3 of a sync run: send one chunk of the plan to Braze, resumable after any failure.

A chunk's progress is checkpointed every `CHECKPOINT_EVERY` batches, counted in *rows* of the
chunk (rows are in a fixed order), so a killed or cleared task re-sends at most the batches since
its last checkpoint, whatever batch size the resuming try uses. Re-sending is harmless: Braze
applies array `add`/`remove` as set operations.
"""

from __future__ import annotations

import logging

from include.audiences_to_braze import run_files
from include.audiences_to_braze.diff import attribute_batches
from include.audiences_to_braze.planning import PlanOptions
from include.clients.state_store import StateStore

log = logging.getLogger(__name__)

CHECKPOINT_EVERY = 20  # batches between progress checkpoints


def _slugs(obj: dict, attribute: str) -> set[str]:
    ops = obj[attribute]
    return set(ops.get("add", [])) | set(ops.get("remove", []))


def _new_progress() -> dict:
    return {"rows_done": 0, "batches_done": 0, "sent": 0, "requests": 0, "retries": 0, "failed": [],
            "done": False, "per_audience": {}}


def deliver_chunk(store: StateStore, run_key: str, index: int, track, options: PlanOptions,
                  *, update_existing_only: bool = False) -> dict:
    """Send one chunk's batches, resuming after the last checkpoint; `track(batch)` -> TrackResult."""
    progress_key = run_files.progress_key(run_key, index)
    progress = store.read_json(progress_key) if store.exists(progress_key) else _new_progress()
    if progress["done"]:
        log.info("Chunk %d was delivered by an earlier try; nothing to send", index)
        return progress
    table = store.read_table(run_files.chunk_key(run_key, index))
    start = progress["rows_done"]
    if start:
        log.info("Chunk %d: resuming after row %d of %d", index, start, table.num_rows)
    batches = attribute_batches(table.slice(start), options.attribute, options.batch_size)
    for number, batch in enumerate(batches, 1):
        result = track(batch, update_existing_only=update_existing_only)
        progress["sent"] += result.sent
        progress["requests"] += 1 + result.retries
        progress["retries"] += result.retries
        failed_at = dict(result.failed)
        for position, obj in enumerate(batch):
            if position in failed_at:
                ops = obj[options.attribute]
                progress["failed"].append({"external_id": obj["external_id"], "add": ops.get("add", []),
                                           "remove": ops.get("remove", []), "error": failed_at[position]})
        # Per audience: the requests (and retries) that carried at least one of its changes.
        for slug in {s for obj in batch for s in _slugs(obj, options.attribute)}:
            counts = progress["per_audience"].setdefault(slug, {})
            counts["requests"] = counts.get("requests", 0) + 1 + result.retries
            counts["retries"] = counts.get("retries", 0) + result.retries
        progress["rows_done"] += len(batch)
        progress["batches_done"] += 1
        if number % CHECKPOINT_EVERY == 0:
            store.write_json(progress_key, progress)
    progress["done"] = True
    store.write_json(progress_key, progress)
    # `sent` counts the objects Braze accepted: the rejected ones are already left out of it.
    log.info("Chunk %d: %d batch(es), %d object(s) accepted, %d rejected by Braze (dead-lettered), %d retries",
             index, progress["batches_done"], progress["sent"], len(progress["failed"]), progress["retries"])
    return progress
