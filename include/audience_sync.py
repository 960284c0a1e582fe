"""One run of the Lytics -> Braze audience sync, as plain steps over a shared state store.

    snapshot (per audience) -> plan (diff + merge + chunk) -> deliver (per chunk) -> commit -> report

Every step writes its result to the state store under `runs/<run_key>/` before returning, and
each step first looks for its own earlier result, so clearing any task (or losing a worker)
resumes instead of redoing work:

* a run scans each audience once (`runs/<run_key>/scans/<slug>.json` marks the snapshot done);
* the plan is computed once per run (`plan.json`); delivery never re-plans under itself;
* each chunk checkpoints its progress every few batches (`progress/<i>.json`), so a killed
  delivery re-sends at most the batches since its last checkpoint - less than one chunk;
* the new snapshots become the committed ones only after every chunk is delivered or
  dead-lettered (`commit`); until then the next run diffs against the old state and re-sends
  (safe: Braze array add/remove are set operations).

Users Braze rejected (partial `errors`) are kept in `dead_letter/pending/<run_key>.parquet`
and merged into the next run's plan.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime

import pyarrow as pa

from include.audience_config import AudienceRef
from include.audience_diff import (
    AudienceChanges,
    attribute_batches,
    diff_audience,
    estimate_data_points,
    merge_changes,
    split_chunks,
)
from include.audience_snapshot import commit as commit_snapshot
from include.audience_snapshot import committed_ids, read_snapshot, write_snapshot
from include.errors import PermanentError
from include.state_store import StateStore

log = logging.getLogger(__name__)

CHECKPOINT_EVERY = 20  # batches between progress checkpoints
DEAD_LETTER_PREFIX = "dead_letter/pending"


def run_key_for(run_id: str) -> str:
    """A file-name-safe key for an Airflow run id (same run -> same key)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", run_id)[:120]


@dataclass(frozen=True)
class PlanOptions:
    attribute: str = "lytics_segments"
    batch_size: int = 75
    existing_users: bool = True
    full_resync: bool = False
    dry_run: bool = False
    max_chunks: int = 16
    min_chunk_users: int = 5000


# --- snapshot ---------------------------------------------------------------------------------

def snapshot_audience(store: StateStore, run_key: str, audience: AudienceRef, scan) -> dict:
    """Scan one audience (once per run) into a snapshot; `scan(audience_id)` returns a ScanResult."""
    marker = f"runs/{run_key}/scans/{audience.slug}.json"
    if store.exists(marker):
        meta = store.read_json(marker)
        log.info("Audience %s already scanned in this run (%d members); reusing the snapshot",
                 audience.slug, meta["members"])
        return meta
    result = scan(audience.id)
    key = write_snapshot(store, audience.slug, run_key, result.ids)
    meta = {"slug": audience.slug, "snapshot": key, "members": len(result.ids),
            "skipped_no_id": result.skipped_no_id, "pages": result.pages, "scan_retries": result.retries}
    store.write_json(marker, meta)
    log.info("Audience %s: %d members with an id, %d skipped without one (%d pages)", audience.slug,
             meta["members"], meta["skipped_no_id"], meta["pages"])
    return meta


# --- plan -------------------------------------------------------------------------------------

def _dead_letters(store: StateStore) -> tuple[list[str], pa.Table | None]:
    keys = sorted(k for k in store.list(DEAD_LETTER_PREFIX) if k.endswith(".parquet"))
    tables = [store.read_table(k) for k in keys]
    return keys, (pa.concat_tables(tables) if tables else None)


def _with_dead_letters(changes: pa.Table, dead: pa.Table) -> pa.Table:
    """Add earlier rejected users to this run's changes; this run's own decisions win per slug."""
    rows = {r["external_id"]: (set(r["add"] or []), set(r["remove"] or [])) for r in changes.to_pylist()}
    for r in dead.to_pylist():
        add, remove = rows.setdefault(r["external_id"], (set(), set()))
        decided = add | remove
        add.update(s for s in (r["add"] or []) if s not in decided)
        remove.update(s for s in (r["remove"] or []) if s not in decided)
    ids = sorted(rows)
    return pa.table({
        "external_id": pa.array(ids, pa.string()),
        "add": pa.array([sorted(rows[i][0]) for i in ids], pa.list_(pa.string())),
        "remove": pa.array([sorted(rows[i][1]) for i in ids], pa.list_(pa.string())),
    })


def plan_changes(store: StateStore, run_key: str, scans: list[dict], options: PlanOptions) -> dict:
    """Diff every audience against its committed snapshot, merge per user, write the chunks."""
    plan_key = f"runs/{run_key}/plan.json"
    if store.exists(plan_key):
        log.info("This run was already planned; reusing %s", store.path(plan_key))
        return store.read_json(plan_key)
    changes: list[AudienceChanges] = []
    per_audience: dict[str, dict] = {}
    for scan in scans:
        slug = scan["slug"]
        current = read_snapshot(store, scan["snapshot"])
        previous = committed_ids(store, slug)
        diff = diff_audience(slug, current, previous, existing_users=options.existing_users,
                             full_resync=options.full_resync)
        changes.append(diff)
        per_audience[slug] = {"members": scan["members"], "skipped_no_id": scan["skipped_no_id"],
                              "adds": len(diff.adds), "removes": len(diff.removes),
                              "first_run": previous is None}
    table = merge_changes(changes)
    dead_keys, dead = _dead_letters(store)
    if dead is not None and dead.num_rows:
        log.info("Retrying %d user(s) Braze rejected in earlier runs", dead.num_rows)
        table = _with_dead_letters(table, dead)
    chunks = [] if table.num_rows == 0 else split_chunks(table, options.max_chunks, options.min_chunk_users)
    for i, chunk in enumerate(chunks):
        store.write_table(f"runs/{run_key}/chunks/{i}.parquet", chunk)
    plan = {
        "run_key": run_key,
        "chunks": len(chunks),
        "users": table.num_rows,
        "estimated_data_points": estimate_data_points(table),
        "audiences": per_audience,
        "dead_letters_included": dead_keys,
        "dry_run": options.dry_run,
        "payload_file": None,
    }
    if options.dry_run:
        plan["payload_file"] = _write_planned_payloads(store, run_key, table, options)
    store.write_json(plan_key, plan)
    log.info("Plan: %d user(s) to update in %d chunk(s), ~%d data points; %s", plan["users"], plan["chunks"],
             plan["estimated_data_points"], per_audience)
    return plan


def _write_planned_payloads(store: StateStore, run_key: str, table: pa.Table, options: PlanOptions) -> str:
    import orjson

    key = f"runs/{run_key}/planned_payloads.jsonl"
    with store.open_write(key) as fh:
        for batch in attribute_batches(table, options.attribute, options.batch_size):
            fh.write(orjson.dumps({"attributes": batch}) + b"\n")
    return store.path(key)


# --- deliver ----------------------------------------------------------------------------------

def _slugs(obj: dict, attribute: str) -> set[str]:
    ops = obj[attribute]
    return set(ops.get("add", [])) | set(ops.get("remove", []))


def deliver_chunk(store: StateStore, run_key: str, index: int, track, options: PlanOptions,
                  *, update_existing_only: bool = False) -> dict:
    """Send one chunk's batches, resuming after the last checkpoint; `track(batch)` -> TrackResult."""
    progress_key = f"runs/{run_key}/progress/{index}.json"
    progress = store.read_json(progress_key) if store.exists(progress_key) else {
        "batches_done": 0, "sent": 0, "requests": 0, "retries": 0, "failed": [], "done": False,
        "per_audience": {},
    }
    if progress["done"]:
        log.info("Chunk %d was delivered by an earlier try; nothing to send", index)
        return progress
    batches = list(attribute_batches(store.read_table(f"runs/{run_key}/chunks/{index}.parquet"),
                                     options.attribute, options.batch_size))
    if progress["batches_done"]:
        log.info("Chunk %d: resuming after batch %d of %d", index, progress["batches_done"], len(batches))
    for number in range(progress["batches_done"], len(batches)):
        batch = batches[number]
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
        progress["batches_done"] = number + 1
        if progress["batches_done"] % CHECKPOINT_EVERY == 0:
            store.write_json(progress_key, progress)
    progress["done"] = True
    store.write_json(progress_key, progress)
    log.info("Chunk %d: %d batch(es), %d object(s) accepted, %d rejected by Braze (dead-lettered), %d retries",
             index, len(batches), progress["sent"] - len(progress["failed"]), len(progress["failed"]),
             progress["retries"])
    return progress


# --- commit -----------------------------------------------------------------------------------

def commit_run(store: StateStore, run_key: str, plan: dict, scans: list[dict]) -> dict:
    """Make this run's snapshots the committed ones; keep rejected users for the next run."""
    marker = f"runs/{run_key}/committed.json"
    if store.exists(marker):
        return store.read_json(marker)
    if plan["dry_run"]:
        raise PermanentError("a dry run is never committed")
    progress = [store.read_json(f"runs/{run_key}/progress/{i}.json") if store.exists(f"runs/{run_key}/progress/{i}.json")
                else None for i in range(plan["chunks"])]
    missing = [i for i, p in enumerate(progress) if not p or not p["done"]]
    if missing:
        raise PermanentError(f"chunks {missing} of this run are not delivered; clear their deliver tasks "
                             f"before committing")
    failed = [f for p in progress for f in p["failed"]]
    if failed:
        store.write_table(f"{DEAD_LETTER_PREFIX}/{run_key}.parquet", pa.table({
            "external_id": pa.array([f["external_id"] for f in failed], pa.string()),
            "add": pa.array([sorted(f["add"]) for f in failed], pa.list_(pa.string())),
            "remove": pa.array([sorted(f["remove"]) for f in failed], pa.list_(pa.string())),
        }))
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    for scan in scans:
        commit_snapshot(store, scan["slug"], run_key, scan["snapshot"], scan["members"], now)
    for key in plan["dead_letters_included"]:
        if key != f"{DEAD_LETTER_PREFIX}/{run_key}.parquet":
            store.delete(key)
    result = {"committed_at": now, "audiences": [s["slug"] for s in scans], "dead_lettered": len(failed)}
    store.write_json(marker, result)
    for i in range(plan["chunks"]):  # the payloads are delivered; keep plan, progress and report only
        store.delete(f"runs/{run_key}/chunks/{i}.parquet")
    return result


# --- report -----------------------------------------------------------------------------------

def run_report(store: StateStore, run_key: str, plan: dict) -> dict:
    """Per audience: members, adds, removes, skipped, requests, retries, dead-lettered, data points."""
    progress = [store.read_json(f"runs/{run_key}/progress/{i}.json") for i in range(plan["chunks"])
                if store.exists(f"runs/{run_key}/progress/{i}.json")]
    dead = Counter()
    for p in progress:
        for f in p["failed"]:
            for slug in set(f["add"]) | set(f["remove"]):
                dead[slug] += 1
    audiences = {}
    for slug, a in plan["audiences"].items():
        usage = Counter()
        for p in progress:
            usage.update(p["per_audience"].get(slug, {}))
        audiences[slug] = {**a, "requests": usage["requests"], "retries": usage["retries"],
                           "dead_lettered": dead[slug], "estimated_data_points": a["adds"] + a["removes"]}
    return {
        "run_key": run_key,
        "dry_run": plan["dry_run"],
        "users_changed": plan["users"],
        "chunks": plan["chunks"],
        "requests": sum(p["requests"] for p in progress),
        "retries": sum(p["retries"] for p in progress),
        "dead_lettered": sum(len(p["failed"]) for p in progress),
        "estimated_data_points": plan["estimated_data_points"],
        "payload_file": plan["payload_file"],
        "audiences": audiences,
    }
