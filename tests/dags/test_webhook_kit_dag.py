"""`lytics_webhook_kit`: it imports as documented (manual only, paused, one param), and `dag.test()` against
the Lytics sandbox logs the set-up with the key masked, sends the test event when asked, and fails (without
the key anywhere) when Lytics refuses it."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from include.webhook_kit.kit import TEST_EVENT
from sandbox.lytics_server import LyticsSandbox

pytestmark = [pytest.mark.airflow, pytest.mark.sandbox]

DAG_ID = "lytics_webhook_kit"
TOKEN = "webhook-kit-dag-token-0123456789-mnop"
ACCOUNT = "4242"


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder="dags")


@pytest.fixture
def lytics(monkeypatch):
    with LyticsSandbox(TOKEN, accounts=[ACCOUNT]) as sandbox:
        _connection(monkeypatch, sandbox.url, TOKEN, ACCOUNT)
        yield sandbox


def _connection(monkeypatch, url, token, account):
    monkeypatch.setenv("AIRFLOW_CONN_LYTICS_DEFAULT", json.dumps(
        {"conn_type": "http", "host": url, "password": token, "extra": {"account_id": account}}))


def _run(dagbag, day: int, **conf):
    dag_run = dagbag.dags[DAG_ID].test(logical_date=datetime(2026, 12, day, tzinfo=UTC), run_conf=conf)
    ti = next(t for t in dag_run.get_task_instances() if t.task_id == "webhook_kit")
    return dag_run, ti


def test_the_dag_is_manual_only_paused_and_documented(dagbag):
    assert not {f: e for f, e in dagbag.import_errors.items() if "webhook_kit" in f}
    dag = dagbag.dags[DAG_ID]
    assert type(dag.timetable).__name__ == "NullTimetable"  # schedule=None: manual triggers only
    assert (dag.is_paused_upon_creation, dag.catchup, dag.max_active_runs) == (True, False, 1)
    assert set(dag.params) == {"send_test_event"}
    param = dag.params.get_param("send_test_event")
    assert param.value is False and param.schema["type"] == "boolean"
    assert param.schema["title"] and "test event" in param.description
    assert [t.task_id for t in dag.tasks] == ["webhook_kit"] and dag.tasks[0].retries >= 1
    for words in ("What it does", "masked", "send_test_event", "401", "404", "Safe to re-run"):
        assert words in dag.doc_md


def test_a_run_without_the_test_event_sends_nothing(airflow_db, dagbag, lytics, capfd, caplog):
    dag_run, ti = _run(dagbag, 1)
    assert dag_run.state == "success"
    summary = ti.xcom_pull(task_ids="webhook_kit")
    assert summary["webhook_url"] == f"{lytics.url}/c/{ACCOUNT}/braze_users?key=****mnop"
    assert (summary["http_method"], summary["headers"]) == ("POST", {"Content-Type": "application/json"})
    assert json.loads(summary["body_template"])["email"] == "{{${email_address} | json_escape}}"
    assert summary["test_event"] is None
    assert lytics.requests == []
    out = "".join(capfd.readouterr()) + caplog.text
    assert "key=****mnop" in out and "Test event: not sent" in out  # the task log reached the output...
    assert TOKEN not in out  # ...without the key


def test_a_run_with_the_test_event_passes_and_lytics_records_it(airflow_db, dagbag, lytics, capfd, caplog):
    dag_run, ti = _run(dagbag, 2, send_test_event=True)
    assert dag_run.state == "success"
    result = ti.xcom_pull(task_ids="webhook_kit")["test_event"]
    assert result["passed"] and "accepted the test event" in result["reason"]
    [event] = lytics.collect.events("braze_users")
    assert (event.account, event.endpoint, event.fields) == (ACCOUNT, "c", TEST_EVENT)
    out = "".join(capfd.readouterr()) + caplog.text
    assert "Test event PASS:" in out
    assert TOKEN not in out + json.dumps(result)


def test_a_refused_test_event_fails_the_run_at_once_without_the_key(airflow_db, dagbag, lytics, monkeypatch, capfd,
                                                                   caplog):
    wrong = "webhook-kit-dag-WRONG-token-00000-zzzz"
    _connection(monkeypatch, lytics.url, wrong, ACCOUNT)
    dag_run, ti = _run(dagbag, 3, send_test_event=True)
    assert dag_run.state == "failed"
    assert ti.try_number == 1 and ti.state == "failed"  # AirflowFailException: not retried
    assert [r[2] for r in lytics.requests] == [401]  # a 401 is not retried by the client either
    assert lytics.collect.events() == []
    out = "".join(capfd.readouterr()) + caplog.text
    assert "Test event FAIL:" in out and "401" in out and "refused the API token" in out
    assert wrong not in out and TOKEN not in out


def test_a_connection_without_the_account_fails_with_the_fix(airflow_db, dagbag, lytics, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_LYTICS_DEFAULT", json.dumps(
        {"conn_type": "http", "host": lytics.url, "password": TOKEN}))
    dag_run, ti = _run(dagbag, 4)
    assert dag_run.state == "failed" and ti.try_number == 1
    assert lytics.requests == []
