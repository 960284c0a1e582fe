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
from include.audiences_to_braze.snapshot import audience_prefix, pointer_key
from include.audiences_to_braze.snapshot import commit as commit_snapshot
from include.clients.state_store import StateStore
from include.common.errors import PermanentError

log = logging.getLogger(__name__)


def _progress(store: StateStore, run_key: str, chunks: int) -> list[dict | None]:
    keys = [run_files.progress_key(run_key, i) for i in range(chunks)]
    return [store.read_json(k) if store.exists(k) else None for k in keys]


def _earlier_attempts(store: StateStore, keys: list[str]) -> dict[str, int]:
    """Runs that already got each dead-lettered user rejected (files written before `attempts` count as 1)."""
    attempts: dict[str, int] = {}
    for key in keys:
        if not key.startswith(run_files.DEAD_LETTER_PREFIX + "/") or not store.exists(key):
            continue
        table = store.read_table(key)
        counts = (table.column("attempts").to_pylist() if "attempts" in table.column_names
                  else [1] * table.num_rows)
        for user, n in zip(table.column("external_id").to_pylist(), counts, strict=True):
            attempts[user] = max(attempts.get(user, 0), int(n or 1))
    return attempts


def _rejections_table(rows: list[dict]) -> pa.Table:
    return pa.table({
        "external_id": pa.array([f["external_id"] for f in rows], pa.string()),
        "add": pa.array([sorted(f["add"]) for f in rows], pa.list_(pa.string())),
        "remove": pa.array([sorted(f["remove"]) for f in rows], pa.list_(pa.string())),
        "attempts": pa.array([f["attempts"] for f in rows], pa.int32()),
        "error": pa.array([str(f.get("error") or "") for f in rows], pa.string()),
    })


def _retire(store: StateStore, slug: str) -> int:
    """Delete every state file of a retired audience (its removes are delivered); files deleted."""
    keys = store.list(audience_prefix(slug))
    for key in keys:
        if key != pointer_key(slug):
            store.delete(key)
    store.delete(pointer_key(slug))  # last: until it is gone, a re-run still sees what to remove
    return len(keys)


def commit_run(store: StateStore, run_key: str, plan: dict, scans: list[dict]) -> dict:
    """Make this run's snapshots the committed ones; keep rejected users for the next run (or park them).

    A user Braze rejected is re-sent by the next runs; once `park_after_runs` runs in a row got it
    rejected it is *parked* (`dead_letter/parked/`), reported, and no longer sent. A retired
    audience's state is deleted instead of committed.
    """
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
    park_after = int(plan.get("options", {}).get("park_after_runs") or 0)
    earlier = _earlier_attempts(store, plan["dead_letters_included"]) if failed else {}
    retry, parked = [], []
    for f in failed:
        f = {**f, "attempts": earlier.get(f["external_id"], 0) + 1}
        (parked if park_after and f["attempts"] >= park_after else retry).append(f)
    dead_letter_key = run_files.dead_letter_key(run_key)
    if retry:
        store.write_table(dead_letter_key, _rejections_table(retry))
    if parked:
        store.write_table(run_files.parked_key(run_key), _rejections_table(parked))
        log.warning("%d user(s) rejected by Braze in %d runs in a row are parked (no longer re-sent), see %s; "
                    "e.g. %s", len(parked), park_after, store.path(run_files.parked_key(run_key)),
                    ", ".join(f"{f['external_id']!r}: {f.get('error')}" for f in parked[:3]))
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    retired = []
    for scan in scans:
        if scan.get("retire"):
            _retire(store, scan["slug"])
            retired.append(scan["slug"])
        else:
            commit_snapshot(store, scan["slug"], run_key, scan["snapshot"], scan["members"], now)
    for key in plan["dead_letters_included"]:
        if key != dead_letter_key:
            store.delete(key)
    result = {"committed_at": now, "audiences": [s["slug"] for s in scans if not s.get("retire")],
              "retired": retired, "dead_lettered": len(retry), "parked": len(parked),
              "parked_sample": [{"external_id": f["external_id"], "error": f.get("error")} for f in parked[:10]]}
    store.write_json(marker, result)
    for i in range(plan["chunks"]):  # the payloads are delivered; keep plan, progress and report only
        store.delete(run_files.chunk_key(run_key, i))
    if retired:
        log.warning("Retired %s: the slug was removed from its members in Braze and its state deleted", retired)
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
    committed = store.read_json(run_files.committed_marker(run_key)) \
        if store.exists(run_files.committed_marker(run_key)) else {}
    return {
        "run_key": run_key,
        "dry_run": plan["dry_run"],
        "users_changed": plan["users"],
        "chunks": plan["chunks"],
        "requests": sum(p["requests"] for p in progress),
        "retries": sum(p["retries"] for p in progress),
        "dead_lettered": sum(len(p["failed"]) for p in progress),  # rejected by Braze in this run
        "parked": committed.get("parked", 0),  # of those, rejected too many runs in a row: no longer sent
        "parked_sample": committed.get("parked_sample", []),
        "retired": committed.get("retired", []),
        "estimated_data_points": plan["estimated_data_points"],
        "payload_file": plan["payload_file"],
        "audiences": audiences,
    }
