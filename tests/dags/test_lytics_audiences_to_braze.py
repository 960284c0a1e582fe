"""End to end: `dag.test()` of lytics_audiences_to_braze against the Lytics and Braze sandboxes.

After every run, the sandbox Braze profiles' `lytics_segments` must equal the Lytics
membership exactly - across membership changes, injected faults, and dry runs.
"""

from __future__ import annotations

import contextlib
import json
from datetime import UTC, datetime

import pytest

from sandbox.braze_server import BrazeSandbox
from sandbox.lytics_members import Audience, braze_id
from sandbox.lytics_server import LyticsSandbox

pytestmark = [pytest.mark.airflow, pytest.mark.sandbox, pytest.mark.slow]

BRAZE_KEY = "braze-l2b-key"
LYTICS_TOKEN = "lytics-l2b-token"
AUDIENCES = [
    Audience("a1", "high_value", "High value", 3_000, seed=1, universe=6_000, missing_id_every=97),
    Audience("a2", "churn_risk", "Churn risk", 2_000, seed=2, universe=6_000),
    Audience("a3", "newsletter", "Newsletter", 1_500, seed=3, universe=6_000),
]


def expected_state(lytics: LyticsSandbox, audiences=AUDIENCES) -> dict[str, frozenset[str]]:
    state: dict[str, set[str]] = {}
    for a in audiences:
        for i in lytics.store.members(a.id):
            if a.has_id(i):
                state.setdefault(braze_id(i), set()).add(a.slug)
    return {k: frozenset(v) for k, v in state.items()}


@contextlib.contextmanager
def wired_sandboxes(tmp_path, monkeypatch, settings: dict, **braze_options):
    """Both sandboxes, the connections and a pipeline file pointing at them, and the pool."""
    with LyticsSandbox(LYTICS_TOKEN, AUDIENCES) as lytics, BrazeSandbox(BRAZE_KEY, **braze_options) as braze:
        monkeypatch.setenv("AIRFLOW_CONN_LYTICS_DEFAULT", json.dumps({"conn_type": "http", "host": lytics.url, "password": LYTICS_TOKEN}))
        monkeypatch.setenv("AIRFLOW_CONN_BRAZE_DEFAULT", json.dumps({"conn_type": "http", "host": braze.url, "password": BRAZE_KEY}))
        section = {"state_url": str(tmp_path / "state"), **settings,
                   "audiences": [{"slug": a.slug, "id": a.id} for a in AUDIENCES]}
        config = tmp_path / "pipeline.yaml"
        config.write_text(json.dumps({"lytics_to_braze": section}))  # JSON is YAML
        monkeypatch.setenv("BRAZE_LYTICS_CONFIG", str(config))
        _ensure_pool()
        yield lytics, braze, tmp_path / "state"


@pytest.fixture
def sandboxes(tmp_path, monkeypatch, airflow_db):
    settings = {"max_chunks": 4, "min_chunk_users": 500, "rate_limit_requests": 400, "rate_limit_seconds": 1.0,
                "delivery_concurrency": 1}
    with wired_sandboxes(tmp_path, monkeypatch, settings, track_rate_limit=400, track_rate_window=1.0) as wired:
        yield wired


def _ensure_pool():
    from airflow.models.pool import Pool

    Pool.create_or_update_pool("braze_api", slots=4, description="Braze REST API", include_deferred=False)


def run_dag(hour: int, **conf):
    from airflow.dag_processing.dagbag import DagBag

    dag = DagBag(dag_folder="dags").get_dag("lytics_audiences_to_braze")
    return dag.test(logical_date=datetime(2026, 11, 23, hour, tzinfo=UTC), run_conf=conf or None)


def states(dag_run) -> dict:
    return {f"{ti.task_id}[{ti.map_index}]": ti.state for ti in dag_run.get_task_instances()}


def report_of(dag_run) -> dict:
    ti = next(t for t in dag_run.get_task_instances() if t.task_id == "report")
    return ti.xcom_pull(task_ids="report")


def test_three_runs_with_membership_changes_leave_braze_exactly_in_sync(sandboxes):
    lytics, braze, state_dir = sandboxes

    first = run_dag(1)
    assert first.state == "success", states(first)
    assert braze.profiles.snapshot() == expected_state(lytics)
    r1 = report_of(first)
    assert r1["audiences"]["high_value"]["adds"] == 3_000 - len([i for i in lytics.store.members("a1") if i % 97 == 96])
    assert r1["audiences"]["high_value"]["skipped_no_id"] > 0
    assert r1["audiences"]["newsletter"]["removes"] == 0

    for seed, audience in enumerate(("a1", "a2", "a3")):
        lytics.store.churn(audience, 0.05, seed=seed)
    lytics.store.remove("a2", list(lytics.store.members("a2"))[:10])
    second = run_dag(2)
    assert second.state == "success", states(second)
    assert braze.profiles.snapshot() == expected_state(lytics)
    r2 = report_of(second)
    assert r2["audiences"]["churn_risk"]["removes"] >= 110  # 5% churn + 10 removed
    assert 0 < r2["users_changed"] < 1_500  # only the changes were sent

    assert not list(state_dir.glob("runs/*/chunks/*.parquet"))  # delivered payloads are not kept
    requests_before = braze.stats["requests"]
    third = run_dag(3)  # nothing changed in Lytics
    assert third.state == "success", states(third)
    assert braze.stats["requests"] == requests_before  # a run that changed nothing sends nothing
    assert braze.profiles.snapshot() == expected_state(lytics)


def test_dry_run_sends_and_commits_nothing(sandboxes):
    lytics, braze, state = sandboxes
    dry = run_dag(1, dry_run=True)
    assert dry.state == "success", states(dry)
    assert braze.stats["requests"] == 0
    report = report_of(dry)
    assert report["dry_run"] and report["users_changed"] > 0
    payloads = [json.loads(line) for line in open(report["payload_file"])]
    assert all(len(p["attributes"]) <= 75 for p in payloads)
    assert sum(len(p["attributes"]) for p in payloads) == report["users_changed"]
    assert not list(state.glob("audiences/*/committed.json"))

    real = run_dag(2)  # the first real run still sees a first run: nothing was committed
    assert real.state == "success", states(real)
    assert report_of(real)["users_changed"] == report["users_changed"]
    assert braze.profiles.snapshot() == expected_state(lytics)


def test_injected_faults_still_end_in_the_exact_state(tmp_path, monkeypatch, airflow_db):
    with wired_sandboxes(tmp_path, monkeypatch, {"min_chunk_users": 1000},
                         track_faults=0.10, fault_seed=5, fault_sleep=0.3) as (lytics, braze, _):
        retries = 0
        for hour in (1, 2):
            dag_run = run_dag(hour)
            assert dag_run.state == "success", states(dag_run)
            assert braze.profiles.snapshot() == expected_state(lytics)
            retries += report_of(dag_run)["retries"]
            lytics.store.churn("a1", 0.1, seed=hour)
        assert braze.stats["faults_injected"] > 0
        assert retries == braze.stats["faults_injected"]  # every fault was seen and retried, nothing lost


def test_rejected_users_are_dead_lettered_and_retried_next_run(sandboxes):
    lytics, braze, state = sandboxes
    members = sorted(braze_id(i) for i in lytics.store.members("a3"))
    rejected = set(members[:7])
    braze.invalid_external_ids = rejected  # Braze answers 201 with errors[] for these objects

    first = run_dag(1)

    assert first.state == "success", states(first)  # partial success is delivered + dead-lettered
    report = report_of(first)
    assert report["dead_lettered"] == 7
    assert report["audiences"]["newsletter"]["dead_lettered"] == 7
    snapshot = braze.profiles.snapshot()
    assert not rejected & set(snapshot)
    assert list(state.glob("dead_letter/pending/*.parquet"))

    braze.invalid_external_ids = set()  # the data problem is fixed on Braze's side
    second = run_dag(2)  # nothing changed in Lytics: only the dead letters are sent

    assert second.state == "success", states(second)
    assert report_of(second)["users_changed"] == 7
    assert braze.profiles.snapshot() == expected_state(lytics)
    assert not list(state.glob("dead_letter/pending/*.parquet"))


def test_full_resync_resends_membership_and_removes_leavers(sandboxes):
    lytics, braze, _ = sandboxes
    assert run_dag(1).state == "success"
    gone = sorted(lytics.store.members("a2"))[:25]
    lytics.store.remove("a2", gone)
    braze.profiles.clear()  # e.g. someone wiped the attribute in Braze
    resync = run_dag(2, full_resync=True)
    assert resync.state == "success", states(resync)
    report = report_of(resync)
    assert report["audiences"]["churn_risk"]["removes"] == 25
    assert report["audiences"]["high_value"]["adds"] == report["audiences"]["high_value"]["members"]
    assert braze.profiles.snapshot() == expected_state(lytics)


def test_a_run_that_cannot_scan_fails_instead_of_reporting_success(sandboxes, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_LYTICS_DEFAULT", json.dumps(
        {"conn_type": "http", "host": sandboxes[0].url, "password": "wrong-token"}))
    dag_run = run_dag(1)
    assert dag_run.state == "failed"
    snapshot = next(ti for ti in dag_run.get_task_instances() if ti.task_id == "snapshot_audience")
    assert snapshot.state == "failed" and snapshot.try_number == 1  # a bad token is not retried
    assert sandboxes[1].stats["requests"] == 0


def test_a_config_edit_during_a_run_does_not_change_that_run(sandboxes, monkeypatch):
    """The configuration is frozen when the run is planned: an edit while the run is under way
    (here: during the Lytics scan) applies to the next run only."""
    from include.clients.lytics.scan import LyticsClient

    lytics, braze, state_dir = sandboxes
    config_path = state_dir.parent / "pipeline.yaml"
    edited = json.loads(config_path.read_text())
    edited["lytics_to_braze"].update({"batch_size": 5, "attribute": "edited_attribute",
                                      "state_url": str(state_dir.parent / "other-state")})
    original_scan = LyticsClient.scan_ids

    def scan_then_edit_the_file(self, *args, **kwargs):
        config_path.write_text(json.dumps(edited))  # someone edits the YAML mid-run
        return original_scan(self, *args, **kwargs)

    monkeypatch.setattr(LyticsClient, "scan_ids", scan_then_edit_the_file)
    run = run_dag(1)
    assert run.state == "success", states(run)
    users = report_of(run)["users_changed"]
    # Sent as planned: 75 objects per request, to the planned attribute, state in the planned store.
    assert braze.stats["requests"] == -(-users // 75)
    assert braze.profiles.snapshot() == expected_state(lytics)
    assert len(list(state_dir.glob("audiences/*/committed.json"))) == len(AUDIENCES)
    assert not (state_dir.parent / "other-state").exists()
