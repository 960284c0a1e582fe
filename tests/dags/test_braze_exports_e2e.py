"""End to end (`dag.test`) against a Braze sandbox as strict as the real service.

Export links are pre-signed S3 GET links (HEAD refused, 404 until ready, 403 once expired);
bucket exports land in a real S3 API server (moto) as Braze lays them out; the data is realistic
(many scripts, emoji, U+2028, quotes and newlines in values, "null" strings, ~2% without id,
~0.5% duplicate ids whose first occurrence is files earlier). Every delivered row is checked
against the sandbox's ground truth, and so is every quarantined one.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from sandbox.braze_bucket import S3Target
from sandbox.braze_server import BrazeSandbox
from sandbox.braze_users import SegmentSpec, expected_rows
from tests.dags.test_braze_segments_to_lytics import (
    API_KEY,
    COLUMNS,
    TS,
    cell,
    run_dag,
    task_states,
    write_config,
)

pytestmark = [pytest.mark.airflow, pytest.mark.sandbox, pytest.mark.sshd, pytest.mark.slow]

REALISTIC_USERS = int(os.environ.get("E2E_REALISTIC_USERS", "500000"))
FIELDS = ["external_id", "braze_id", "email", "first_name", "last_name", "home_city", "custom_attributes", "devices"]


def expected_cells(user: dict) -> list[str]:
    ca = user.get("custom_attributes") or {}
    return [cell(user.get("external_id")), cell(user.get("braze_id")), cell(user.get("email")),
            cell(user.get("first_name")), cell(user.get("last_name")), cell(user.get("home_city")),
            cell(ca.get("tier")), cell(ca.get("note")), cell(user.get("devices")), TS]


def check_delivery(csv_text: str, quarantine: Path, spec: SegmentSpec) -> dict[str, int]:
    """Every kept user delivered byte-faithfully, in export order; every other line quarantined
    with the right reason (a duplicate naming its first occurrence's place). Returns the counts."""
    rows = list(csv.reader(io.StringIO(csv_text, newline="")))
    assert rows[0] == [*COLUMNS, "exported_at"]
    delivered = iter(rows[1:])
    quarantined = list(csv.reader(open(quarantine, encoding="utf-8", newline="")))[1:] if quarantine.exists() else []
    q_by_status: dict[str, int] = {}
    duplicates = iter([q for q in quarantined if q[2].startswith("duplicate")])
    counts = {"kept": 0, "duplicate": 0, "missing_id": 0, "malformed": 0}
    for row in expected_rows(spec, FIELDS):
        counts[row.status] += 1
        if row.status == "kept":
            assert next(delivered) == expected_cells(row.user), f"user {row.index}"
        elif row.status == "duplicate":
            q = next(duplicates)
            assert f"duplicate external_id {row.external_id!r}" in q[2], (row.index, q[2])
    assert next(delivered, None) is None and next(duplicates, None) is None
    for q in quarantined:
        q_by_status[q[2].split(" ", 1)[0]] = q_by_status.get(q[2].split(" ", 1)[0], 0) + 1
    assert q_by_status.get("duplicate", 0) == counts["duplicate"]
    assert q_by_status.get("missing", 0) == counts["missing_id"]
    return counts


@pytest.fixture
def connections(monkeypatch, sftp_upload_dir, airflow_db):
    monkeypatch.setenv("AIRFLOW_CONN_LYTICS_SFTP", sftp_upload_dir.conn_json(sftp_upload_dir.key_user, auth="key"))
    return sftp_upload_dir


def use_braze(monkeypatch, braze: BrazeSandbox) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_BRAZE_DEFAULT", json.dumps({"conn_type": "http", "host": braze.url, "password": API_KEY}))


def quarantine_file(name: str, root: str) -> Path:
    return Path(os.environ["BRAZE_LYTICS_QUARANTINE_DIR"]) / name / f"{root}_20261123.quarantine.csv"


def test_a_realistic_export_over_a_get_only_link_is_delivered_row_by_row(tmp_path, monkeypatch, connections):
    """500,000 realistic users in 100 files; readiness probed with GET (HEAD is refused)."""
    spec = SegmentSpec("seg_real", REALISTIC_USERS, realistic=True)
    with BrazeSandbox(API_KEY, [spec], export_delay=2.0) as braze:
        use_braze(monkeypatch, braze)
        monkeypatch.setenv("BRAZE_LYTICS_CONFIG", write_config(tmp_path, [
            {"name": "real", "segment_id": "seg_real", "max_rejected_share": 0.05, "columns": COLUMNS,
             "fields_to_export": FIELDS}]))
        dag_run = run_dag()
        assert dag_run.state == "success", task_states(dag_run)
        assert "HEAD" not in {m for m, path, _ in braze.requests if path.startswith("/exports/")}
    assert REALISTIC_USERS < 50_000 or REALISTIC_USERS // 5_000 >= 10  # Braze's ~5,000 users per file
    with open(connections.chroot / "upload" / "real_20261123.csv", encoding="utf-8", newline="") as fh:
        text = fh.read()
    counts = check_delivery(text, quarantine_file("real", "real"), spec)
    assert counts["duplicate"] > REALISTIC_USERS * 0.003 and counts["missing_id"] > REALISTIC_USERS * 0.01
    assert "\u2028" in text and '""' in text  # the awkward values went through, quoted


def test_a_link_that_expires_while_waiting_fails_at_once_with_advice(tmp_path, monkeypatch, connections, capfd):
    with BrazeSandbox(API_KEY, [SegmentSpec("seg_exp", 10)], export_delay=30, link_ttl=2) as braze:
        use_braze(monkeypatch, braze)
        monkeypatch.setenv("BRAZE_LYTICS_CONFIG", write_config(tmp_path, [
            {"name": "exp", "segment_id": "seg_exp", "columns": {"user_id": "external_id"}}]))
        started = datetime.now(UTC)
        dag_run = run_dag()
    assert dag_run.state == "failed"
    assert datetime.now(UTC) - started < timedelta(seconds=90)  # not the 2-minute export timeout
    sensor = next(ti for ti in dag_run.get_task_instances() if ti.task_id == "segment.wait_for_export")
    assert sensor.state == "failed" and sensor.try_number == 1  # a retry cannot revive the link
    out = capfd.readouterr().out
    assert "has expired" in out and "start_export" in out


@pytest.mark.parametrize("output_format", ["zip", "gzip"])
def test_a_bucket_export_is_found_awaited_and_read_in_export_order(tmp_path, monkeypatch, connections, s3_bucket,
                                                                   output_format):
    """Braze writes 12 objects to the customer's bucket, one every 0.2 s, under the day after the
    request; the DAG waits for the folder to be quiet, reads the objects in numeric order."""
    spec = SegmentSpec("seg_bucket", 6_000, realistic=True)
    target = S3Target(s3_bucket.endpoint_url, s3_bucket.name, s3_bucket.access_key, s3_bucket.secret_key)
    tomorrow = datetime.now(UTC).date() + timedelta(days=1)
    with BrazeSandbox(API_KEY, [spec], export_delay=0.5, bucket=target, users_per_file=500,
                      bucket_object_interval=0.2, finished_day=lambda: tomorrow) as braze:
        use_braze(monkeypatch, braze)
        monkeypatch.setenv("AIRFLOW_CONN_BRAZE_BUCKET", json.dumps({
            "conn_type": "aws", "login": s3_bucket.access_key, "password": s3_bucket.secret_key,
            "extra": {"endpoint_url": s3_bucket.endpoint_url, "region_name": s3_bucket.region}}))
        monkeypatch.setenv("BRAZE_LYTICS_CONFIG", write_config(tmp_path, [
            {"name": "bucket", "segment_id": "seg_bucket", "output_format": output_format, "compression": "gzip",
             "bucket_url": f"s3://{s3_bucket.name}", "bucket_conn_id": "braze_bucket",
             "bucket_quiet_minutes": 0.05, "max_rejected_share": 0.05, "columns": COLUMNS,
             "fields_to_export": FIELDS}]))
        dag_run = run_dag()
    assert dag_run.state == "success", task_states(dag_run)
    keys = s3_bucket.keys("segment-export/seg_bucket/")
    assert len(keys) == 12 and all(f"/{tomorrow:%Y-%m-%d}/" in k for k in keys)
    text = gzip.decompress((connections.chroot / "upload" / "bucket_20261123.csv.gz").read_bytes()).decode()
    counts = check_delivery(text, quarantine_file("bucket", "bucket"), spec)
    assert counts["duplicate"] > 0  # first occurrences are files earlier: only numeric order gets them right


def test_a_changed_host_key_fails_before_braze_is_asked_for_an_export(tmp_path, monkeypatch, connections, capfd):
    """The delivery target is checked first: a 5M-user export is not built, downloaded and shaped
    only to be refused at the last step."""
    import paramiko

    sshd = connections
    wrong = "ssh-rsa " + paramiko.RSAKey.generate(2048).get_base64()  # not the server's key
    monkeypatch.setenv("AIRFLOW_CONN_LYTICS_SFTP", sshd.conn_json(sshd.key_user, auth="key", host_key=wrong))
    with BrazeSandbox(API_KEY, [SegmentSpec("seg_hk", 10)], export_delay=0.5) as braze:
        use_braze(monkeypatch, braze)
        monkeypatch.setenv("BRAZE_LYTICS_CONFIG", write_config(tmp_path, [
            {"name": "hk", "segment_id": "seg_hk", "columns": {"user_id": "external_id"}}]))
        dag_run = run_dag()
        posts = [r for r in braze.requests if r[1] == "/users/export/segment"]
    assert dag_run.state == "failed"
    start = next(ti for ti in dag_run.get_task_instances() if ti.task_id == "segment.start_export")
    assert start.state == "failed" and start.try_number == 1
    assert posts == []  # Braze was never asked
    assert "CHANGED" in capfd.readouterr().out
