"""End to end: `dag.test()` of lytics_audiences_to_braze against the Lytics and Braze sandboxes.

After every run, the sandbox Braze profiles' `lytics_segments` must equal the Lytics
membership exactly - across membership changes, injected faults, and dry runs.

The guard's tests (at the end) answer the approval the way the UI does: through Airflow's HITL
REST API (`PATCH .../taskInstances/approve_changes/-1/hitlDetails`) on a real `airflow
api-server` sharing the test's metadata DB, logged in as an on-call user of the simple auth
manager. `dag.test()` must run in the main thread (the task runner installs signal handlers), so
the answering is done by a watcher thread beside it; the same watcher fails any run that waits
for an approval nobody expected, or runs past a deadline, so no test can hang (dag.test() of a
waiting approval otherwise polls forever and ignores SIGTERM).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

import pytest
import requests

from include.audiences_to_braze.run_files import run_key_for
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
            if a.usable_id(i):
                state.setdefault(braze_id(i), set()).add(a.slug)
    return {k: frozenset(v) for k, v in state.items()}


@contextlib.contextmanager
def wired_sandboxes(tmp_path, monkeypatch, settings: dict, audiences=AUDIENCES, **braze_options):
    """Both sandboxes, the connections and a pipeline file pointing at them, and the pool."""
    with LyticsSandbox(LYTICS_TOKEN, audiences) as lytics, BrazeSandbox(BRAZE_KEY, **braze_options) as braze:
        monkeypatch.setenv("AIRFLOW_CONN_LYTICS_DEFAULT", json.dumps({"conn_type": "http", "host": lytics.url, "password": LYTICS_TOKEN}))
        monkeypatch.setenv("AIRFLOW_CONN_BRAZE_DEFAULT", json.dumps({"conn_type": "http", "host": braze.url, "password": BRAZE_KEY}))
        section = {"state_url": str(tmp_path / "state"), **settings,
                   "audiences": [{"slug": a.slug, "id": a.id} for a in audiences]}
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


DAG_ID = "lytics_audiences_to_braze"


def run_dag(hour: int, *, on_approval: Callable[[str], None] | None = None, deadline: float = 150, **conf):
    """`dag.test()` one run, watched: `on_approval(run_id)` is called once approve_changes waits
    (it must answer); without it, a waiting approval fails the test (and the run) at once."""
    from airflow.dag_processing.dagbag import DagBag

    dag = DagBag(dag_folder="dags").get_dag(DAG_ID)
    with RunWatch(on_approval, deadline) as watch:
        dag_run = dag.test(logical_date=datetime(2026, 11, 23, hour, tzinfo=UTC), run_conf=conf or None)
    assert watch.asked == (on_approval is not None), "the run did not wait for an approval" if on_approval else ""
    return dag_run


class RunWatch(threading.Thread):
    """Beside a dag.test() in the main thread: answers (or refuses) a waiting approval, and fails the
    run when it passes its deadline, so that dag.test() always returns."""

    def __init__(self, on_approval, deadline: float):
        super().__init__(daemon=True, name="run-watch")
        self.on_approval, self.deadline = on_approval, time.monotonic() + deadline
        self.stop, self.errors, self.asked = threading.Event(), [], False

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.join(30)
        if self.errors:
            raise self.errors[0]

    def run(self):
        while not self.stop.wait(0.3):
            try:
                if time.monotonic() > self.deadline:
                    raise TimeoutError("the DAG run passed the test's deadline")
                waiting = awaiting_approval()
                if waiting is None or self.asked:
                    continue
                self.asked = True
                if self.on_approval is None:
                    raise AssertionError(f"unexpected approval request in {waiting}: the guard tripped")
                self.on_approval(waiting)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread
                self.errors.append(exc)
                fail_running_runs()
                return


def awaiting_approval() -> str | None:
    """The run id whose approve_changes waits for input, if any."""
    from airflow.models.dagrun import DagRun
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        return session.scalar(select(TaskInstance.run_id).join(
            DagRun, (DagRun.dag_id == TaskInstance.dag_id) & (DagRun.run_id == TaskInstance.run_id)).where(
            TaskInstance.dag_id == DAG_ID, TaskInstance.task_id == "approve_changes",
            TaskInstance.state == "awaiting_input", DagRun.state == "running"))


def fail_running_runs() -> None:
    """Mark running runs of the DAG failed: dag.test()'s loop ends at its next turn."""
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from airflow.utils.state import DagRunState
    from sqlalchemy import select

    with create_session() as session:
        for dag_run in session.scalars(select(DagRun).where(DagRun.dag_id == DAG_ID,
                                                            DagRun.state == DagRunState.RUNNING)):
            dag_run.set_state(DagRunState.FAILED)


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


def test_a_misspelt_dry_run_param_fails_the_first_task_and_sends_nothing(sandboxes):
    lytics, braze, state = sandboxes
    dag_run = run_dag(1, dryrun=True)  # meant dry_run: Airflow itself would accept and ignore it
    assert dag_run.state == "failed"
    plan = next(ti for ti in dag_run.get_task_instances() if ti.task_id == "plan_audiences")
    assert plan.state == "failed" and plan.try_number == 1  # not retried: a wrong name stays wrong
    assert braze.stats["requests"] == 0
    assert not list(state.glob("audiences/*/committed.json"))


def test_state_in_a_bucket_named_by_a_connection_keeps_two_runs_in_sync(tmp_path, monkeypatch, airflow_db,
                                                                       s3_bucket):
    """state_url `s3://<conn_id>@bucket/prefix`: the S3 credentials and endpoint come from that Airflow
    connection (as every worker of a deployment has it), none from AWS_* / FSSPEC_* variables."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "FSSPEC_S3_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AIRFLOW_CONN_TEAM_STATE", json.dumps({
        "conn_type": "aws", "login": s3_bucket.access_key, "password": s3_bucket.secret_key,
        "extra": {"endpoint_url": s3_bucket.endpoint_url, "region_name": s3_bucket.region}}))
    settings = {"max_chunks": 2, "min_chunk_users": 500, "rate_limit_requests": 400, "rate_limit_seconds": 1.0,
                "state_url": f"s3://team_state@{s3_bucket.name}/l2b"}
    with wired_sandboxes(tmp_path, monkeypatch, settings, track_rate_limit=400, track_rate_window=1.0) as wired:
        lytics, braze, _ = wired
        first = run_dag(1)
        assert first.state == "success", states(first)
        assert braze.profiles.snapshot() == expected_state(lytics)
        lytics.store.churn("a2", 0.05, seed=7)
        second = run_dag(2)
        assert second.state == "success", states(second)
        assert braze.profiles.snapshot() == expected_state(lytics)
        assert report_of(second)["audiences"]["churn_risk"]["removes"] > 0
    committed = [k for k in s3_bucket.keys("l2b/audiences/") if k.endswith("/committed.json")]
    assert sorted(committed) == [f"l2b/audiences/{slug}/committed.json"
                                 for slug in ("churn_risk", "high_value", "newsletter")]
    assert not (tmp_path / "state").exists()  # nothing fell back to a local directory


def test_injected_faults_still_end_in_the_exact_state(tmp_path, monkeypatch, airflow_db):
    with wired_sandboxes(tmp_path, monkeypatch, {"min_chunk_users": 1000},
                         track_faults=0.10, fault_seed=5, fault_sleep=0.3) as (lytics, braze, _):
        retries = 0
        for hour in (1, 2):
            dag_run = run_dag(hour)
            assert dag_run.state == "success", states(dag_run)
            assert braze.profiles.snapshot() == expected_state(lytics)
            retries += report_of(dag_run)["retries"]
            lytics.store.churn("a1", 0.05, seed=hour)  # 10% would (rightly) ask for approval
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


# ==================================================================================================
# The guard: a run whose changes look like a broken source waits for the on-call person.
# ==================================================================================================
GUARDED = [
    Audience("g1", "loyal", "Loyal", 400, seed=21, universe=1_000),
    Audience("g2", "trial", "Trial", 300, seed=22, universe=1_000),
]
GUARD_SETTINGS = {"max_chunks": 1, "min_chunk_users": 5_000, "delivery_concurrency": 1,
                  "rate_limit_requests": 1_000, "rate_limit_seconds": 1.0}
ONCALL, ONCALL_PASSWORD = "oncall", "on-call-test-password"


class AirflowApi:
    """`airflow api-server` (core API only) on a free port, sharing the tests' metadata DB, with one
    user `oncall` (role admin) of the simple auth manager; started at once, waited for on first use."""

    def __init__(self, home: Path):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        passwords = home / "passwords.json"
        passwords.write_text(json.dumps({ONCALL: ONCALL_PASSWORD}))
        env = {**os.environ, "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{ONCALL}:admin",
               "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
               "AIRFLOW__API__BASE_URL": self.url}
        self.log = home / "api-server.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "airflow", "api-server", "--host", "127.0.0.1", "--port", str(port),
                 "--apps", "core", "--workers", "1"],
                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.session = requests.Session()
        self._ready = False

    def ready(self) -> AirflowApi:
        """Wait for the server, then log in as the UI does (POST /auth/token) and keep the token."""
        deadline = time.monotonic() + 90
        while not self._ready:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"airflow api-server did not come up: {self.log.read_text()[-3000:]}")
            with contextlib.suppress(requests.ConnectionError):
                if requests.get(f"{self.url}/api/v2/monitor/health", timeout=5).status_code == 200:
                    token = requests.post(f"{self.url}/auth/token", timeout=10,
                                          json={"username": ONCALL, "password": ONCALL_PASSWORD})
                    assert token.status_code == 201, token.text
                    self.session.headers["Authorization"] = f"Bearer {token.json()['access_token']}"
                    self._ready = True
                    break
            time.sleep(0.3)
        return self

    def _hitl_url(self, run_id: str) -> str:
        return (f"{self.url}/api/v2/dags/{DAG_ID}/dagRuns/{quote(run_id, safe='')}/taskInstances/"
                f"approve_changes/-1/hitlDetails")

    def pending(self) -> list[dict]:
        """What "Required actions" lists: requests of this DAG without a response."""
        r = self.ready().session.get(f"{self.url}/api/v2/dags/{DAG_ID}/dagRuns/~/hitlDetails",
                                     params={"response_received": "false"}, timeout=30)
        assert r.status_code == 200, r.text
        return r.json()["hitl_details"]

    def detail(self, run_id: str) -> dict:
        r = self.ready().session.get(self._hitl_url(run_id), timeout=30)
        assert r.status_code == 200, r.text
        return r.json()

    def respond(self, run_id: str, option: str) -> dict:
        """The UI's Approve / Reject button."""
        r = self.ready().session.patch(self._hitl_url(run_id), json={"chosen_options": [option], "params_input": {}},
                                       timeout=30)
        assert r.status_code == 200, r.text
        return r.json()

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # our own process group (start_new_session)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


@pytest.fixture(scope="module")
def airflow_api(airflow_db, tmp_path_factory):
    api = AirflowApi(tmp_path_factory.mktemp("api-server"))
    try:
        yield api
    finally:
        api.stop()


@pytest.fixture
def guarded(tmp_path, monkeypatch, airflow_db):
    with wired_sandboxes(tmp_path, monkeypatch, GUARD_SETTINGS, audiences=GUARDED) as wired:
        yield wired


def committed_pointers(state_dir: Path) -> dict:
    return {p.parent.name: json.loads(p.read_text()) for p in state_dir.glob("audiences/*/committed.json")}


def task_states(run_id: str) -> dict:
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        rows = session.execute(select(TaskInstance.task_id, TaskInstance.map_index, TaskInstance.state).where(
            TaskInstance.dag_id == DAG_ID, TaskInstance.run_id == run_id)).all()
    return {f"{t}[{m}]": s for t, m, s in rows}


def nothing_happened_yet(braze, state_dir, requests_before: int, pointers_before: dict, run_id: str) -> None:
    """While the approval waits: no request reached Braze, nothing is committed, nothing delivered."""
    assert braze.stats["requests"] == requests_before
    assert committed_pointers(state_dir) == pointers_before
    started = {k: v for k, v in task_states(run_id).items()
               if k.split("[")[0] in ("deliver_chunk", "commit", "report") and v is not None}
    assert started == {}, started


def test_a_renamed_id_field_waits_for_approval_and_a_rejection_sends_and_commits_nothing(guarded, airflow_api, capfd):
    lytics, braze, state_dir = guarded
    assert run_dag(1).state == "success"
    profiles, pointers, sent = braze.profiles.snapshot(), committed_pointers(state_dir), braze.stats["requests"]
    lytics.rename_user_field("braze_id", "braze_external_id")  # someone renamed the field in Lytics
    asked: dict = {}

    def reject(run_id):
        nothing_happened_yet(braze, state_dir, sent, pointers, run_id)
        asked["pending"] = airflow_api.pending()
        asked["detail"] = airflow_api.detail(run_id)
        asked["answer"] = airflow_api.respond(run_id, "Reject")

    run = run_dag(2, on_approval=reject)

    assert run.state == "failed"
    result = states(run)
    assert result["approve_changes[-1]"] == "failed" and result["report[-1]"] == "failed"
    assert result["commit[-1]"] == "upstream_failed"
    assert {v for k, v in result.items() if k.startswith("deliver_chunk")} == {"upstream_failed"}
    assert "Rejected by oncall: nothing was sent to Braze and nothing is committed" in "".join(capfd.readouterr())
    assert braze.stats["requests"] == sent and braze.profiles.snapshot() == profiles  # nothing sent
    assert committed_pointers(state_dir) == pointers  # nothing committed
    # What the on-call person saw under Required actions, and who answered.
    assert [(p["task_instance"]["dag_run_id"], p["task_instance"]["state"]) for p in asked["pending"]] == [
        (run.run_id, "awaiting_input")]
    detail = asked["detail"]
    assert detail["subject"].startswith("Lytics → Braze: unusual changes in loyal, trial (700 removes)")
    assert "| **loyal** | 400 | 0 | 0 | 400 | 400 | 400 |" in detail["body"]
    assert "400 of 400 members read (100%) have no 'braze_id'" in detail["body"]
    assert "would remove 300 of the 300 committed members (100%" in detail["body"]
    assert detail["options"] == ["Approve", "Reject"] and detail["response_received"] is False
    assert asked["answer"]["chosen_options"] == ["Reject"] and asked["answer"]["responded_by"]["name"] == ONCALL
    plan = json.loads((state_dir / "runs" / run_key_for(run.run_id) / "plan.json").read_text())
    assert plan["guard"]["tripped_audiences"] == ["loyal", "trial"] and plan["guard"]["approval"] == "required"
    assert len(plan["audiences"]["loyal"]["guard"]["sample_removed"]) == 10


def test_an_audience_emptied_at_the_source_is_shown_by_a_dry_run_and_sent_once_approved(guarded, airflow_api):
    lytics, braze, state_dir = guarded
    assert run_dag(1).state == "success"
    pointers, sent = committed_pointers(state_dir), braze.stats["requests"]
    lytics.store.remove("g2", range(1_000))  # the trial audience was emptied (its definition was edited)

    dry = run_dag(2, dry_run=True)  # a dry run never waits; its report shows the verdict
    assert dry.state == "success", states(dry)
    guard = report_of(dry)["guard"]
    assert (guard["tripped_audiences"], guard["approval"]) == (["trial"], "skipped: dry run")
    assert braze.stats["requests"] == sent

    def approve(run_id):
        nothing_happened_yet(braze, state_dir, sent, pointers, run_id)
        assert "| **trial** | 300 | 0 | 0 | 300 | 0 | 0 |" in airflow_api.detail(run_id)["body"]
        airflow_api.respond(run_id, "Approve")

    run = run_dag(3, on_approval=approve)

    assert run.state == "success", states(run)
    assert braze.profiles.snapshot() == expected_state(lytics, GUARDED)  # trial removed everywhere
    report = report_of(run)
    assert report["audiences"]["trial"]["removes"] == 300 and report["guard"]["approval"] == "required"
    assert committed_pointers(state_dir)["trial"]["members"] == 0
    approval = next(t for t in run.get_task_instances() if t.task_id == "approve_changes")
    assert approval.xcom_pull(task_ids="approve_changes")["chosen_options"] == ["Approve"]


def test_empty_scan_pages_no_longer_remove_anyone_and_a_short_scan_fails_before_planning(guarded, capfd):
    lytics, braze, state_dir = guarded
    assert run_dag(1).state == "success"
    pointers, sent = committed_pointers(state_dir), braze.stats["requests"]

    lytics.empty_pages(3, after=1)  # every scan: after its first page, 3 pages of "data": [] with a _next
    run = run_dag(2)  # used to end each scan there: 300 of 400 loyal members "left" and were removed
    assert run.state == "success", states(run)
    assert [a["removes"] for a in report_of(run)["audiences"].values()] == [0, 0]
    assert states(run)["approve_changes[-1]"] == "skipped"
    assert braze.stats["requests"] == sent  # nothing changed, nothing sent

    pointers = committed_pointers(state_dir)
    lytics.empty_pages(0)
    lytics.end_scans_after(2, audience_id="g1")  # loyal's scan ends after 200 of its 400 members
    short = run_dag(3)
    assert short.state == "failed"
    result = states(short)
    assert (result["snapshot_audience[0]"], result["snapshot_audience[1]"]) == ("failed", "success")
    assert result["plan_changes[-1]"] == "upstream_failed"
    failed = next(t for t in short.get_task_instances() if t.task_id == "snapshot_audience" and t.map_index == 0)
    assert failed.try_number == 1  # not retried: the on-call person reads why
    assert ("scan of Lytics audience 'g1' does not add up: read 200 members but Lytics reported a total of 400; "
            "at most 10 difference is accepted") in "".join(capfd.readouterr())  # the task's log
    assert braze.stats["requests"] == sent and committed_pointers(state_dir) == pointers
    run_dir = state_dir / "runs" / run_key_for(short.run_id)
    assert not (run_dir / "scans" / "loyal.json").exists() and not (run_dir / "plan.json").exists()
    assert not list(state_dir.glob(f"audiences/loyal/snapshots/{run_key_for(short.run_id)}*"))  # never written


def test_allow_large_change_does_not_wait_and_an_unanswered_approval_times_out(tmp_path, monkeypatch, airflow_db,
                                                                              capfd):
    audiences = [Audience("m1", "partial_ids", "Partial ids", 500, seed=31, universe=1_000, missing_id_every=8)]
    settings = {**GUARD_SETTINGS, "approval_timeout_hours": 0.001}  # 3.6 s
    with wired_sandboxes(tmp_path, monkeypatch, settings, audiences=audiences) as (lytics, braze, state_dir):
        first = run_dag(1, allow_large_change=True)  # 12.5% of the members lack the id: a known state
        assert first.state == "success", states(first)
        guard = report_of(first)["guard"]
        assert (guard["tripped_audiences"], guard["approval"]) == (["partial_ids"], "skipped: allow_large_change")
        assert braze.profiles.snapshot() == expected_state(lytics, audiences)
        pointers, sent = committed_pointers(state_dir), braze.stats["requests"]
        lytics.store.churn("m1", 0.02, seed=1)

        def let_it_time_out(run_id):
            from airflow.jobs.job import Job
            from airflow.jobs.scheduler_job_runner import SchedulerJobRunner

            nothing_happened_yet(braze, state_dir, sent, pointers, run_id)
            time.sleep(4)  # past approval_timeout_hours; the scheduler's sweep resolves it:
            SchedulerJobRunner(job=Job(), executors=[]).check_awaiting_input_timeouts()

        second = run_dag(2, on_approval=let_it_time_out)
        assert second.state == "failed"
        result = states(second)
        assert result["approve_changes[-1]"] == "failed" and result["commit[-1]"] == "upstream_failed"
        assert braze.stats["requests"] == sent and committed_pointers(state_dir) == pointers
        assert "No approval: The Human-in-the-loop response timeout has passed" in "".join(capfd.readouterr())
