"""The drift check against the sandboxes over real HTTP: the sync delivers (Lytics scan -> plan ->
/users/track -> commit), another writer changes Braze behind its back (/users/track, as a real one
would), the check finds exactly those users, and its repair file puts them right through the next
sync run."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from include.audiences_to_braze import run_files
from include.audiences_to_braze.commit import commit_run
from include.audiences_to_braze.config import AudienceRef
from include.audiences_to_braze.delivery import deliver_chunk
from include.audiences_to_braze.drift import DriftOptions, check_drift, sample_ids
from include.audiences_to_braze.planning import PlanOptions, plan_changes, snapshot_audience
from include.audiences_to_braze.snapshot import committed, committed_ids, read_snapshot
from include.clients.braze.export_ids import BrazeExportIdsClient
from include.clients.braze.track import BrazeTrackClient
from include.clients.lytics.scan import LyticsClient
from include.clients.state_store import StateStore
from include.common.rate_limit import RateLimiter
from sandbox.braze_server import BrazeSandbox
from sandbox.lytics_members import Audience, braze_id
from sandbox.lytics_server import LyticsSandbox
from tests.braze_other_writer import other_writer

pytestmark = pytest.mark.sandbox

BRAZE_KEY = "drift-braze-key"
LYTICS_TOKEN = "drift-lytics-token"
SEG = "lytics_segments"
AUDIENCES = [
    Audience("a1", "high_value", "High value", 600, seed=1, universe=1_500),
    Audience("a2", "churn_risk", "Churn risk", 400, seed=2, universe=1_500),
]
REJECTED = {braze_id(i) for i in range(0, 1_500, 97)}  # Braze refuses these: never created
ALL = DriftOptions(sample_size=100_000, removed_sample_size=100_000)  # every member and removed user


class Sync:
    """The sync pipeline's core steps, as the DAG runs them, against both sandboxes."""

    def __init__(self, store, lytics, braze):
        self.store, self.lytics, self.braze = store, LyticsClient(lytics.url, LYTICS_TOKEN), braze
        self.track = BrazeTrackClient(braze.url, BRAZE_KEY, limiter=RateLimiter(100_000, 1.0))

    def plan(self, run_key: str) -> tuple[dict, list[dict]]:
        scans = [snapshot_audience(self.store, run_key, AudienceRef(a.slug, a.id),
                                   lambda audience_id: self.lytics.scan_ids(audience_id, "braze_id"))
                 for a in AUDIENCES]
        return plan_changes(self.store, run_key, scans, PlanOptions()), scans

    def run(self, run_key: str) -> dict:
        plan, scans = self.plan(run_key)
        self.deliver_and_commit(run_key, plan, scans)
        return plan

    def deliver_and_commit(self, run_key: str, plan: dict, scans: list[dict]) -> None:
        for chunk in range(plan["chunks"]):
            deliver_chunk(self.store, run_key, chunk, self.track.track, PlanOptions())
        commit_run(self.store, run_key, plan, scans)


@pytest.fixture
def world(tmp_path):
    """Two runs delivered (the second after churn, so there are recently removed users)."""
    with LyticsSandbox(LYTICS_TOKEN, AUDIENCES) as lytics, \
            BrazeSandbox(BRAZE_KEY, invalid_external_ids=REJECTED, export_ids_rate_limit=100_000) as braze:
        store = StateStore(str(tmp_path / "state"))
        sync = Sync(store, lytics, braze)
        sync.run("run1")
        lytics.store.churn("a1", 0.10, seed=1)
        lytics.store.churn("a2", 0.10, seed=2)
        sync.run("run2")
        reader = BrazeExportIdsClient(braze.url, BRAZE_KEY, rate_limit_per_minute=1_000_000)
        yield store, lytics, braze, sync, lambda ids: reader.custom_attribute(ids, SEG)


def expected_state(lytics) -> dict[str, frozenset[str]]:
    state: dict[str, set[str]] = {}
    for a in AUDIENCES:
        for i in lytics.store.members(a.id):
            if braze_id(i) not in REJECTED:
                state.setdefault(braze_id(i), set()).add(a.slug)
    return {k: frozenset(v) for k, v in state.items()}


def removed_since_last_commit(store, slug) -> list[str]:
    pointer = committed(store, slug)
    current = set(read_snapshot(store, pointer["snapshot"]).to_pylist())
    return sorted(set(read_snapshot(store, pointer["recent"][1]).to_pylist()) - current)


def test_no_drift_after_a_clean_sync(world):
    store, lytics, braze, _, read = world
    assert braze.profiles.snapshot() == expected_state(lytics)
    report = check_drift(store, "check-clean", ["high_value", "churn_risk"], read, DriftOptions(repair=True))
    for slug, members in (("high_value", 600), ("churn_risk", 400)):
        a = report["audiences"][slug]
        removed = round(0.10 * members)
        assert (a["members"], a["recently_removed"]) == (members, removed)
        assert (a["sampled_members"], a["sampled_removed"]) == (members, min(removed, 200))
        rejected = sum(1 for i in read_snapshot(store, a["snapshot"]).to_pylist() if i in REJECTED)
        rejected_removed = sum(1 for i in removed_since_last_commit(store, slug) if i in REJECTED)
        assert a["not_found"] == rejected + rejected_removed > 0  # never created in Braze: reported, not drift
        assert a["checked"] == a["sampled"] - a["not_found"]
        assert (a["drifted"], a["drift_rate"], a["examples"], a["repair"]) == (0, 0.0, [], "nothing to repair")
    assert report["drift_rate"] == 0.0 and report["repair_file"] is None
    assert not store.list(run_files.REPAIR_PREFIX)


def test_drift_behind_the_pipelines_back_is_found_and_repaired_by_the_next_sync(world):
    store, lytics, braze, sync, read = world
    members = [i for i in committed_ids(store, "high_value").to_pylist() if i not in REJECTED]
    removed = [i for i in removed_since_last_commit(store, "high_value") if i not in REJECTED]
    churn_members = [i for i in committed_ids(store, "churn_risk").to_pylist() if i not in REJECTED]
    lost = members[10:15]  # another writer drops the slug from 5 members ...
    revived = removed[:3]  # ... puts it back on 3 users who left ...
    other_writer(braze.url, BRAZE_KEY, {**{i: {"remove": ["high_value"]} for i in lost},
                                        **{i: {"add": ["high_value"]} for i in revived}})
    untouched_hv = set(members) | set(removed_since_last_commit(store, "high_value"))
    wiped = [i for i in churn_members if i not in untouched_hv][:2]  # ... and replaces two arrays (a plain list)
    other_writer(braze.url, BRAZE_KEY, {i: {"set": ["imported"]} for i in wiped})

    report = check_drift(store, "check-1", ["high_value", "churn_risk", "newsletter"], read, ALL)
    hv, cr = report["audiences"]["high_value"], report["audiences"]["churn_risk"]
    assert (hv["drifted"], hv["missing_slug"], hv["unexpected_slug"]) == (8, 5, 3)
    assert hv["drift_rate"] == round(8 / hv["checked"], 6) and hv["repair"] == "off"
    examples = {e["external_id"]: e for e in hv["examples"]}
    assert set(examples) == set(lost) | set(revived)
    assert examples[revived[0]]["expected"] == "high_value absent" and "high_value" in examples[revived[0]]["found"]
    assert examples[lost[0]]["expected"] == "high_value present" and "high_value" not in examples[lost[0]]["found"]
    assert (cr["drifted"], cr["missing_slug"], cr["unexpected_slug"]) == (2, 2, 0)
    assert {e["external_id"]: e["found"] for e in cr["examples"]} == {i: ["imported"] for i in wiped}
    assert report["audiences"]["newsletter"] == {"status": "never delivered"}
    assert report["never_delivered"] == ["newsletter"]
    assert report["drifted"] == hv["drifted"] + cr["drifted"] and report["repair_file"] is None
    assert not store.list(run_files.REPAIR_PREFIX)  # repair is off

    repaired = check_drift(store, "check-2", ["high_value", "churn_risk"], read,
                           DriftOptions(sample_size=100_000, removed_sample_size=100_000, repair=True))
    assert repaired["drifted"] == report["drifted"] and repaired["repair_users"] == 5 + 3 + 2
    table = store.read_table(run_files.repair_key("check-2"))
    assert table.schema == pa.schema([("external_id", pa.string()), ("add", pa.list_(pa.string())),
                                      ("remove", pa.list_(pa.string()))])
    rows = {r["external_id"]: (r["add"], r["remove"]) for r in table.to_pylist()}
    assert rows == {**{i: (["high_value"], []) for i in lost}, **{i: ([], ["high_value"]) for i in revived},
                    **{i: (["churn_risk"], []) for i in wiped}}

    plan, scans = sync.plan("run3")  # nothing changed in Lytics: the plan is the repair (and the dead letters)
    assert plan["dead_letters_included"][-1] == run_files.repair_key("check-2")
    planned = {r["external_id"]: (r["add"], r["remove"]) for chunk in range(plan["chunks"])
               for r in store.read_table(run_files.chunk_key("run3", chunk)).to_pylist()}
    assert {i: planned[i] for i in rows} == rows and set(planned) - set(rows) <= REJECTED
    sync.deliver_and_commit("run3", plan, scans)
    assert not store.exists(run_files.repair_key("check-2"))  # deleted by the commit
    state = braze.profiles.snapshot()
    for i in wiped:  # the other writer's own value stays: the sync only adds and removes its slugs
        assert state[i] == expected_state(lytics)[i] | {"imported"}
        state[i] = state[i] - {"imported"}
    assert state == expected_state(lytics)

    after = check_drift(store, "check-3", ["high_value", "churn_risk"], read,
                        DriftOptions(sample_size=100_000, removed_sample_size=100_000, repair=True))
    assert after["drifted"] == 0 and after["repair_file"] is None


def test_repair_waits_while_a_sync_run_has_uncommitted_changes(world):
    store, lytics, braze, sync, read = world
    lytics.store.churn("a1", 0.05, seed=3)
    plan, scans = sync.plan("run3")  # planned, not delivered yet
    for chunk in range(plan["chunks"]):  # delivered, not committed: Braze is ahead of the committed state
        deliver_chunk(store, "run3", chunk, sync.track.track, PlanOptions())
    options = DriftOptions(sample_size=100_000, removed_sample_size=100_000, repair=True)
    report = check_drift(store, "check-in-flight", ["high_value", "churn_risk"], read, options)
    hv = report["audiences"]["high_value"]
    changed = {r["external_id"] for chunk in range(plan["chunks"])
               for r in store.read_table(run_files.chunk_key("run3", chunk)).to_pylist()
               if "high_value" in r["add"] + r["remove"]}
    sampled = set(committed_ids(store, "high_value").to_pylist()) | set(removed_since_last_commit(store, "high_value"))
    assert hv["drifted"] == len((changed & sampled) - REJECTED) >= 30  # the run's own changes, not drift
    assert hv["repair"].startswith("skipped (sync run run3 planned changes")
    assert report["audiences"]["churn_risk"]["repair"] == "nothing to repair"
    assert report["repair_file"] is None and not store.list(run_files.REPAIR_PREFIX)

    commit_run(store, "run3", plan, scans)
    clean = check_drift(store, "check-in-flight", ["high_value", "churn_risk"], read, options)  # the same check, cleared
    assert clean["drifted"] == 0 and clean["repair_file"] is None


def test_a_rerun_of_a_check_rewrites_or_removes_its_own_repair_file(world):
    store, _, braze, _, read = world
    member = next(i for i in committed_ids(store, "high_value").to_pylist() if i not in REJECTED)
    other_writer(braze.url, BRAZE_KEY, {member: {"remove": ["high_value"]}})
    options = DriftOptions(sample_size=100_000, removed_sample_size=0, repair=True)
    assert check_drift(store, "check-x", ["high_value"], read, options)["repair_users"] == 1
    other_writer(braze.url, BRAZE_KEY, {member: {"add": ["high_value"]}})  # fixed by hand meanwhile
    again = check_drift(store, "check-x", ["high_value"], read, options)
    assert again["repair_users"] == 0 and not store.exists(run_files.repair_key("check-x"))


def test_samples_are_random_but_the_same_for_the_same_check():
    ids = pa.array([f"u{i:08d}" for i in range(100_000)])
    first = sample_ids(ids, 1_000, "check-a/high_value/members")
    assert first == sample_ids(ids, 1_000, "check-a/high_value/members") and len(set(first)) == 1_000
    assert first == sorted(first)  # in snapshot order
    other = sample_ids(ids, 1_000, "check-b/high_value/members")
    assert len(set(first) & set(other)) < 100  # another check reads (mostly) other users
    positions = np.array([int(i[1:]) for i in first])
    assert positions.min() < 5_000 and positions.max() > 95_000  # spread over the whole audience
    assert sample_ids(ids[:10], 1_000, "x") == ids[:10].to_pylist() and sample_ids(ids, 0, "x") == []


def test_the_check_reads_at_most_the_sample_in_requests_of_50(world):
    store, _, braze, _, read = world
    before = braze.export_ids.stats["answered"]
    report = check_drift(store, "check-small", ["high_value", "churn_risk"], read,
                         DriftOptions(sample_size=120, removed_sample_size=30))
    for slug in ("high_value", "churn_risk"):
        a = report["audiences"][slug]
        assert (a["sampled_members"], a["sampled_removed"]) == (120, 30)
    distinct = report["audiences"]["high_value"]["sampled"] + report["audiences"]["churn_risk"]["sampled"]
    assert braze.export_ids.stats["answered"] - before == report["requests"] <= -(-distinct // 50) + 1
    assert braze.export_ids.stats["ids_asked"] <= distinct


def test_parked_users_are_reported_as_drift_but_not_queued_for_repair(world):
    store, _, braze, _, read = world
    members = [i for i in committed_ids(store, "high_value").to_pylist() if i not in REJECTED]
    lost = members[20:24]
    other_writer(braze.url, BRAZE_KEY, {i: {"remove": ["high_value"]} for i in lost})
    # The sync gave up on two of them (Braze rejected them run after run): a repair would be rejected again.
    store.write_table(run_files.parked_key("run0"), pa.table({"external_id": pa.array(lost[:2], pa.string())}))

    report = check_drift(store, "check-p", ["high_value"], read,
                         DriftOptions(sample_size=100_000, removed_sample_size=100_000, repair=True))

    assert report["audiences"]["high_value"]["drifted"] == 4
    assert report["audiences"]["high_value"]["repair"] == "queued 2 user(s); 2 parked user(s) left out " \
                                                         "(Braze keeps rejecting them)"
    queued = store.read_table(run_files.repair_key("check-p")).column("external_id").to_pylist()
    assert queued == sorted(lost[2:])
