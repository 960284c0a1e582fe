"""The guard: when a run's planned changes look like a broken source, it must stop before sending.

Each case is one of the green runs that destroyed data before the guard existed: an id field
renamed in Lytics, a scan that came back short, an audience emptied at the source.
"""

from __future__ import annotations

import textwrap
from dataclasses import replace

import pyarrow as pa
import pytest

from include.audiences_to_braze import run_files
from include.audiences_to_braze.config import load_audience_config
from include.audiences_to_braze.guard import (
    GuardLimits,
    approval_body,
    approval_subject,
    check_audience,
    describe,
    verdict,
)
from include.audiences_to_braze.planning import PlanOptions, plan_changes
from include.audiences_to_braze.snapshot import commit, write_snapshot
from include.clients.state_store import StateStore
from include.common.errors import ConfigError


def check(**overrides) -> dict:
    numbers = {"members_before": 1_000, "members_after": 1_000, "members_read": 1_000, "missing_ids": 0,
               "adds": 20, "removes": 20, "sample_removed": [], "total_first": 1_000, "total_last": 1_000}
    numbers.update(overrides)
    return check_audience("vip", **numbers)


# ------------------------------------------------------------------ one audience


def test_everyday_churn_passes_with_its_numbers_recorded():
    g = check(adds=50, removes=80, sample_removed=["u1", "u2"])
    assert g == {"slug": "vip", "retire": False, "tripped": False, "reasons": [], "members_before": 1_000, "members_after": 1_000,
                 "members_read": 1_000, "lytics_total": 1_000, "adds": 50, "removes": 80, "missing_ids": 0,
                 "remove_share": 0.08, "missing_id_share": 0.0, "sample_removed": ["u1", "u2"]}


def test_removes_above_the_share_of_committed_members_trip_it():
    assert not check(removes=100)["tripped"]  # exactly 10%: allowed
    g = check(removes=101, members_after=899, total_first=899, total_last=899, members_read=899)
    assert g["tripped"] and g["reasons"] == [
        "would remove 101 of the 1,000 committed members (10.1%; max_remove_share is 10%)"]
    assert not check(removes=300, limits=GuardLimits(max_remove_share=0.5))["tripped"]


def test_an_audience_emptied_at_the_source_trips_it():
    g = check(members_after=0, members_read=0, total_first=0, total_last=0, adds=0, removes=1_000,
              sample_removed=[f"u{i:03d}" for i in range(1_000)])
    assert g["tripped"] and g["remove_share"] == 1.0
    assert g["sample_removed"] == [f"u{i:03d}" for i in range(10)]  # at most 10 shown


def test_a_renamed_id_field_trips_it_even_on_a_first_run():
    # Every member read, none with the id: nothing to add, everything committed would be removed.
    renamed = check(members_after=0, missing_ids=1_000, adds=0, removes=1_000)
    assert renamed["tripped"] and len(renamed["reasons"]) == 2
    assert "1,000 of 1,000 members read (100%) have no 'braze_id'" in renamed["reasons"][1]
    first_run = check(members_before=None, members_after=0, missing_ids=1_000, adds=0, removes=0)
    assert first_run["tripped"] and first_run["remove_share"] is None
    assert first_run["reasons"] == [renamed["reasons"][1]]


def test_a_few_members_without_an_id_are_normal():
    assert not check(missing_ids=50)["tripped"]  # 5%: allowed
    assert check(missing_ids=51)["tripped"]
    assert not check(missing_ids=200, limits=GuardLimits(max_missing_id_share=0.25))["tripped"]


def test_a_scan_short_of_its_total_trips_it():
    short = check(members_read=500, members_after=500, removes=0)
    assert short["tripped"] and short["reasons"] == [
        "the scan read 500 members but Lytics reported a total of 1,000; at most 10 difference is accepted "
        "(max(1% of the total, 10 members)): it is probably incomplete"]
    assert not check(members_read=990, members_after=990)["tripped"]  # within max(1%, 10)
    assert not check(total_first=None, total_last=None, members_read=3)["tripped"]  # no total: nothing to compare


def test_no_committed_members_and_an_empty_audience_do_not_divide_by_zero():
    assert not check(members_before=0, members_after=0, members_read=0, total_first=0, total_last=0,
                     adds=0, removes=0)["tripped"]


# ------------------------------------------------------------------ the run's verdict and the request


def test_verdict_says_whether_the_run_waits():
    ok, bad = check(), check(removes=500)
    limits = GuardLimits()
    assert verdict({"a": ok}, limits)["approval"] == "not needed"
    run = verdict({"a": ok, "b": bad}, limits)
    assert (run["tripped"], run["tripped_audiences"], run["approval"]) == (True, ["b"], "required")
    assert run["limits"] == {"max_remove_share": 0.1, "max_missing_id_share": 0.05,
                             "scan_total_tolerance_share": 0.01, "scan_total_tolerance_members": 10}
    assert verdict({"b": bad}, limits, dry_run=True)["approval"] == "skipped: dry run"
    allowed = verdict({"b": bad}, limits, allow_large_change=True)
    assert allowed["approval"] == "skipped: allow_large_change" and allowed["tripped"]


def test_the_approval_request_shows_the_numbers():
    bad = check(members_after=0, members_read=0, total_first=0, total_last=0, adds=0, removes=1_000,
                sample_removed=["u007", "u042"])
    plan = {"audiences": {"vip": {"guard": bad}, "newsletter": {"guard": check()}}, "users": 1_020,
            "estimated_data_points": 1_040, "guard": verdict({"vip": bad, "newsletter": check()}, GuardLimits())}
    body = approval_body(plan, timeout_hours=12, plan_path="/state/runs/r1/plan.json", id_field="braze_id")
    assert "| **vip** | 1,000 | 0 | 0 | 1,000 | 0 | 0 |" in body
    assert "would remove 1,000 of the 1,000 committed members (100%" in body
    assert "`u007`, `u042`" in body and "newsletter" in body and "1,020 user(s)" in body
    assert "**Approve**" in body and "**Reject**" in body and "12 h" in body and "/state/runs/r1/plan.json" in body
    assert approval_subject(plan) == ("Lytics → Braze: unusual changes in vip (1,000 removes) - approve before "
                                      "anything is sent")
    assert describe(plan).startswith("vip: would remove 1,000")


# ------------------------------------------------------------------ configuration


def test_guard_settings_default_and_are_checked(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("lytics_to_braze:\n  audiences: [vip]\n")
    cfg = load_audience_config(path)
    assert (cfg.max_remove_share, cfg.max_missing_id_share, cfg.approval_timeout_hours) == (0.10, 0.05, 12.0)
    assert (cfg.scan_total_tolerance_share, cfg.scan_total_tolerance_members) == (0.01, 10)
    assert GuardLimits.from_config(cfg) == GuardLimits()
    path.write_text(textwrap.dedent("""
        lytics_to_braze:
          max_remove_share: 1.5
          max_missing_id_share: -0.1
          scan_total_tolerance_share: 1
          scan_total_tolerance_members: 2.5
          approval_timeout_hours: 0
          audiences: [vip]
    """))
    with pytest.raises(ConfigError) as err:
        load_audience_config(path)
    for key in ("max_remove_share: must be a share from 0 to 1", "max_missing_id_share: must be a share",
                "scan_total_tolerance_share: must be a share from 0 to below 1",
                "scan_total_tolerance_members: must be a whole number", "approval_timeout_hours: must be a number"):
        assert f"lytics_to_braze.{key}" in str(err.value)


# ------------------------------------------------------------------ in the plan


def _scan_meta(store, slug, run_key, ids, *, missing=0, total=None):
    key = write_snapshot(store, slug, run_key, pa.array(ids, pa.string()))
    seen = len(ids) + missing
    meta = {"slug": slug, "snapshot": key, "members": len(ids), "skipped_no_id": missing, "pages": 1,
            "scan_retries": 0, "members_seen": seen, "total_first": seen if total is None else total,
            "total_last": seen if total is None else total, "empty_pages": 0}
    store.write_json(run_files.scan_marker(run_key, slug), meta)
    return meta


def test_the_plan_records_the_verdict_per_audience_and_for_the_run(tmp_path):
    store = StateStore(str(tmp_path))
    members = [f"u{i:04d}" for i in range(200)]
    for slug in ("vip", "news"):
        meta = _scan_meta(store, slug, "r1", members)
        commit(store, slug, "r1", meta["snapshot"], len(members), "2026-11-23T00:00:00Z")
    # r2: vip emptied at the source; news loses 5 (2.5%): only vip trips.
    scans = [_scan_meta(store, "vip", "r2", []), _scan_meta(store, "news", "r2", members[5:])]
    plan = plan_changes(store, "r2", scans, PlanOptions())
    assert plan["guard"]["tripped_audiences"] == ["vip"] and plan["guard"]["approval"] == "required"
    vip = plan["audiences"]["vip"]["guard"]
    assert (vip["members_before"], vip["members_after"], vip["adds"], vip["removes"]) == (200, 0, 0, 200)
    assert vip["sample_removed"] == members[:10]
    assert not plan["audiences"]["news"]["guard"]["tripped"]
    assert store.read_json(run_files.plan_key("r2"))["guard"] == plan["guard"]  # in plan.json

    renamed = [_scan_meta(store, "vip", "r3", [], missing=200), _scan_meta(store, "news", "r3", members)]
    options = replace(PlanOptions(), allow_large_change=True)
    plan = plan_changes(store, "r3", renamed, options)
    assert plan["guard"]["approval"] == "skipped: allow_large_change"
    assert "have no 'braze_id'" in plan["audiences"]["vip"]["guard"]["reasons"][1]

    dry = plan_changes(store, "r4", [_scan_meta(store, "vip", "r4", []), _scan_meta(store, "news", "r4", members)],
                       replace(PlanOptions(), dry_run=True))
    assert dry["guard"]["approval"] == "skipped: dry run" and dry["guard"]["tripped"]
