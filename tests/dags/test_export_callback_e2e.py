"""End to end (`dag.test`): Braze's export callback completes a bucket export; without it, the quiet period does.

The Braze sandbox writes a bucket export into a real S3 API server (moto) and POSTs the
``callback_endpoint`` it was given (once, no retry) to the plugin's callback app, served by a real
uvicorn server on loopback and sharing the run's state store (``BRAZE_LYTICS_STATE_URL``).
"""

from __future__ import annotations

import json
import time

import pytest

from braze_lytics.export_callback_app import URL_PREFIX, ExportCallbackApp
from sandbox.braze_bucket import S3Target
from sandbox.braze_server import BrazeSandbox
from sandbox.braze_users import SegmentSpec
from tests.dags.test_braze_exports_e2e import use_braze
from tests.dags.test_braze_segments_to_lytics import API_KEY, GZIP_COLUMNS, run_dag, task_states, write_config
from tests.plugins.test_export_callback_app import Served
from tests.security.leaks import check_secrets, in_database, in_text, in_tree

pytestmark = [pytest.mark.airflow, pytest.mark.sandbox, pytest.mark.sshd, pytest.mark.slow]

LONG_QUIET_MINUTES = 10  # longer than the export timeout: only the callback can complete the export in time


@pytest.fixture
def wired(tmp_path, monkeypatch, sftp_upload_dir, airflow_db, s3_bucket):
    """(the sandbox's bucket target, the callback server, the state dir) with connections set."""
    monkeypatch.setenv("AIRFLOW_CONN_LYTICS_SFTP", sftp_upload_dir.conn_json(sftp_upload_dir.key_user, auth="key"))
    monkeypatch.setenv("AIRFLOW_CONN_BRAZE_BUCKET", json.dumps({
        "conn_type": "aws", "login": s3_bucket.access_key, "password": s3_bucket.secret_key,
        "extra": {"endpoint_url": s3_bucket.endpoint_url, "region_name": s3_bucket.region}}))
    state = tmp_path / "state"
    monkeypatch.setenv("BRAZE_LYTICS_STATE_URL", str(state))  # the workers' and the callback app's store
    target = S3Target(s3_bucket.endpoint_url, s3_bucket.name, s3_bucket.access_key, s3_bucket.secret_key)
    with Served(ExportCallbackApp()) as served:
        yield target, served, state, sftp_upload_dir, s3_bucket


def configure(tmp_path, monkeypatch, s3_bucket, served, quiet_minutes: float) -> None:
    monkeypatch.setenv("BRAZE_LYTICS_CONFIG", write_config(tmp_path, [
        {"name": "cb", "segment_id": "seg_cb", "compression": "gzip", "columns": GZIP_COLUMNS,
         "bucket_url": f"s3://{s3_bucket.name}", "bucket_conn_id": "braze_bucket",
         "bucket_quiet_minutes": quiet_minutes, "callback_base_url": served.url}]))


def test_the_callback_completes_a_bucket_export_long_before_the_quiet_period(tmp_path, monkeypatch, wired, capfd,
                                                                             caplog, airflow_db):
    target, served, state, sshd, s3_bucket = wired
    configure(tmp_path, monkeypatch, s3_bucket, served, LONG_QUIET_MINUTES)
    with BrazeSandbox(API_KEY, [SegmentSpec("seg_cb", 3_000)], export_delay=0.5, bucket=target, users_per_file=500,
                      bucket_object_interval=0.1) as braze:
        use_braze(monkeypatch, braze)
        started = time.monotonic()
        dag_run = run_dag()
        elapsed = time.monotonic() - started
        [export] = list(braze.exports._by_prefix.values())  # the sandbox's record of the request it got
    assert dag_run.state == "success", task_states(dag_run)
    assert export.callback_status == 200 and export.callback.startswith(f"{served.url}{URL_PREFIX}/")
    # Completed by the callback: the quiet period (10 min) exceeds the export timeout (2 min) by far.
    assert elapsed < LONG_QUIET_MINUTES * 60 / 5, elapsed
    assert (sshd.chroot / "upload" / "cb_20261123.csv.gz").exists()
    logs = capfd.readouterr()
    text = logs.out + logs.err + caplog.text  # (the project's loggers reach caplog, Airflow's the fds)
    assert "6 object(s), complete (Braze's callback arrived)" in text
    # Done with: its records are gone (a late call would get 404).
    assert not list((state / "export-callbacks").glob("*"))

    # The token is Braze's only credential: in no log, XCom, DB row or state file.
    secrets = check_secrets({"callback token": export.callback.rsplit("/", 1)[1], "API key": API_KEY})
    found = in_text("task output", text, secrets)
    xcoms = json.dumps([ti.xcom_pull(task_ids=ti.task_id, map_indexes=ti.map_index)
                        for ti in dag_run.get_task_instances()], default=str)
    found += in_text("XCom", xcoms, secrets)
    found += in_database(airflow_db / "airflow.db", secrets)[0]
    found += in_tree(tmp_path, secrets)[0]
    assert found == []
    assert '"callback": {"id": ' in xcoms  # what XCom carries instead: the digest


def test_a_lost_callback_leaves_the_quiet_period_to_complete_the_export(tmp_path, monkeypatch, wired, capfd,
                                                                        caplog):
    target, served, state, sshd, s3_bucket = wired
    configure(tmp_path, monkeypatch, s3_bucket, served, 0.05)  # 3 s
    with BrazeSandbox(API_KEY, [SegmentSpec("seg_cb", 1_000)], export_delay=0.5, bucket=target, users_per_file=500,
                      drop_callbacks=True) as braze:
        use_braze(monkeypatch, braze)
        dag_run = run_dag()
        [export] = list(braze.exports._by_prefix.values())
    assert dag_run.state == "success", task_states(dag_run)
    assert export.callback is not None and export.callback_status == "dropped"
    text = "".join(capfd.readouterr()) + caplog.text
    assert "2 object(s), complete (no object changed for 3 s; no callback received)" in text
    assert (sshd.chroot / "upload" / "cb_20261123.csv.gz").exists()
    assert not list((state / "export-callbacks").glob("*"))


def test_an_unreachable_callback_endpoint_changes_nothing_but_the_wait(tmp_path, monkeypatch, wired):
    """A callback_base_url Braze cannot reach (nothing listens there): Braze's call fails, the quiet period completes."""
    import socket

    target, served, state, sshd, s3_bucket = wired
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"

    class Nowhere:
        url = dead

    configure(tmp_path, monkeypatch, s3_bucket, Nowhere, 0.05)
    with BrazeSandbox(API_KEY, [SegmentSpec("seg_cb", 600)], export_delay=0.5, bucket=target,
                      users_per_file=500) as braze:
        use_braze(monkeypatch, braze)
        dag_run = run_dag()
        [export] = list(braze.exports._by_prefix.values())
    assert dag_run.state == "success", task_states(dag_run)
    assert isinstance(export.callback_status, str) and "Error" in export.callback_status  # refused connection

