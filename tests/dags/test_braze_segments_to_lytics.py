"""End to end: `dag.test()` of braze_segments_to_lytics against the Braze sandbox and a real sshd.

The sandbox exports users over real HTTP (404 until the export is ready), the DAG shapes,
PGP-encrypts and delivers them to OpenSSH, and every delivered row is checked against what
the sandbox generated.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import textwrap
from datetime import UTC, datetime

import orjson
import pytest

from sandbox.braze_server import BrazeSandbox
from sandbox.braze_users import SegmentSpec, expected_users
from tests.pgp_keys import make_keypair

pytestmark = [pytest.mark.sshd, pytest.mark.slow]

API_KEY = "sandbox-rest-key-e2e"
E2E_USERS = int(os.environ.get("E2E_USERS", "50000"))
LOGICAL_DATE = datetime(2026, 11, 23, tzinfo=UTC)
TS = "2026-11-23T00:00:00Z"
COLUMNS = {
    "user_id": "external_id",
    "braze_id": "braze_id",
    "email": "email",
    "first_name": "first_name",
    "last_name": "last_name",
    "city": "home_city",
    "tier": "custom_attributes.tier",
    "note": "custom_attributes.note",
    "devices": "devices",
}


def cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return orjson.dumps(value).decode()
    return str(value)


def expected_rows(spec: SegmentSpec) -> list[list[str]]:
    rows, seen = [], set()
    for user in expected_users(spec, None):
        if user is None or not user.get("external_id") or user["external_id"] in seen:
            continue
        seen.add(user["external_id"])
        ca = user.get("custom_attributes") or {}
        rows.append([cell(user.get("external_id")), cell(user.get("braze_id")), cell(user.get("email")),
                     cell(user.get("first_name")), cell(user.get("last_name")), cell(user.get("home_city")),
                     cell(ca.get("tier")), cell(ca.get("note")), cell(user.get("devices")), TS])
    return rows


def write_config(tmp_path, segments: list[dict]) -> str:
    path = tmp_path / "pipeline.yaml"
    path.write_text(textwrap.dedent("""
        defaults:
          poll_interval_seconds: 1
          export_timeout_minutes: 2
          remote_dir: /upload
    """) + "segments:\n" + "".join(f"  - {json.dumps(s)}\n" for s in segments))
    return str(path)


@pytest.fixture
def braze():
    with BrazeSandbox(API_KEY, export_delay=2.0) as sandbox:
        yield sandbox


@pytest.fixture
def connections(monkeypatch, braze, sftp_upload_dir, airflow_db):
    monkeypatch.setenv("AIRFLOW_CONN_BRAZE_DEFAULT", json.dumps({"conn_type": "http", "host": braze.url, "password": API_KEY}))
    monkeypatch.setenv("AIRFLOW_CONN_LYTICS_SFTP", sftp_upload_dir.conn_json(sftp_upload_dir.key_user, auth="key"))
    return sftp_upload_dir


def run_dag(**run_conf):
    from airflow.dag_processing.dagbag import DagBag

    dag = DagBag(dag_folder="dags").get_dag("braze_segments_to_lytics")
    return dag.test(logical_date=LOGICAL_DATE, run_conf=run_conf or None)


def task_states(dag_run) -> dict[str, str]:
    return {f"{ti.task_id}[{ti.map_index}]": ti.state for ti in dag_run.get_task_instances()}


def decrypt(data: bytes, keypair) -> bytes:
    from include.pgp_crypto import decrypt_file

    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "in.pgp", Path(tmp) / "out"
        src.write_bytes(data)
        decrypt_file(src, dst, keypair.private_key, keypair.passphrase)
        return dst.read_bytes()


def test_export_is_shaped_encrypted_and_delivered_row_by_row(tmp_path, monkeypatch, braze, connections):
    sshd = connections
    lytics = make_keypair("lytics-e2e")
    monkeypatch.setenv("AIRFLOW_CONN_LYTICS_PGP", json.dumps({"conn_type": "generic", "extra": {"public_key": lytics.public_key}}))
    spec = SegmentSpec("seg_e2e", E2E_USERS, missing_id_every=4999, malformed_every=9973, duplicate_every=12_007)
    braze.add_segment(spec)
    monkeypatch.setenv("BRAZE_LYTICS_CONFIG", write_config(tmp_path, [
        {"name": "e2e_users", "segment_id": "seg_e2e", "file_root": "braze_e2e", "compression": "gzip",
         "pgp": {"encrypt_conn_id": "lytics_pgp"}, "columns": COLUMNS},
    ]))

    dag_run = run_dag()

    assert dag_run.state == "success", task_states(dag_run)
    upload = sshd.chroot / "upload"
    assert sorted(p.name for p in upload.iterdir()) == ["braze_e2e_20261123.csv.gz.pgp", "braze_e2e_20261123.csv.gz.pgp.sha256"]
    encrypted = (upload / "braze_e2e_20261123.csv.gz.pgp").read_bytes()
    assert not encrypted.startswith(b"-----")  # binary OpenPGP, not armored
    text = gzip.decompress(decrypt(encrypted, lytics)).decode("utf-8")
    rows = list(csv.reader(io.StringIO(text, newline="")))
    assert rows[0] == [*COLUMNS, "exported_at"]
    want = expected_rows(spec)
    assert len(want) > E2E_USERS * 0.99
    assert rows[1:] == want  # every row, every cell, in export order

    # The map index is labelled with the segment name, and the summary has the counts.
    tis = {ti.task_id: ti for ti in dag_run.get_task_instances()}
    assert tis["segment.transfer"].rendered_map_index == "e2e_users"
    summary = tis["summarize"].xcom_pull(task_ids="summarize")
    assert summary["delivered"] == ["e2e_users"] and summary["failed"] == []
    assert summary["rows_written"] == len(want)
    assert summary["rows_read"] == E2E_USERS
    assert summary["files"] == {"e2e_users": "/upload/braze_e2e_20261123.csv.gz.pgp"}
