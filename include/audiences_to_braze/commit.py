"""Steps 4-5 of a sync run: make the run's snapshots the committed ones, and report the run.

Only when every chunk is delivered (or its rejected users dead-lettered) do the new snapshots
become the committed ones; until then the next run diffs against the old state and re-sends
(harmless: Braze array add/remove are set operations).
"""

from __future__ import annotations

import logging
from collections import Counter
from datetime import UTC, datetime

import pyarrow as pa

from include.audiences_to_braze import run_files
from include.audiences_to_braze.snapshot import commit as commit_snapshot
from include.clients.state_store import StateStore
from include.common.errors import PermanentError

log = logging.getLogger(__name__)


def _progress(store: StateStore, run_key: str, chunks: int) -> list[dict | None]:
    keys = [run_files.progress_key(run_key, i) for i in range(chunks)]
    return [store.read_json(k) if store.exists(k) else None for k in keys]


def commit_run(store: StateStore, run_key: str, plan: dict, scans: list[dict]) -> dict:
    """Make this run's snapshots the committed ones; keep rejected users for the next run."""
    marker = run_files.committed_marker(run_key)
    if store.exists(marker):
        return store.read_json(marker)
    if plan["dry_run"]:
        raise PermanentError("a dry run is never committed")
    progress = _progress(store, run_key, plan["chunks"])
    missing = [i for i, p in enumerate(progress) if not p or not p["done"]]
    if missing:
        raise PermanentError(f"chunks {missing} of this run are not delivered; clear their deliver tasks "
                             f"before committing")
    failed = [f for p in progress for f in p["failed"]]
    dead_letter_key = run_files.dead_letter_key(run_key)
    if failed:
        store.write_table(dead_letter_key, pa.table({
            "external_id": pa.array([f["external_id"] for f in failed], pa.string()),
            "add": pa.array([sorted(f["add"]) for f in failed], pa.list_(pa.string())),
            "remove": pa.array([sorted(f["remove"]) for f in failed], pa.list_(pa.string())),
        }))
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    for scan in scans:
        commit_snapshot(store, scan["slug"], run_key, scan["snapshot"], scan["members"], now)
    for key in plan["dead_letters_included"]:
        if key != dead_letter_key:
            store.delete(key)
    result = {"committed_at": now, "audiences": [s["slug"] for s in scans], "dead_lettered": len(failed)}
    store.write_json(marker, result)
    for i in range(plan["chunks"]):  # the payloads are delivered; keep plan, progress and report only
        store.delete(run_files.chunk_key(run_key, i))
    return result


def run_report(store: StateStore, run_key: str, plan: dict) -> dict:
    """Per audience: members, adds, removes, skipped, requests, retries, dead-lettered, data points."""
    progress = [p for p in _progress(store, run_key, plan["chunks"]) if p]
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
