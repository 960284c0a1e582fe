"""End to end (`dag.test()` against both sandboxes): what would otherwise stay wrong forever.

Ids Braze can never accept are left out and reported, not sent; users Braze keeps rejecting are
parked after `park_after_runs` runs; an audience taken out of the configuration is named, and
retiring it removes its slug from Braze through the guard; old runs' leftovers are pruned; and a
mapped results are read without the `[error] XCom not found` a lazy read past the end logs
(tests/plugins/test_mapped_results.py).
"""

from __future__ import annotations

import json
import os
import time

import pytest

from sandbox.lytics_members import Audience, braze_id
from tests.dags.test_lytics_audiences_to_braze import (
    expected_state,
    report_of,
    run_dag,
    states,
    wired_sandboxes,
)

pytestmark = [pytest.mark.airflow, pytest.mark.sandbox, pytest.mark.slow]

SETTINGS = {"max_chunks": 2, "min_chunk_users": 500, "rate_limit_requests": 400, "rate_limit_seconds": 1.0,
            "delivery_concurrency": 1}
BAD_IDS = Audience("b1", "odd_ids", "Odd ids", 1_200, seed=11, universe=2_000, invalid_id_every=40)
PLAIN = [Audience("p1", "loyal", "Loyal", 600, seed=12, universe=1_500),
         Audience("p2", "trial", "Trial", 400, seed=13, universe=1_500)]


def _bad_members(lytics, audience: Audience) -> list[str]:
    return [audience.bad_id(i) for i in lytics.store.members(audience.id) if audience.bad_id(i)]


def test_ids_braze_can_never_accept_are_reported_and_never_sent(tmp_path, monkeypatch, airflow_db):
    with wired_sandboxes(tmp_path, monkeypatch, SETTINGS, audiences=[BAD_IDS]) as (lytics, braze, state_dir):
        bad = _bad_members(lytics, BAD_IDS)
        assert len(bad) >= 20  # the three kinds: 300 characters, only spaces, a line break

        run = run_dag(1)

        assert run.state == "success", states(run)
        audience = report_of(run)["audiences"]["odd_ids"]
        blank = [b for b in bad if not b.strip()]  # the scan already counts these as "no id"
        assert audience["invalid_ids"] == len(bad) - len(blank) and audience["skipped_no_id"] == len(blank) > 0
        assert audience["members"] == sum(1 for i in lytics.store.members("b1") if BAD_IDS.usable_id(i))
        assert braze.stats["objects_rejected"] == 0  # none of them reached Braze
        assert braze.profiles.snapshot() == expected_state(lytics, [BAD_IDS])
        assert not list(state_dir.glob("dead_letter/**/*.parquet"))  # nothing to retry forever
        scan = json.loads(next(state_dir.glob("runs/*/scans/odd_ids.json")).read_text())
        assert set(scan["invalid_by_reason"]) == {"longer than 255 characters",
                                                  "holds control characters (e.g. NUL, tab, line break)"}
        assert scan["invalid_sample"][0]["reason"] and len(scan["invalid_sample"]) == 10

        second = run_dag(2)  # the same ids again: still not sent, still reported, nothing else changes
        assert second.state == "success", states(second)
        assert report_of(second)["users_changed"] == 0 and report_of(second)["audiences"]["odd_ids"]["invalid_ids"] == len(bad) - len(blank)


def test_users_braze_keeps_rejecting_are_parked_after_park_after_runs(tmp_path, monkeypatch, airflow_db):
    settings = {**SETTINGS, "park_after_runs": 2}
    with wired_sandboxes(tmp_path, monkeypatch, settings, audiences=PLAIN) as (lytics, braze, state_dir):
        rejected = {braze_id(i) for i in sorted(lytics.store.members("p2"))[:4]}
        braze.invalid_external_ids = rejected  # Braze rejects these objects on every request

        first = run_dag(1)
        assert first.state == "success", states(first)
        assert report_of(first)["dead_lettered"] == 4 and report_of(first)["parked"] == 0
        assert len(list(state_dir.glob("dead_letter/pending/*.parquet"))) == 1

        second = run_dag(2)  # retried once more, rejected again: parked
        assert second.state == "success", states(second)
        report = report_of(second)
        assert report["users_changed"] == 4 and report["dead_lettered"] == 4 and report["parked"] == 4
        assert {p["external_id"] for p in report["parked_sample"]} == rejected
        assert not list(state_dir.glob("dead_letter/pending/*.parquet"))
        assert len(list(state_dir.glob("dead_letter/parked/*.parquet"))) == 1

        requests_before = braze.stats["requests"]
        third = run_dag(3)  # nothing changed in Lytics: the parked users are no longer sent
        assert third.state == "success", states(third)
        assert report_of(third)["users_changed"] == 0 and braze.stats["requests"] == requests_before
        assert not rejected & set(braze.profiles.snapshot())


def test_a_retired_audience_is_named_then_removed_from_braze_through_the_guard(tmp_path, monkeypatch, airflow_db):
    with wired_sandboxes(tmp_path, monkeypatch, SETTINGS, audiences=PLAIN) as (lytics, braze, state_dir):
        assert run_dag(1).state == "success"
        trial_members = {u for u, slugs in braze.profiles.snapshot().items() if "trial" in slugs}
        assert len(trial_members) == 400
        config_path = tmp_path / "pipeline.yaml"
        config = json.loads(config_path.read_text())
        config["lytics_to_braze"]["audiences"] = [{"slug": "loyal", "id": "p1"}]  # trial taken out
        config_path.write_text(json.dumps(config))

        second = run_dag(2)
        assert second.state == "success", states(second)
        assert report_of(second)["unconfigured_audiences"] == ["trial"]  # named in the run's report
        assert {u for u, slugs in braze.profiles.snapshot().items() if "trial" in slugs} == trial_members  # untouched

        third = run_dag(3, retire=["trial"], allow_large_change=True)  # 100% removed: the guard trips

        assert third.state == "success", states(third)
        report = report_of(third)
        assert report["guard"]["tripped_audiences"] == ["trial"]
        assert report["audiences"]["trial"]["removes"] == 400 and report["retired"] == ["trial"]
        assert not any("trial" in slugs for slugs in braze.profiles.snapshot().values())
        assert braze.profiles.snapshot() == expected_state(lytics, PLAIN[:1])
        assert not [p for p in (state_dir / "audiences" / "trial").rglob("*") if p.is_file()]  # its state is deleted
        fourth = run_dag(4)
        assert fourth.state == "success", states(fourth)
        assert report_of(fourth)["unconfigured_audiences"] == []


def test_retiring_an_audience_still_listed_fails_before_anything_happens(tmp_path, monkeypatch, airflow_db):
    with wired_sandboxes(tmp_path, monkeypatch, SETTINGS, audiences=PLAIN) as (_, braze, state_dir):
        run = run_dag(1, retire=["trial"])
        assert run.state == "failed"
        assert states(run)["plan_audiences[-1]"] == "failed"
        assert braze.stats["requests"] == 0 and not list(state_dir.glob("audiences/*/committed.json"))


def test_old_leftovers_are_pruned_and_committed_snapshots_kept(tmp_path, monkeypatch, airflow_db):
    settings = {**SETTINGS, "prune_after_days": 1}
    with wired_sandboxes(tmp_path, monkeypatch, settings, audiences=PLAIN) as (lytics, braze, state_dir):
        dry = run_dag(1, dry_run=True)  # leaves a plan, chunks, payloads and uncommitted snapshots
        assert dry.state == "success", states(dry)
        dry_dir = next(state_dir.glob("runs/*"))
        dry_snapshots = sorted(state_dir.glob("audiences/*/snapshots/*.parquet"))
        assert len(dry_snapshots) == 2 and list(dry_dir.glob("chunks/*.parquet"))
        two_days_ago = time.time() - 2 * 86_400
        for path in [*dry_dir.rglob("*"), *dry_snapshots]:
            os.utime(path, (two_days_ago, two_days_ago))

        real = run_dag(2)

        assert real.state == "success", states(real)
        assert not dry_dir.exists() or not any(p.is_file() for p in dry_dir.rglob("*"))
        assert not any(p.exists() for p in dry_snapshots)
        pointers = [json.loads(p.read_text()) for p in state_dir.glob("audiences/*/committed.json")]
        assert len(pointers) == 2 and all((state_dir / p["snapshot"]).exists() for p in pointers)
        assert braze.profiles.snapshot() == expected_state(lytics, PLAIN)
