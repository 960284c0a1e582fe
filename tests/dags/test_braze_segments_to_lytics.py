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
from pathlib import Path

import orjson
import pytest

from sandbox.braze_server import BrazeSandbox
from sandbox.braze_users import SegmentSpec, expected_users
from tests.pgp_keys import make_keypair

pytestmark = [pytest.mark.airflow, pytest.mark.sandbox, pytest.mark.sshd, pytest.mark.slow]

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
    import tempfile
    from pathlib import Path

    from include.clients.pgp.files import decrypt_file

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


GZIP_COLUMNS = {"user_id": "external_id", "email": "email", "tier": "custom_attributes.tier"}


def test_rerun_of_the_same_date_replaces_the_file_and_leaks_no_secret(tmp_path, monkeypatch, braze, connections, capfd):
    sshd = connections
    braze.add_segment(SegmentSpec("seg_rerun", 5_000))
    monkeypatch.setenv("BRAZE_LYTICS_CONFIG", write_config(tmp_path, [
        {"name": "rerun", "segment_id": "seg_rerun", "compression": "gzip", "columns": GZIP_COLUMNS},
    ]))
    upload = sshd.chroot / "upload"
    first = run_dag()
    assert first.state == "success", task_states(first)
    content = (upload / "rerun_20261123.csv.gz").read_bytes()
    manifest = (upload / "rerun_20261123.csv.gz.sha256").read_text()
    (upload / "rerun_20261123.csv.gz").write_bytes(b"corrupted by someone")

    second = run_dag()  # an on-call person re-running the same logical date

    assert second.state == "success", task_states(second)
    assert sorted(p.name for p in upload.iterdir()) == ["rerun_20261123.csv.gz", "rerun_20261123.csv.gz.sha256"]
    assert (upload / "rerun_20261123.csv.gz").read_bytes() == content  # same date, same bytes
    assert (upload / "rerun_20261123.csv.gz.sha256").read_text() == manifest
    rows = list(csv.reader(io.StringIO(gzip.decompress(content).decode(), newline="")))
    assert len(rows) == 5_001 and len({r[0] for r in rows[1:]}) == 5_000

    # Secrets: neither the API key nor the pre-signed download token shows in logs or XCom.
    tokens = {path.rsplit("/", 1)[1].split(".")[0] for _, path, _ in braze.requests if path.startswith("/exports/")}
    assert tokens
    logs = capfd.readouterr()
    xcoms = json.dumps([ti.xcom_pull(task_ids=ti.task_id, map_indexes=ti.map_index)
                        for ti in second.get_task_instances()], default=str)
    for secret in (API_KEY, *tokens):
        assert secret not in logs.out + logs.err
        assert secret not in xcoms


def dashboard_csv_zip(path, spec: SegmentSpec) -> None:
    """A dashboard-style 'Export CSV user data' file (zipped) for the users of `spec`."""
    import zipfile

    buf = io.StringIO(newline="")
    writer = csv.writer(buf)
    writer.writerow(["Braze ID", "user_id", "email", "first_name", "country"])
    for user in expected_users(spec, None):
        writer.writerow([user["braze_id"], user.get("external_id", ""), user.get("email", ""),
                         user["first_name"], user["country"]])
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("users.csv", buf.getvalue().encode("utf-8"))


def test_encrypted_dashboard_drop_is_decrypted_shaped_and_delivered(tmp_path, monkeypatch, connections):
    from include.clients.pgp.files import encrypt_file

    sshd = connections
    braze_key = make_keypair("braze-drop")
    monkeypatch.setenv("AIRFLOW_CONN_BRAZE_PGP", json.dumps({
        "conn_type": "generic", "password": braze_key.passphrase, "extra": {"private_key": braze_key.private_key}}))
    spec = SegmentSpec("seg_dash", 2_000, missing_id_every=400)
    landing = tmp_path / "landing" / "seg_dash" / "2026-11-23"
    landing.mkdir(parents=True)
    plain = tmp_path / "users-x1.zip"
    dashboard_csv_zip(plain, spec)
    encrypt_file(plain, landing / "users-x1.zip.pgp", braze_key.public_key)
    (landing / ".users-x2.zip.pgp.partial").write_bytes(b"still uploading")  # must be ignored
    monkeypatch.setenv("BRAZE_LYTICS_CONFIG", write_config(tmp_path, [
        {"name": "dashboard", "segment_id": "seg_dash", "source": "drop", "max_rejected_share": 0.05,
         "drop": {"path": str(tmp_path / "landing" / "{segment_id}" / "{ds}"), "pattern": "users-*.zip*"},
         "pgp": {"decrypt_conn_id": "braze_pgp"},
         "columns": {"braze_id": "Braze ID", "user_id": "user_id", "email": "email", "country": "country"}},
    ]))

    dag_run = run_dag()

    assert dag_run.state == "success", task_states(dag_run)
    rows = list(csv.reader(open(sshd.chroot / "upload" / "dashboard_20261123.csv", encoding="utf-8", newline="")))
    want = [[u["braze_id"], u["external_id"], u.get("email", ""), u["country"], TS]
            for u in expected_users(spec, None) if u.get("external_id")]
    assert rows[0] == ["braze_id", "user_id", "email", "country", "exported_at"]
    assert rows[1:] == want and len(want) == 1_995
    assert (landing / "users-x1.zip.pgp").exists()  # the drop is left where it was


def test_too_many_rejected_rows_fails_fast_and_delivers_nothing(tmp_path, monkeypatch, braze, connections, capfd):
    sshd = connections
    braze.add_segment(SegmentSpec("seg_bad", 3_000, malformed_every=20))  # 5% broken lines
    braze.add_segment(SegmentSpec("seg_good", 1_000))
    monkeypatch.setenv("BRAZE_LYTICS_CONFIG", write_config(tmp_path, [
        {"name": "bad", "segment_id": "seg_bad", "columns": GZIP_COLUMNS},
        {"name": "good", "segment_id": "seg_good", "columns": GZIP_COLUMNS},
    ]))

    dag_run = run_dag()

    assert dag_run.state == "failed"
    tis = {(ti.task_id, ti.rendered_map_index): ti for ti in dag_run.get_task_instances()}
    bad = tis[("segment.transfer", "bad")]
    assert bad.state == "failed" and bad.try_number == 1  # not retried: a retry cannot fix the data
    assert tis[("segment.transfer", "good")].state == "success"
    assert tis[("summarize", None)].state == "failed"
    assert sorted(p.name for p in (sshd.chroot / "upload").iterdir()) == ["good_20261123.csv", "good_20261123.csv.sha256"]
    out = capfd.readouterr().out
    assert "150 of 3,000 rows (5.00%) were rejected, above max_rejected_share 1.00%. Nothing was delivered." in out
    quarantine = next(Path(os.environ["BRAZE_LYTICS_QUARANTINE_DIR"]).glob("bad/bad_20261123.quarantine.csv"))
    reasons = [row[2] for row in csv.reader(open(quarantine, encoding="utf-8", newline=""))][1:]
    assert len(reasons) == 150 and all(r.startswith("invalid JSON") for r in reasons)
    assert "1 of 2 segment(s) were not delivered: ['bad']" in out


def test_rejected_api_key_fails_fast_with_what_to_fix(tmp_path, monkeypatch, braze, connections, capfd):
    braze.add_segment(SegmentSpec("seg_auth", 10))
    monkeypatch.setenv("AIRFLOW_CONN_BRAZE_DEFAULT", json.dumps({"conn_type": "http", "host": braze.url, "password": "revoked-key"}))
    monkeypatch.setenv("BRAZE_LYTICS_CONFIG", write_config(tmp_path, [
        {"name": "auth", "segment_id": "seg_auth", "columns": GZIP_COLUMNS}]))

    dag_run = run_dag()

    assert dag_run.state == "failed"
    start = next(ti for ti in dag_run.get_task_instances() if ti.task_id == "segment.start_export")
    assert start.state == "failed" and start.try_number == 1
    out = capfd.readouterr().out
    assert "answered 401" in out and "Check the REST API key (password of the Braze connection)" in out
    assert [r for r in braze.requests if r[1] == "/users/export/segment"] == [("POST", "/users/export/segment", 401)]


def test_drop_from_an_sftp_inbound_folder(tmp_path, monkeypatch, connections):
    sshd = connections
    monkeypatch.setenv("AIRFLOW_CONN_BRAZE_DROP", sshd.conn_json(sshd.password_user, auth="password"))
    spec = SegmentSpec("seg_inbound", 500)
    folder = sshd.chroot / "inbound" / "seg_inbound"
    folder.mkdir()
    dashboard_csv_zip(folder / "users-q9.zip", spec)
    monkeypatch.setenv("BRAZE_LYTICS_CONFIG", write_config(tmp_path, [
        {"name": "inbound", "segment_id": "seg_inbound", "source": "drop", "compression": "zip",
         "drop": {"path": "/inbound/{segment_id}", "pattern": "*.zip", "conn_id": "braze_drop"},
         "columns": {"user_id": "user_id", "email": "email"}},
    ]))

    dag_run = run_dag()

    assert dag_run.state == "success", task_states(dag_run)
    import zipfile

    with zipfile.ZipFile(sshd.chroot / "upload" / "inbound_20261123.csv.zip") as zf:
        assert zf.namelist() == ["inbound_20261123.csv"]
        rows = list(csv.reader(io.StringIO(zf.read("inbound_20261123.csv").decode(), newline="")))
    assert rows[1:] == [[u["external_id"], u.get("email", ""), TS] for u in expected_users(spec, None)]


def test_export_that_never_becomes_ready_times_out_with_advice(tmp_path, monkeypatch, connections, capfd):
    with BrazeSandbox(API_KEY, [SegmentSpec("seg_slow", 10)], export_delay=3600) as slow:
        monkeypatch.setenv("AIRFLOW_CONN_BRAZE_DEFAULT", json.dumps({"conn_type": "http", "host": slow.url, "password": API_KEY}))
        monkeypatch.setenv("BRAZE_LYTICS_CONFIG", write_config(tmp_path, [
            {"name": "slow", "segment_id": "seg_slow", "export_timeout_minutes": 0.05, "columns": GZIP_COLUMNS}]))
        dag_run = run_dag()
    assert dag_run.state == "failed"
    sensor = next(ti for ti in dag_run.get_task_instances() if ti.task_id == "segment.wait_for_export")
    assert sensor.state == "failed" and sensor.try_number == 1
    out = capfd.readouterr().out
    assert "segment 'slow': Braze has not finished the export within 3 seconds (export_timeout_minutes)" in out
    assert "clear this segment's tasks from start_export on" in out


def test_a_broken_configuration_fails_the_run_with_the_key_to_fix(tmp_path, monkeypatch, connections, capfd):
    monkeypatch.setenv("BRAZE_LYTICS_CONFIG", write_config(tmp_path, [
        {"name": "typo", "segment_id": "s", "compresion": "gzip", "columns": GZIP_COLUMNS}]))
    dag_run = run_dag()
    assert dag_run.state == "failed"
    states = {ti.task_id: (ti.state, ti.try_number) for ti in dag_run.get_task_instances()}
    assert states["plan_segments"] == ("failed", 1)  # not retried: config errors need a person
    out = capfd.readouterr().out
    assert "segments[0] (typo).compresion: unknown key (did you mean 'compression'?)" in out
