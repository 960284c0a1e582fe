"""Drift check: does Braze still hold what the sync last delivered? Sampled, read back, compared.

The sync only ever sends *changes* against its committed snapshots, so anything else that
writes the Braze array (a CSV import, another integration, someone in the dashboard, a lost
update) leaves Braze out of step until the user's membership changes again. The check, per
configured audience with a committed snapshot (see `snapshot.py`):

1. samples up to `drift_sample_size` members of the committed snapshot (expected: the slug is
   in the user's array) and up to `drift_removed_sample_size` users *recently removed*: in an
   older committed snapshot still listed in the pointer's `recent`, not in the current one
   (expected: the slug is absent). The sample is random but deterministic: seeded with the check's
   key and the slug, so a retried or cleared check reads the same users and a new check others;
2. reads their profiles with `POST /users/export/ids` (<= 50 ids a request, its own rate limit;
   a user sampled for several audiences is read once);
3. compares, and reports per audience: sampled, checked (found in Braze), not found, drifted
   (`missing_slug` + `unexpected_slug`), the drift rate (drifted / checked) and up to 10
   examples with what was expected and what Braze holds.

Audiences never delivered (no commit pointer) are reported as such and skipped.

**Repair** (`repair=True`): the users found out of step are written as one Parquet table
(`external_id`, `add`, `remove`: the dead letters' columns) at `run_files.repair_key(check_key)`.
The next sync run merges it into its plan (its own decision for a user and audience wins) and
deletes it when it commits. Two cases are never repaired:

* **users Braze has no profile for.** Sending them an `add` either does nothing (with
  `update_existing_only`, Braze skips unknown users: the same thing would happen again) or,
  without it, *creates* a profile: for a user whose profile was deleted (e.g. a data-deletion
  request) or whose external id was changed, that would bring back a profile that was removed
  on purpose. They are reported (`not_found`, with examples) for a person to look at.
* **an audience whose committed state is not what Braze may hold right now**: a sync run that
  planned changes after the audience's last commit and has not committed (delivering now, waiting
  for approval, or failed) may have sent part of them, so its users look drifted although the
  sync is still on its way; and an audience committed again while the check ran was compared
  against a stale sample. Queuing those "repairs" could undo the sync's own changes, so the
  report says `repair: skipped (...)`; the next check, after the run commits, repairs what is
  really out of step.

Re-running a check rewrites its own repair file (or deletes it when nothing is left to repair).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from include.audiences_to_braze import run_files
from include.audiences_to_braze.config import SETTING_DEFAULTS, AudienceSyncConfig
from include.audiences_to_braze.diff import CHANGES_SCHEMA, diff_audience, sorted_unique
from include.audiences_to_braze.snapshot import committed, pointer_key, read_snapshot
from include.clients.braze.export_ids import ProfileValues
from include.clients.state_store import StateStore
from include.common.errors import NotFoundError

log = logging.getLogger(__name__)

EXAMPLES = 10  # examples (and not-found ids) kept per audience in the report


@dataclass(frozen=True)
class DriftOptions:
    attribute: str = SETTING_DEFAULTS["attribute"]
    sample_size: int = SETTING_DEFAULTS["drift_sample_size"]
    removed_sample_size: int = SETTING_DEFAULTS["drift_removed_sample_size"]
    repair: bool = SETTING_DEFAULTS["drift_repair"]

    @classmethod
    def from_config(cls, config: AudienceSyncConfig, repair: bool | None = None) -> DriftOptions:
        """The configuration's drift settings; `repair` (a run param) overrides `drift_repair` when given."""
        return cls(attribute=config.attribute, sample_size=config.drift_sample_size,
                   removed_sample_size=config.drift_removed_sample_size,
                   repair=config.drift_repair if repair is None else bool(repair))


def check_drift(store: StateStore, check_key: str, slugs: list[str], read: Callable[[list[str]], ProfileValues],
                options: DriftOptions) -> dict:
    """Check every audience in `slugs`; `read(ids)` returns their attribute's values (BrazeExportIdsClient).

    Returns the report (JSON-able); writes the repair file when `options.repair` and users are out of step.
    """
    seen: dict[str, object] = {}  # external id -> the attribute's value in Braze (read once per check)
    missing: set[str] = set()  # external ids Braze has no profile for
    usage = {"requests": 0, "retries": 0}
    audiences: dict[str, dict] = {}
    repairs: dict[str, dict[str, str]] = {}  # slug -> {external id: "add" | "remove"}
    for slug in slugs:
        pointer = committed(store, slug)
        if pointer is None:
            audiences[slug] = {"status": "never delivered"}
            log.info("Audience %s: never delivered (no committed snapshot); skipped", slug)
            continue
        expect_in, expect_out, counts = _sample(store, slug, pointer, check_key, options)
        unread = [i for i in dict.fromkeys(expect_in + expect_out) if i not in seen and i not in missing]
        if unread:
            found = read(unread)
            seen.update(found.values)
            missing.update(found.not_found)
            usage["requests"] += found.requests
            usage["retries"] += found.retries
        audiences[slug], repairs[slug] = _compare(slug, expect_in, expect_out, seen, missing)
        audiences[slug].update(counts, committed_run=pointer.get("run_key"), committed_at=pointer.get("committed_at"),
                               snapshot=pointer["snapshot"])
        log.info("Audience %s: %s", slug, {k: v for k, v in audiences[slug].items() if k != "examples"})
    report = {"check_key": check_key, "attribute": options.attribute, **usage, "audiences": audiences,
              **_totals(audiences)}
    report.update(_repair(store, check_key, options, audiences, repairs))
    return report


def _sample(store: StateStore, slug: str, pointer: dict, check_key: str,
            options: DriftOptions) -> tuple[list[str], list[str], dict]:
    """Members to find with the slug, recently removed users to find without it, and the counts."""
    current = read_snapshot(store, pointer["snapshot"])
    removed = recently_removed(store, slug, pointer, current)
    expect_in = sample_ids(current, options.sample_size, f"{check_key}/{slug}/members")
    expect_out = sample_ids(removed, options.removed_sample_size, f"{check_key}/{slug}/removed")
    return expect_in, expect_out, {"members": len(current), "recently_removed": len(removed),
                                   "sampled_members": len(expect_in), "sampled_removed": len(expect_out)}


def recently_removed(store: StateStore, slug: str, pointer: dict, current: pa.Array) -> pa.Array:
    """Users in an older committed snapshot of `recent` but not in the current one (sorted, unique)."""
    parts = []
    for key in pointer.get("recent") or []:
        if key == pointer["snapshot"]:
            continue
        try:
            older = read_snapshot(store, key)
        except NotFoundError:
            log.warning("Audience %s: committed snapshot %s is gone; its removed users are not sampled", slug, key)
            continue
        parts.append(diff_audience(slug, current, older).removes)
    return sorted_unique(pa.concat_arrays(parts)) if parts else pa.array([], pa.string())


def sample_ids(ids: pa.Array, k: int, seed: str) -> list[str]:
    """`k` ids drawn without replacement (all of them when there are fewer), the same for the same `seed`."""
    n = len(ids)
    if k <= 0 or n == 0:
        return []
    if k >= n:
        return ids.to_pylist()
    rng = np.random.default_rng(int.from_bytes(hashlib.sha256(seed.encode()).digest()[:8], "big"))
    picks = np.sort(rng.choice(n, size=k, replace=False))
    return ids.take(pa.array(picks)).to_pylist()


def _values(value: object) -> list[str]:
    """The array as Braze holds it, as a list (unset or not an array: empty)."""
    return [str(v) for v in value] if isinstance(value, list) else []


def _compare(slug: str, expect_in: list[str], expect_out: list[str], seen: dict, missing: set) -> tuple[dict, dict]:
    """One audience's findings, and the change that would bring each drifted user back in step."""
    result = {"status": "checked", "sampled": len(expect_in) + len(expect_out), "checked": 0, "not_found": 0,
              "drifted": 0, "missing_slug": 0, "unexpected_slug": 0, "drift_rate": None, "examples": [],
              "not_found_examples": []}
    fixes: dict[str, str] = {}
    for ids, expected in ((expect_in, "present"), (expect_out, "absent")):
        for external_id in ids:
            if external_id in missing:
                result["not_found"] += 1
                if len(result["not_found_examples"]) < EXAMPLES:
                    result["not_found_examples"].append(external_id)
                continue
            result["checked"] += 1
            values = _values(seen.get(external_id))
            if (slug in values) == (expected == "present"):
                continue
            result["drifted"] += 1
            result["missing_slug" if expected == "present" else "unexpected_slug"] += 1
            fixes[external_id] = "add" if expected == "present" else "remove"
            if len(result["examples"]) < EXAMPLES:
                result["examples"].append({"external_id": external_id, "expected": f"{slug} {expected}",
                                           "found": values})
    if result["checked"]:
        result["drift_rate"] = round(result["drifted"] / result["checked"], 6)
    return result, fixes


def _totals(audiences: dict[str, dict]) -> dict:
    checked = [a for a in audiences.values() if a["status"] == "checked"]
    totals = {k: sum(a[k] for a in checked) for k in ("sampled", "checked", "not_found", "drifted")}
    totals["drift_rate"] = round(totals["drifted"] / totals["checked"], 6) if totals["checked"] else None
    totals["never_delivered"] = sorted(s for s, a in audiences.items() if a["status"] == "never delivered")
    return totals


def _repair(store: StateStore, check_key: str, options: DriftOptions, audiences: dict[str, dict],
            repairs: dict[str, dict[str, str]]) -> dict:
    """Queue the drifted users for the next sync run (or say why not); the report's repair fields."""
    key = run_files.repair_key(check_key)
    rows: dict[str, tuple[set[str], set[str]]] = {}
    in_flight = unfinished_sync_runs(store, [s for s, f in repairs.items() if f]) if options.repair else {}
    parked = parked_users(store) if options.repair else set()
    for slug, fixes in repairs.items():
        if not fixes or not options.repair:
            audiences[slug]["repair"] = "off" if fixes else "nothing to repair"
            continue
        reason = in_flight.get(slug) or _recommitted(store, slug, audiences[slug]["snapshot"])
        if reason:
            audiences[slug]["repair"] = f"skipped ({reason})"
            log.warning("Audience %s: %d drifted user(s) NOT queued for repair: %s", slug, len(fixes), reason)
            continue
        given_up = [u for u in fixes if u in parked]
        audiences[slug]["repair"] = f"queued {len(fixes) - len(given_up)} user(s)" + (
            f"; {len(given_up)} parked user(s) left out (Braze keeps rejecting them)" if given_up else "")
        for external_id, op in fixes.items():
            if external_id in parked:
                continue
            rows.setdefault(external_id, (set(), set()))[0 if op == "add" else 1].add(slug)
    if not rows:
        if store.exists(key):  # an earlier try of this check queued users that are no longer to repair
            store.delete(key)
        return {"repair": options.repair, "repair_file": None, "repair_users": 0}
    ids = sorted(rows)
    store.write_table(key, pa.table({
        "external_id": pa.array(ids, pa.string()),
        "add": pa.array([sorted(rows[i][0]) for i in ids], pa.list_(pa.string())),
        "remove": pa.array([sorted(rows[i][1]) for i in ids], pa.list_(pa.string())),
    }, schema=CHANGES_SCHEMA))
    log.info("Queued %d user(s) for repair by the next sync run: %s", len(ids), store.path(key))
    return {"repair": True, "repair_file": store.path(key), "repair_users": len(ids)}


def parked_users(store: StateStore) -> set[str]:
    """Users the sync parked (Braze rejected them run after run): a repair would only be rejected again."""
    prefix = run_files.parked_key("x").rsplit("/", 1)[0]
    return {u for key in store.list(prefix) if key.endswith(".parquet")
            for u in store.read_table(key).column("external_id").to_pylist()}


def unfinished_sync_runs(store: StateStore, slugs: list[str]) -> dict[str, str]:
    """For each of `slugs`: a sync run that planned changes for it after its last commit and has not
    committed (Braze may already hold part of them), as the reason not to repair it now."""
    if not slugs:
        return {}
    committed_at = {slug: store.modified(pointer_key(slug)) for slug in slugs if store.exists(pointer_key(slug))}
    found: dict[str, str] = {}
    for key in store.list("runs"):
        run_key = key.split("/")[1] if key.count("/") == 2 else None
        if run_key is None or key != run_files.plan_key(run_key) or store.exists(run_files.committed_marker(run_key)):
            continue
        planned = store.modified(key)
        plan = store.read_json(key)
        if plan.get("dry_run") or not plan.get("users"):
            continue
        for slug in plan.get("audiences") or {}:
            if slug in committed_at and planned > committed_at[slug] and slug not in found:
                found[slug] = f"sync run {run_key} planned changes after the last commit and has not committed"
    return found


def _recommitted(store: StateStore, slug: str, snapshot: str) -> str | None:
    pointer = committed(store, slug)
    if pointer is None or pointer["snapshot"] != snapshot:
        return "the audience was committed again while the check ran"
    return None
