"""`lytics_audiences_drift_check`: it imports, and one `dag.test()` run against the sandboxes finds the
drift another writer introduced behind the sync's back (and queues its repair when asked)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from include.audiences_to_braze import run_files
from include.audiences_to_braze.commit import commit_run
from include.audiences_to_braze.config import AudienceRef
from include.audiences_to_braze.delivery import deliver_chunk
from include.audiences_to_braze.planning import PlanOptions, plan_changes, snapshot_audience
from include.audiences_to_braze.snapshot import committed_ids
from include.clients.braze.track import BrazeTrackClient
from include.clients.lytics.scan import LyticsClient
from include.clients.state_store import StateStore
from include.common.rate_limit import RateLimiter
from sandbox.braze_server import BrazeSandbox
from sandbox.lytics_members import Audience
from sandbox.lytics_server import LyticsSandbox
from tests.braze_other_writer import other_writer

pytestmark = [pytest.mark.airflow, pytest.mark.sandbox]

DAG_ID = "lytics_audiences_drift_check"
BRAZE_KEY = "drift-dag-braze-key"
LYTICS_TOKEN = "drift-dag-lytics-token"
AUDIENCES = [
    Audience("a1", "high_value", "High value", 300, seed=1, universe=900),
    Audience("a2", "churn_risk", "Churn risk", 200, seed=2, universe=900),
]


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder="dags")


def test_the_dag_imports_and_is_shaped_as_documented(dagbag):
    assert not {f: e for f, e in dagbag.import_errors.items() if "drift" in f}
    dag = dagbag.dags[DAG_ID]
    assert (dag.max_active_runs, dag.catchup) == (1, False)
    assert set(dag.params) == {"audiences", "repair"} and dag.params["repair"] is None
    assert [t.task_id for t in dag.topological_sort()] == ["plan_check", "check_drift"]
    assert all(t.retries >= 1 for t in dag.tasks)
    for words in ("What it does", "drift rate", "Repair", "Safe to clear"):
        assert words in dag.doc_md


def _deliver_once(state_dir, lytics, braze) -> StateStore:
    """One sync run through the core steps (the sync DAG is tested on its own): committed state + Braze."""
    store = StateStore(str(state_dir))
    scan = LyticsClient(lytics.url, LYTICS_TOKEN)
    scans = [snapshot_audience(store, "sync1", AudienceRef(a.slug, a.id), lambda i: scan.scan_ids(i, "braze_id"))
             for a in AUDIENCES]
    plan = plan_changes(store, "sync1", scans, PlanOptions())
    track = BrazeTrackClient(braze.url, BRAZE_KEY, limiter=RateLimiter(100_000, 1.0))
    for chunk in range(plan["chunks"]):
        deliver_chunk(store, "sync1", chunk, track.track, PlanOptions())
    commit_run(store, "sync1", plan, scans)
    return store


def test_a_run_finds_injected_drift_and_queues_its_repair(tmp_path, monkeypatch, airflow_db, dagbag):
    with LyticsSandbox(LYTICS_TOKEN, AUDIENCES) as lytics, BrazeSandbox(BRAZE_KEY) as braze:
        monkeypatch.setenv("AIRFLOW_CONN_BRAZE_DEFAULT",
                           json.dumps({"conn_type": "http", "host": braze.url, "password": BRAZE_KEY}))
        section = {"state_url": str(tmp_path / "state"), "drift_sample_size": 1_000,
                   "drift_rate_limit_per_minute": 6_000,
                   "audiences": [{"slug": a.slug, "id": a.id} for a in AUDIENCES] + [{"slug": "newsletter"}]}
        config = tmp_path / "pipeline.yaml"
        config.write_text(json.dumps({"lytics_to_braze": section}))  # JSON is YAML
        monkeypatch.setenv("BRAZE_LYTICS_CONFIG", str(config))
        store = _deliver_once(tmp_path / "state", lytics, braze)
        lost = committed_ids(store, "high_value").to_pylist()[:7]
        other_writer(braze.url, BRAZE_KEY, {i: {"remove": ["high_value"]} for i in lost})

        dag_run = dagbag.dags[DAG_ID].test(logical_date=datetime(2026, 11, 24, tzinfo=UTC),
                                           run_conf={"repair": True})

        states = {ti.task_id: ti.state for ti in dag_run.get_task_instances()}
        assert dag_run.state == "success", states
        ti = next(t for t in dag_run.get_task_instances() if t.task_id == "check_drift")
        report = ti.xcom_pull(task_ids="check_drift")
        hv = report["audiences"]["high_value"]
        assert (hv["sampled_members"], hv["checked"], hv["drifted"], hv["missing_slug"]) == (300, 300, 7, 7)
        assert sorted(e["external_id"] for e in hv["examples"]) == sorted(lost)
        assert report["audiences"]["churn_risk"]["drifted"] == 0
        assert report["audiences"]["newsletter"] == {"status": "never delivered"}
        key = run_files.repair_key(run_files.run_key_for(dag_run.run_id))
        assert report["repair_file"] == store.path(key)
        assert {r["external_id"]: r["add"] for r in store.read_table(key).to_pylist()} == {
            i: ["high_value"] for i in lost}
