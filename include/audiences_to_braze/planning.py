"""Steps 1-2 of a sync run: scan each audience into a snapshot, then plan the changes.

    snapshot_audience (per audience) -> plan_changes -> delivery.deliver_chunk -> commit.commit_run

Each step writes its result to the state store (`run_files.py`) before returning and first looks
for its own earlier result, so a cleared task resumes instead of redoing work: an audience is
scanned once per run, and the plan is computed once per run (delivery never re-plans under
itself). The plan records the options it was made with (`batch_size`, `attribute`), so every
chunk of the run is delivered in the same shape even if the configuration changed meanwhile.

Users Braze rejected in earlier runs (dead letters) are merged into the plan; this run's own
decision for a user and audience wins over an older one.

Every audience's changes go through the guard (`guard.py`) before the plan is written: its
verdict and numbers are part of plan.json (`guard`, and `audiences.<slug>.guard`), and the DAG
waits for a person's approval before delivering a plan whose guard tripped. A scan that does not
add up never gets this far: the Lytics client raises and no snapshot is written.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field

import pyarrow as pa

from include.audiences_to_braze import run_files
from include.audiences_to_braze.config import SETTING_DEFAULTS, AudienceRef, AudienceSyncConfig
from include.audiences_to_braze.diff import (
    AudienceChanges,
    attribute_batches,
    estimate_data_points,
    merge_changes,
    split_chunks,
)
from include.audiences_to_braze.diff_files import diff_snapshot_files
from include.audiences_to_braze.guard import SAMPLE_REMOVED, GuardLimits, check_audience, describe, verdict
from include.audiences_to_braze.ids import check_ids
from include.audiences_to_braze.snapshot import committed_file, write_snapshot
from include.clients.state_store import StateStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PlanOptions:
    """What shapes a run's plan: the frozen configuration's settings plus the run's params."""

    attribute: str = SETTING_DEFAULTS["attribute"]
    batch_size: int = SETTING_DEFAULTS["batch_size"]
    existing_users: bool = SETTING_DEFAULTS["existing_users"]
    full_resync: bool = False
    dry_run: bool = False
    max_chunks: int = SETTING_DEFAULTS["max_chunks"]
    min_chunk_users: int = SETTING_DEFAULTS["min_chunk_users"]
    guard: GuardLimits = field(default_factory=GuardLimits)
    allow_large_change: bool = False  # run param: a tripped guard is recorded, but the run does not wait
    id_field: str = SETTING_DEFAULTS["id_field"]  # named in the guard's findings
    park_after_runs: int = SETTING_DEFAULTS["park_after_runs"]  # rejected this many runs in a row -> parked

    @classmethod
    def for_run(cls, config: AudienceSyncConfig, params: dict) -> PlanOptions:
        return cls(attribute=config.attribute, batch_size=config.batch_size, existing_users=config.existing_users,
                   full_resync=bool(params.get("full_resync")), dry_run=bool(params.get("dry_run")),
                   max_chunks=config.max_chunks, min_chunk_users=config.min_chunk_users,
                   guard=GuardLimits.from_config(config), allow_large_change=bool(params.get("allow_large_change")),
                   id_field=config.id_field, park_after_runs=config.park_after_runs)


def snapshot_audience(store: StateStore, run_key: str, audience: AudienceRef, scan, *, retire: bool = False) -> dict:
    """Scan one audience (once per run) into a snapshot; `scan(audience_id)` returns a ScanResult.

    Ids Braze can never accept are left out (`ids.check_ids`) and counted with their reasons. A
    retired audience (`retire`) is not scanned: its snapshot is empty, so the plan removes its
    slug from every user it was committed for (through the guard, like any other removal).
    """
    marker = run_files.scan_marker(run_key, audience.slug)
    if store.exists(marker):
        meta = store.read_json(marker)
        log.info("Audience %s already scanned in this run (%d members); reusing the snapshot",
                 audience.slug, meta["members"])
        return meta
    if retire:
        key = write_snapshot(store, audience.slug, run_key, pa.array([], pa.string()))
        meta = {"slug": audience.slug, "snapshot": key, "members": 0, "skipped_no_id": 0, "invalid_ids": 0,
                "invalid_by_reason": {}, "invalid_sample": [], "pages": 0, "scan_retries": 0, "members_seen": 0,
                "total_first": None, "total_last": None, "empty_pages": 0, "retire": True}
        store.write_json(marker, meta)
        log.warning("Audience %s is being retired: not scanned; its slug will be removed from every user it was "
                    "delivered to, and its state deleted when the run commits", audience.slug)
        return meta
    result = scan(audience.id)  # a scan that does not add up raises here: nothing is written
    checked = check_ids(result.ids)
    key = write_snapshot(store, audience.slug, run_key, checked.valid)
    meta = {"slug": audience.slug, "snapshot": key, "members": len(checked.valid),
            "skipped_no_id": result.skipped_no_id, "invalid_ids": checked.invalid,
            "invalid_by_reason": checked.by_reason, "invalid_sample": checked.sample, "pages": result.pages,
            "scan_retries": result.retries, "members_seen": result.members_seen, "total_first": result.total_first,
            "total_last": result.total_last, "empty_pages": result.empty_pages}
    store.write_json(marker, meta)
    log.info("Audience %s: %d members with an id, %d skipped without one (%d pages)", audience.slug,
             meta["members"], meta["skipped_no_id"], meta["pages"])
    if checked.invalid:
        log.warning("Audience %s: %d member id(s) Braze can never accept were left out (%s); e.g. %s",
                    audience.slug, checked.invalid, checked.by_reason,
                    ", ".join(f"{s['id']!r} ({s['reason']})" for s in checked.sample[:3]))
    return meta


def unconfigured_committed_audiences(store: StateStore, configured: set[str]) -> list[str]:
    """Audiences with a committed snapshot that are no longer in the configuration (their slug stays on
    every Braze profile it was delivered to until they are retired)."""
    slugs = set()
    for key in store.list("audiences"):
        parts = key.split("/")
        if len(parts) == 3 and parts[2] == "committed.json":
            slugs.add(parts[1])
    return sorted(slugs - configured)


def _dead_letters(store: StateStore) -> tuple[list[str], pa.Table | None]:
    """Users to re-send: rejected by Braze in earlier runs, or found out of step by a drift check."""
    keys = sorted(k for prefix in (run_files.DEAD_LETTER_PREFIX, run_files.REPAIR_PREFIX)
                  for k in store.list(prefix) if k.endswith(".parquet"))
    tables = [store.read_table(k).select(["external_id", "add", "remove"]) for k in keys]
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
    plan_key = run_files.plan_key(run_key)
    if store.exists(plan_key):
        log.info("This run was already planned; reusing %s", store.path(plan_key))
        return store.read_json(plan_key)
    changes: list[AudienceChanges] = []
    per_audience: dict[str, dict] = {}
    for scan in scans:
        slug = scan["slug"]
        # Streamed block by block: a 100M-member audience diffs in ~0.5 GB (bench/results_l2b_diff_100m.md).
        current = store.parquet_file(scan["snapshot"])
        previous = committed_file(store, slug)
        diff = diff_snapshot_files(slug, current, previous, existing_users=options.existing_users,
                                   full_resync=options.full_resync)
        changes.append(diff)
        guard = check_audience(
            slug, members_before=None if previous is None else previous.metadata.num_rows,
            members_after=current.metadata.num_rows,
            members_read=scan.get("members_seen", scan["members"] + scan["skipped_no_id"]),
            missing_ids=scan["skipped_no_id"] + scan.get("invalid_ids", 0), retire=bool(scan.get("retire")), adds=len(diff.adds), removes=len(diff.removes),
            sample_removed=diff.removes.slice(0, SAMPLE_REMOVED).to_pylist(), total_first=scan.get("total_first"),
            total_last=scan.get("total_last"), id_field=options.id_field, limits=options.guard)
        per_audience[slug] = {"members": scan["members"], "skipped_no_id": scan["skipped_no_id"],
                              "invalid_ids": scan.get("invalid_ids", 0), "retire": bool(scan.get("retire")),
                              "adds": len(diff.adds), "removes": len(diff.removes),
                              "first_run": previous is None, "guard": guard}
    table = merge_changes(changes)
    dead_keys, dead = _dead_letters(store)
    if dead is not None and dead.num_rows:
        log.info("Retrying %d user(s) Braze rejected in earlier runs", dead.num_rows)
        table = _with_dead_letters(table, dead)
    chunks = [] if table.num_rows == 0 else split_chunks(table, options.max_chunks, options.min_chunk_users)
    for i, chunk in enumerate(chunks):
        store.write_table(run_files.chunk_key(run_key, i), chunk)
    plan = {
        "run_key": run_key,
        "chunks": len(chunks),
        "users": table.num_rows,
        "estimated_data_points": estimate_data_points(table),
        "audiences": per_audience,
        "dead_letters_included": dead_keys,
        "dry_run": options.dry_run,
        "payload_file": None,
        "options": asdict(options),
        "guard": verdict({slug: a["guard"] for slug, a in per_audience.items()}, options.guard,
                         allow_large_change=options.allow_large_change, dry_run=options.dry_run),
    }
    if options.dry_run:
        plan["payload_file"] = _write_planned_payloads(store, run_key, table, options)
    store.write_json(plan_key, plan)
    log.info("Plan: %d user(s) to update in %d chunk(s), ~%d data points; %s", plan["users"], plan["chunks"],
             plan["estimated_data_points"],
             {slug: {k: v for k, v in a.items() if k != "guard"} for slug, a in per_audience.items()})
    if plan["guard"]["tripped"]:
        log.warning("The guard tripped (approval: %s):\n%s", plan["guard"]["approval"], describe(plan))
    return plan


def _write_planned_payloads(store: StateStore, run_key: str, table: pa.Table, options: PlanOptions) -> str:
    import orjson

    key = run_files.payloads_key(run_key)
    with store.open_write(key) as fh:
        for batch in attribute_batches(table, options.attribute, options.batch_size):
            fh.write(orjson.dumps({"attributes": batch}) + b"\n")
    return store.path(key)
