"""Failure notifications (braze_lytics.notifiers): a failed task posts one Slack-compatible message to
the `braze_lytics_alerts` webhook - tested with a real HTTP receiver on loopback and real `dag.test()`
runs of a small DAG built on `default_args()` - and never gets in the pipeline's way: no connection,
a failing or hanging receiver, nothing of the webhook URL in the logs. Also: every task of the real
DAGs has the callback, retries with exponential backoff and an execution timeout."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import quote

import pytest

from braze_lytics.notifiers.message import (
    MAX_ERROR_CHARS,
    FailedTask,
    cut,
    error_text,
    log_url,
    slack_payload,
)

pytestmark = pytest.mark.airflow

REPO = Path(__file__).resolve().parents[2]
TOKEN = "xoxwebhook7Qm2ZpT4sVb9"  # the secret part of the webhook URL
API_SECRET = "notifier-test-api-secret-31337"
BASE_URL = "https://airflow.example.com/"


# --------------------------------------------------------------------------------------------------
# A real webhook receiver on loopback
# --------------------------------------------------------------------------------------------------
class Receiver:
    """`http.server` in a thread. `mode`: "ok" (200), "fail" (500) or "hang" (reads, never answers)."""

    def __init__(self, mode: str = "ok") -> None:
        self.mode = mode
        self.requests: list[dict] = []
        self.release = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                receiver.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                if receiver.mode == "hang":
                    receiver.release.wait(30)
                    return
                code = 200 if receiver.mode == "ok" else 500
                answer = b"ok" if code == 200 else b"internal_error"
                self.send_response(code)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args):  # keep the test output quiet
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/services/T0001/B0002/{TOKEN}"

    def payloads(self) -> list[dict]:
        return [json.loads(r["body"]) for r in self.requests]

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    with Receiver() as r:
        yield r


def _set_webhook(monkeypatch, url: str, **extra) -> None:
    conn = {"conn_type": "http", "password": url}
    if extra:
        conn["extra"] = extra
    monkeypatch.setenv("AIRFLOW_CONN_BRAZE_LYTICS_ALERTS", json.dumps(conn))


# --------------------------------------------------------------------------------------------------
# dag.test() of a small DAG built on default_args(): one mapped task fails for one of its items
# --------------------------------------------------------------------------------------------------
def _failing_dag(dag_id: str):
    from airflow.sdk import DAG, BaseHook, get_current_context, task

    from braze_lytics.dag_defaults import default_args

    with DAG(dag_id, schedule=None, start_date=datetime(2026, 1, 1), catchup=False,
             default_args=default_args()) as dag:

        @task(map_index_template="{{ audience_label }}")
        def sync(name: str) -> str:
            get_current_context()["audience_label"] = name
            if name == "churn_risk":
                password = BaseHook.get_connection("notifier_test_api").password  # registers the mask
                raise ValueError(f"Lytics said 503 for audience {name} (key {password}); retry later")
            return name

        sync.expand(name=["high_value", "churn_risk"])
    return dag


def _run(dag, day: int):
    """`dag.test()` of a DAG that lives in no DAG file: serialized to the metadata DB first, as the
    DAG processor would (dag.test() only syncs the configured bundle, i.e. dags/)."""
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.dagbag import DagBag, sync_bag_to_db

    DagBundlesManager().sync_bundles_to_db()
    bag = DagBag(dag_folder=os.devnull)
    bag.bag_dag(dag)
    sync_bag_to_db(bag, "dags-folder", None)
    return dag.test(logical_date=datetime(2026, 11, day, tzinfo=UTC))


@pytest.fixture
def api_connection(monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_NOTIFIER_TEST_API",
                       json.dumps({"conn_type": "http", "host": "https://api.example", "password": API_SECRET}))
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", BASE_URL)


def _captured(capfd, caplog) -> str:
    out, err = capfd.readouterr()
    return out + err + caplog.text


def test_a_failed_task_posts_one_slack_message_naming_it(airflow_db, receiver, api_connection, monkeypatch,
                                                         capfd, caplog):
    _set_webhook(monkeypatch, receiver.url)
    caplog.set_level("DEBUG")  # whatever logs the request at DEBUG must not show the URL
    dag_run = _run(_failing_dag("notifier_fails_once"), 1)

    states = {(ti.task_id, ti.map_index): ti.state for ti in dag_run.get_task_instances()}
    assert dag_run.state == "failed", states
    assert states == {("sync", 0): "success", ("sync", 1): "failed"}
    # retries=1 from default_args (tests/conftest.py): the first failure is a retry, not a notification
    assert len(receiver.requests) == 1, receiver.payloads()
    request = receiver.requests[0]
    assert request["path"] == f"/services/T0001/B0002/{TOKEN}"
    assert request["headers"]["Content-Type"].startswith("application/json")
    payload = json.loads(request["body"])

    run_id = dag_run.run_id
    link = f"https://airflow.example.com/dags/notifier_fails_once/runs/{quote(run_id, safe='')}" \
           f"/tasks/sync/mapped/1?try_number=2"
    # Slack's shape: text + blocks of known types, within Slack's limits
    assert set(payload) == {"text", "blocks"} and isinstance(payload["text"], str)
    assert [b["type"] for b in payload["blocks"]] == ["header", "section", "section", "section"]
    assert len(payload["blocks"][0]["text"]["text"]) <= 150
    assert all(len(b.get("text", {}).get("text", "")) <= 3000 for b in payload["blocks"])
    assert len(payload["blocks"][1]["fields"]) <= 10
    fields = {f["text"].split("\n", 1)[0].strip("*"): f["text"].split("\n", 1)[1] for f in payload["blocks"][1]["fields"]}
    assert fields["DAG"] == "notifier_fails_once"
    assert fields["Task"] == "sync"
    assert fields["Mapped"] == "churn_risk (map index 1)"
    assert fields["Run"] == run_id
    assert fields["Try"] == "2"
    assert "notifier_fails_once.sync [churn_risk]" in payload["text"]
    assert link in payload["text"] and f"<{link}|" in payload["blocks"][3]["text"]["text"]
    error = payload["blocks"][2]["text"]["text"]
    assert "ValueError: Lytics said 503 for audience churn_risk (key ***); retry later" in error
    assert API_SECRET not in request["body"].decode()  # redacted by Airflow's secrets masker

    logs = _captured(capfd, caplog)
    assert "Failure notification sent to http://127.0.0.1:" in logs
    assert TOKEN not in logs


def test_without_the_connection_nothing_is_posted_and_the_run_fails_as_usual(airflow_db, receiver, api_connection,
                                                                            monkeypatch, capfd, caplog):
    monkeypatch.delenv("AIRFLOW_CONN_BRAZE_LYTICS_ALERTS", raising=False)
    dag_run = _run(_failing_dag("notifier_no_connection"), 2)

    assert dag_run.state == "failed"
    assert receiver.requests == []
    logs = _captured(capfd, caplog)
    assert "no connection 'braze_lytics_alerts' is configured" in logs
    assert "Failed to run task callback" not in logs and "Failure notification not sent" not in logs


def test_a_receiver_answering_500_is_retried_once_and_only_logged(airflow_db, api_connection, monkeypatch,
                                                                  capfd, caplog):
    with Receiver("fail") as failing:
        _set_webhook(monkeypatch, failing.url)
        dag_run = _run(_failing_dag("notifier_receiver_500"), 3)

    assert dag_run.state == "failed"
    assert len(failing.requests) == 2  # one retry at most
    logs = _captured(capfd, caplog)
    assert "not delivered after 2 attempt(s): HTTP 500 (internal_error)" in logs
    assert "Failed to run task callback" not in logs
    assert TOKEN not in logs


# --------------------------------------------------------------------------------------------------
# The callback called directly: hanging / unreachable receivers, connection shapes
# --------------------------------------------------------------------------------------------------
def _context(**ti_fields):
    ti = SimpleNamespace(dag_id="d", task_id="t", run_id="manual__2026-11-24T00:00:00+00:00", map_index=-1,
                         rendered_map_index=None, try_number=1)
    for key, value in ti_fields.items():
        setattr(ti, key, value)
    return {"ti": ti, "exception": RuntimeError("boom")}


def test_a_hanging_receiver_costs_one_timeout_and_nothing_raises(monkeypatch, capfd, caplog):
    from braze_lytics.notifiers import WebhookFailureNotifier

    with Receiver("hang") as hanging:
        _set_webhook(monkeypatch, hanging.url, timeout=1)
        started = time.monotonic()
        WebhookFailureNotifier(base_url=BASE_URL)(_context())
        elapsed = time.monotonic() - started

    assert elapsed < 5, elapsed  # 1 s timeout; a read timeout is not retried (it may have been delivered)
    assert len(hanging.requests) == 1
    logs = _captured(capfd, caplog)
    assert "no answer within 1 s (read timeout)" in logs
    assert TOKEN not in logs


def test_an_unreachable_receiver_is_tried_twice_and_nothing_raises(monkeypatch, capfd, caplog):
    import socket

    from braze_lytics.notifiers import WebhookFailureNotifier

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    _set_webhook(monkeypatch, f"http://127.0.0.1:{port}/services/T0001/B0002/{TOKEN}", timeout=1)
    started = time.monotonic()
    WebhookFailureNotifier(base_url=BASE_URL)(_context())
    assert time.monotonic() - started < 5
    logs = _captured(capfd, caplog)
    assert "not delivered after 2 attempt(s): ConnectionError" in logs
    assert TOKEN not in logs


def test_a_webhook_given_as_host_path_and_bearer_token(receiver, monkeypatch):
    from braze_lytics.notifiers import WebhookFailureNotifier

    port = receiver.server.server_address[1]
    monkeypatch.setenv("AIRFLOW_CONN_BRAZE_LYTICS_ALERTS", json.dumps({
        "conn_type": "http", "host": "127.0.0.1", "schema": "http", "port": port,
        "password": "bearer-secret-123", "extra": {"path": "/hooks/airflow"}}))
    WebhookFailureNotifier(base_url=BASE_URL)(_context(map_index=3, rendered_map_index="chunk 3"))

    (request,) = receiver.requests
    assert request["path"] == "/hooks/airflow"
    assert request["headers"]["Authorization"] == "Bearer bearer-secret-123"
    assert "d.t [chunk 3]" in json.loads(request["body"])["text"]


@pytest.mark.parametrize(("fields", "url", "auth", "headers"), [
    ({"password": "https://hooks.slack.com/services/T1/B2/xyz"}, "https://hooks.slack.com/services/T1/B2/xyz", None, {}),
    ({"host": "alerts.example.com", "port": 8443, "extra": '{"path": "hooks/a"}'},
     "https://alerts.example.com:8443/hooks/a", None, {}),
    ({"host": "http://alerts.example.com/base/", "extra": '{"path": "/a", "timeout": 3}', "password": "tok"},
     "http://alerts.example.com/base/a", None, {"Authorization": "Bearer tok"}),
    ({"host": "https://alerts.example.com/a", "login": "u", "password": "p"}, "https://alerts.example.com/a",
     ("u", "p"), {}),
])
def test_the_connection_forms(fields, url, auth, headers):
    from airflow.sdk import Connection

    from braze_lytics.notifiers.webhook import webhook_from_connection

    hook = webhook_from_connection(Connection(conn_id="braze_lytics_alerts", conn_type="http", **fields))
    assert (hook.url, hook.auth, hook.headers) == (url, auth, headers)
    assert hook.timeout == (3.0 if "timeout" in fields.get("extra", "") else 10.0)
    assert url not in repr(hook) and hook.where.endswith("/…")


def test_a_connection_without_a_url_is_a_warning_not_an_error(monkeypatch, capfd, caplog):
    from braze_lytics.notifiers import WebhookFailureNotifier

    monkeypatch.setenv("AIRFLOW_CONN_BRAZE_LYTICS_ALERTS", json.dumps({"conn_type": "http", "login": "x"}))
    WebhookFailureNotifier()(_context())
    assert "neither a webhook URL in its password nor a host" in _captured(capfd, caplog)


# --------------------------------------------------------------------------------------------------
# The message itself
# --------------------------------------------------------------------------------------------------
def test_long_errors_are_cut_keeping_head_and_tail_and_secrets_are_masked_before_the_cut():
    secret = "s3cr3t-value-that-straddles"
    text = "A" * (MAX_ERROR_CHARS - 10) + secret + "B" * 3000 + " - what to do: clear the task"
    out = error_text(ValueError(text), redact=lambda s: s.replace(secret, "***"))
    assert len(out) <= MAX_ERROR_CHARS
    assert out.startswith("ValueError: AAA") and out.endswith("what to do: clear the task")
    assert "characters cut" in out and "s3cr3t" not in out
    assert cut("short", 100) == "short"


def test_the_message_escapes_slack_markup_and_links_unmapped_tasks():
    task = FailedTask(dag_id="dag", task_id="approve_changes", run_id="scheduled__2026-11-24T10:00:00+00:00",
                      try_number=1, error="AirflowFailException: Rejected by <ops> & co: nothing was sent")
    url = log_url("https://af.example.com/base/", task)
    assert url == ("https://af.example.com/base/dags/dag/runs/scheduled__2026-11-24T10%3A00%3A00%2B00%3A00"
                   "/tasks/approve_changes?try_number=1")
    payload = slack_payload(task, url)
    assert "Rejected by &lt;ops&gt; &amp; co" in payload["blocks"][2]["text"]["text"]
    assert "Mapped" not in json.dumps(payload["blocks"][1])
    assert error_text(None).startswith("no exception reached the callback")


def test_a_chained_error_names_the_cause_type_and_an_approval_reads_as_such():
    from airflow.providers.standard.exceptions import HITLRejectException
    from airflow.sdk.exceptions import AirflowFailException

    try:
        try:
            raise HITLRejectException("Receive 'Reject'")
        except HITLRejectException as exc:
            raise AirflowFailException("Rejected by ops: nothing was sent to Braze and nothing is committed.") from exc
    except AirflowFailException as failure:
        text = error_text(failure)
    assert text == ("AirflowFailException (HITLRejectException): Rejected by ops: nothing was sent to Braze "
                    "and nothing is committed.")


def test_the_log_link_matches_a_route_of_the_installed_airflow_ui():
    import airflow

    bundle = "".join(p.read_text(errors="ignore")
                     for p in (Path(airflow.__file__).parent / "ui" / "dist" / "assets").glob("index-*.js"))
    assert "dags/:dagId/runs/:runId/tasks/:taskId/mapped/:mapIndex" in bundle
    assert "try_number" in bundle


# --------------------------------------------------------------------------------------------------
# The real DAGs
# --------------------------------------------------------------------------------------------------
NOT_RETRIED: set[str] = set()  # every task retries (a deliberate failure is an AirflowFailException: not retried)


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(REPO / "dags"))


def test_every_task_of_every_dag_notifies_retries_with_backoff_and_has_a_timeout(dagbag):
    from braze_lytics.notifiers import WebhookFailureNotifier

    assert dagbag.import_errors == {}
    assert {"braze_segments_to_lytics", "lytics_audiences_to_braze"} <= set(dagbag.dags)
    if (REPO / "dags" / "lytics_audiences_drift_check.py").exists():
        assert "lytics_audiences_drift_check" in dagbag.dags
    problems = []
    for dag_id, dag in dagbag.dags.items():
        for task in dag.tasks:
            name = f"{dag_id}.{task.task_id}"
            callbacks = task.on_failure_callback
            callbacks = callbacks if isinstance(callbacks, list | tuple) else [callbacks]
            if not any(isinstance(c, WebhookFailureNotifier) for c in callbacks):
                problems.append(f"{name}: no failure notification")
            if task.execution_timeout is None:
                problems.append(f"{name}: no execution_timeout")
            if task.task_id not in NOT_RETRIED:
                if task.retries < 1:
                    problems.append(f"{name}: no retries")
                if not task.retry_exponential_backoff:
                    problems.append(f"{name}: retries without exponential backoff")
    assert problems == []


def test_dag_defaults_import_no_heavy_module_at_parse_time():
    heavy = ("requests", "urllib3", "pandas", "pyarrow")
    code = f"import sys, braze_lytics.dag_defaults as d; d.default_args(); print([m for m in {heavy!r} if m in sys.modules])"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_docs_name_the_connection_and_the_payload():
    doc = (REPO / "docs" / "notifications.md").read_text()
    for words in ("braze_lytics_alerts", "AIRFLOW_CONN_BRAZE_LYTICS_ALERTS", "base_url", "blocks"):
        assert re.search(re.escape(words), doc), words
