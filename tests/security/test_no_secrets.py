"""No secret anywhere: full `dag.test()` runs of both DAGs with distinctive secret values, then a search for
those literal values in everything the runs left behind.

Secrets: the Braze REST API key, the Lytics API token, the SFTP password and private key, the PGP
passphrase and private key, and each pre-signed download link's token (its path), query string and
signature. Connections are ``AIRFLOW_CONN_*`` environment variables, so none is in the metadata DB.

Searched: stdout/stderr (capfd), Python logging at INFO (a handler on the root logger), the task log
files under $AIRFLOW_HOME/logs (if dag.test writes any), every XCom value, every value of every row of
every table of the SQLite metadata DB (blobs decompressed too), every file name and file content (also
inside gzip/zip/Parquet, and PGP-decrypted) under the state store, quarantine, work and SFTP upload
directories, and the text of the exceptions of failing variants (wrong key, expired link).
"""

from __future__ import annotations

import json
import logging
import sqlite3
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from sandbox.braze_server import BrazeSandbox
from sandbox.braze_users import SegmentSpec
from tests.pgp_keys import KeyPair, make_keypair
from tests.security.leaks import (
    RecordingHandler,
    Secrets,
    check_secrets,
    exception_text,
    in_database,
    in_text,
    in_tree,
)
from tests.security.world import COLUMNS, dashboard_zip, distinct, states

pytestmark = [pytest.mark.airflow, pytest.mark.sandbox, pytest.mark.sshd, pytest.mark.slow]


# ------------------------------------------------------------------------------------------------
# What the secrets are
# ------------------------------------------------------------------------------------------------
def key_lines(name: str, text: str, public: str = "") -> Secrets:
    """The body lines of a PEM / ASCII-armored private key (those also in `public` are not secret)."""
    public_lines = {line.strip() for line in public.splitlines()}
    lines = [line.strip() for line in text.splitlines()
             if len(line.strip()) >= 24 and not line.startswith("-----") and ":" not in line
             and line.strip() not in public_lines]
    assert len(lines) >= 2, f"{name}: no key body lines found"
    return {f"{name} line {i}": line for i, line in enumerate(lines)}


def pgp_secrets(prefix: str, keypair: KeyPair) -> Secrets:
    return {f"{prefix} passphrase": keypair.passphrase,
            **key_lines(f"{prefix} private key", keypair.private_key, keypair.public_key)}


def link_secrets(url: str, label: str) -> Secrets:
    """A pre-signed link's bearer parts: the token in its path, the query string, the signature."""
    parts = urlsplit(url)
    token = parts.path.rsplit("/", 1)[-1].split(".")[0]
    signature = parse_qs(parts.query)["X-Amz-Signature"][0]
    return {f"{label} token": token, f"{label} query": parts.query, f"{label} signature": signature}


def export_links(pipeline, dag_run) -> list[str]:
    """The download links Braze handed out in this run (from the object prefixes in XCom)."""
    urls = []
    for ti in dag_run.get_task_instances():
        if ti.task_id != "segment.start_export":
            continue
        value = ti.xcom_pull(task_ids=ti.task_id, map_indexes=ti.map_index)
        if isinstance(value, dict) and value.get("object_prefix") and value.get("sealed_url"):
            urls.append(pipeline.braze.export_info(value["object_prefix"]).url)
    return urls


# ------------------------------------------------------------------------------------------------
# Where to look
# ------------------------------------------------------------------------------------------------
@pytest.fixture
def info_log():
    """Every Python log record at INFO and above, as a log file would hold it (with tracebacks)."""
    handler = RecordingHandler(logging.INFO)
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    yield handler
    root.removeHandler(handler)
    root.setLevel(old_level)


def xcom_rows(db: Path) -> list[tuple]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return conn.execute("SELECT dag_id, run_id, task_id, map_index, key, value FROM xcom").fetchall()


def everywhere(pipeline, secrets: Secrets, *, output: str, log_text: str, pgp_decrypt=None) -> list:
    """Findings in every place listed in the module docstring; also asserts each place held something."""
    findings = []
    findings += in_text("stdout/stderr", output, secrets)
    findings += in_text("Python logging (INFO)", log_text, secrets)
    logs, _ = in_tree(pipeline.airflow_home / "logs", secrets)
    findings += logs
    rows = xcom_rows(pipeline.db)
    assert rows, "no XCom rows: the runs did not push anything?"
    for row in rows:
        findings += in_text(f"XCom {row[:5]}", json.dumps(row, default=str), secrets)
    db_findings, counts = in_database(pipeline.db, secrets)
    assert counts.get("task_instance") and counts.get("dag_run"), counts
    assert counts.get("connection", 0) == 0, "connections must come from AIRFLOW_CONN_* only in these tests"
    findings += db_findings
    for root in (pipeline.state_dir, pipeline.quarantine_dir, pipeline.work_dir, pipeline.upload_dir,
                 pipeline.landing):
        tree, _ = in_tree(root, secrets, pgp_decrypt=pgp_decrypt)
        findings += tree
    return findings


def pgp_decrypter(keypair: KeyPair):
    """Decrypts what was encrypted for `keypair` (the delivered .pgp files), None for anything else."""
    import tempfile

    from include.clients.pgp.files import decrypt_file

    def decrypt(data: bytes) -> bytes | None:
        with tempfile.TemporaryDirectory() as tmp:
            src, dst = Path(tmp) / "in.pgp", Path(tmp) / "out"
            src.write_bytes(data)
            try:
                decrypt_file(src, dst, keypair.private_key, keypair.passphrase)
            except Exception:  # noqa: BLE001 - not for this key / not PGP: nothing to add
                return None
            return dst.read_bytes()

    return decrypt


# ------------------------------------------------------------------------------------------------
# The scanner finds what it looks for (else an empty result would prove nothing)
# ------------------------------------------------------------------------------------------------
def test_the_scanner_finds_secrets_in_every_place_it_searches(tmp_path):
    import gzip
    import zipfile

    import pyarrow as pa
    import pyarrow.parquet as pq

    secret = distinct("planted")
    (tmp_path / "plain.txt").write_text(f"x {secret} y")
    (tmp_path / "a.gz").write_bytes(gzip.compress(secret.encode()))
    with zipfile.ZipFile(tmp_path / "a.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("m.csv", secret)
    pq.write_table(pa.table({"v": [secret]}), tmp_path / "a.parquet", compression="zstd")
    (tmp_path / f"name-{secret}").write_text("")
    found, files = in_tree(tmp_path, {"planted": secret})
    assert files == 5
    hits = {where.split(" (")[0] for where, _ in found}
    assert hits == {f"content of {tmp_path / n}" for n in ("plain.txt", "a.gz", "a.zip", "a.parquet")} | \
        {f"name of an entry in {tmp_path}"}
    assert any("(parquet rows)" in where for where, _ in found) and any("(gunzipped)" in w for w, _ in found)

    db = tmp_path / "t.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE t (a TEXT, b BLOB)")
        conn.execute("INSERT INTO t VALUES (?, ?)", ("none", gzip.compress(secret.encode())))
    assert in_database(db, {"planted": secret})[0] == [("DB table t row 0 (gunzipped)", "planted")]


# ------------------------------------------------------------------------------------------------
# Successful runs of both DAGs
# ------------------------------------------------------------------------------------------------
def test_real_runs_of_both_dags_leave_no_secret_anywhere(pipeline, monkeypatch, capfd, info_log):
    braze_pgp = make_keypair("sec-braze-drop", passphrase=distinct("pgp"))
    lytics_pgp = make_keypair("sec-lytics-delivery", passphrase=distinct("lyt-pgp"))
    pipeline.setenv_conn("braze_pgp", {"conn_type": "generic", "password": braze_pgp.passphrase,
                                       "extra": {"private_key": braze_pgp.private_key}})
    pipeline.setenv_conn("lytics_pgp", {"conn_type": "generic", "extra": {"public_key": lytics_pgp.public_key}})

    from include.clients.pgp.files import encrypt_file

    pipeline.braze.add_segment(SegmentSpec("seg_sec_api", 1_200, missing_id_every=97))
    drop_spec = SegmentSpec("seg_sec_drop", 600)
    folder = pipeline.landing / "seg_sec_drop" / "2026-11-23"
    folder.mkdir(parents=True)
    dashboard_zip(pipeline.tmp / "users-d1.zip", drop_spec)
    encrypt_file(pipeline.tmp / "users-d1.zip", folder / "users-d1.zip.pgp", braze_pgp.public_key)
    (pipeline.tmp / "users-d1.zip").unlink()
    pipeline.set_segments([
        # api source, pre-signed link, shaped by 2 processes, gzip, PGP-encrypted, SFTP with a private key
        {"name": "api_key_auth", "segment_id": "seg_sec_api", "compression": "gzip", "max_rejected_share": 0.5,
         "pgp": {"encrypt_conn_id": "lytics_pgp"}, "columns": COLUMNS},
        # a PGP-encrypted drop decrypted with a passphrase-protected key, zip, SFTP with a password
        {"name": "drop_pw_auth", "segment_id": "seg_sec_drop", "source": "drop", "compression": "zip",
         "sftp_conn_id": "lytics_sftp_pw",
         "drop": {"path": str(pipeline.landing / "{segment_id}" / "{ds}"), "pattern": "users-*.zip*"},
         "pgp": {"decrypt_conn_id": "braze_pgp"}, "columns": {"user_id": "user_id", "email": "email"}},
    ])
    members = sorted(pipeline.lytics.store.members("s2"))
    from sandbox.lytics_members import braze_id

    pipeline.braze.invalid_external_ids = {braze_id(i) for i in members[:3]}  # dead letters

    segments_run = pipeline.run_segments()
    assert segments_run.state == "success", states(segments_run)
    dry = pipeline.run_audiences(1, dry_run=True)
    assert dry.state == "success", states(dry)
    real = pipeline.run_audiences(2)
    assert real.state == "success", states(real)

    # The runs really produced what is searched: deliveries, quarantine, snapshots, dead letters, payloads.
    uploaded = sorted(p.name for p in pipeline.upload_dir.iterdir())
    assert uploaded == ["api_key_auth_20261123.csv.gz.pgp", "api_key_auth_20261123.csv.gz.pgp.sha256",
                        "drop_pw_auth_20261123.csv.zip", "drop_pw_auth_20261123.csv.zip.sha256"]
    assert list(pipeline.quarantine_dir.rglob("*.quarantine.csv"))
    assert list(pipeline.state_dir.glob("dead_letter/pending/*.parquet"))
    assert list(pipeline.state_dir.glob("runs/*/planned_payloads.jsonl"))
    assert list(pipeline.state_dir.glob("audiences/*/snapshots/*.parquet"))

    links = export_links(pipeline, segments_run)
    assert len(links) == 1
    secrets = check_secrets({
        "Braze API key": pipeline.braze_key,
        "Lytics token": pipeline.lytics_token,
        "SFTP password": pipeline.sshd.password,
        **key_lines("SFTP private key", pipeline.sshd.private_key_pem),
        **pgp_secrets("Braze PGP", braze_pgp),
        **pgp_secrets("Lytics PGP", lytics_pgp),
        **link_secrets(links[0], "pre-signed link"),
    })
    out = capfd.readouterr()
    assert "Segment api_key_auth delivered" in out.out + out.err + info_log.text  # the capture works
    findings = everywhere(pipeline, secrets, output=out.out + out.err, log_text=info_log.text,
                          pgp_decrypt=pgp_decrypter(lytics_pgp))
    assert findings == []


# ------------------------------------------------------------------------------------------------
# Failing variants: wrong keys, an expired link
# ------------------------------------------------------------------------------------------------
def test_failed_runs_leave_no_secret_in_errors_logs_db_or_files(pipeline, monkeypatch, capfd, info_log):
    """One run, three segments failing three ways: the link expired before the export was ready, a
    rejected (wrong) Braze API key, a drop encrypted for another PGP key than the connection's."""
    right = make_keypair("sec-right", passphrase=distinct("pgp-right"))
    wrong = make_keypair("sec-wrong", passphrase=distinct("pgp-wrong"))
    wrong_api_key = distinct("brz-wrong")
    pipeline.setenv_conn("braze_wrong", {"conn_type": "http", "host": pipeline.braze.url, "password": wrong_api_key})
    pipeline.setenv_conn("braze_pgp", {"conn_type": "generic", "password": wrong.passphrase,
                                       "extra": {"private_key": wrong.private_key}})
    from include.clients.pgp.files import encrypt_file

    folder = pipeline.landing / "seg_sec_wrong" / "2026-11-23"
    folder.mkdir(parents=True)
    dashboard_zip(pipeline.tmp / "users-w.zip", SegmentSpec("seg_sec_wrong", 50))
    encrypt_file(pipeline.tmp / "users-w.zip", folder / "users-w.zip.pgp", right.public_key)
    (pipeline.tmp / "users-w.zip").unlink()

    # A link valid for 0.3 s, ready after 2 s: the second poke finds it expired.
    with BrazeSandbox(pipeline.braze_key, [SegmentSpec("seg_sec_exp", 50), SegmentSpec("seg_sec_auth", 50)],
                      export_delay=2.0, link_ttl=0.3) as expiring:
        pipeline.setenv_conn("braze_default", {"conn_type": "http", "host": expiring.url,
                                               "password": pipeline.braze_key})
        pipeline.setenv_conn("braze_wrong", {"conn_type": "http", "host": expiring.url, "password": wrong_api_key})
        pipeline.set_segments([
            {"name": "expired_link", "segment_id": "seg_sec_exp", "columns": COLUMNS},
            {"name": "wrong_api_key", "segment_id": "seg_sec_auth", "braze_conn_id": "braze_wrong", "columns": COLUMNS},
            {"name": "wrong_pgp_key", "segment_id": "seg_sec_wrong", "source": "drop",
             "drop": {"path": str(pipeline.landing / "{segment_id}" / "{ds}"), "pattern": "users-*"},
             "pgp": {"decrypt_conn_id": "braze_pgp"}, "columns": {"user_id": "user_id"}},
        ])
        dag_run = pipeline.run_segments()
        links = [info.url for info in (expiring.export_info(p) for p in _prefixes(dag_run)) if info.url]

    assert dag_run.state == "failed"
    failed = {ti.rendered_map_index: ti.task_id for ti in dag_run.get_task_instances() if ti.state == "failed"}
    assert failed == {"expired_link": "segment.wait_for_export", "wrong_api_key": "segment.start_export",
                      "wrong_pgp_key": "segment.transfer", None: "summarize"}
    assert len(links) == 1
    out = capfd.readouterr()
    shown = out.out + out.err + info_log.text
    # The exceptions (with their tracebacks) are in what was captured: that is where they are searched.
    assert "has expired" in shown and "answered 401" in shown and "is encrypted for key ID(s)" in shown
    secrets = check_secrets({
        "Braze API key": pipeline.braze_key,
        "wrong Braze API key": wrong_api_key,
        **key_lines("SFTP private key", pipeline.sshd.private_key_pem),
        **pgp_secrets("right PGP", right),
        **pgp_secrets("wrong PGP", wrong),
        **link_secrets(links[0], "expired link"),
    })
    assert everywhere(pipeline, secrets, output=out.out + out.err, log_text=info_log.text) == []


def _prefixes(dag_run) -> list[str]:
    prefixes = []
    for ti in dag_run.get_task_instances():
        if ti.task_id == "segment.start_export" and ti.state == "success":
            value = ti.xcom_pull(task_ids=ti.task_id, map_indexes=ti.map_index)
            if value.get("object_prefix"):  # (a drop has none)
                prefixes.append(value["object_prefix"])
    return prefixes


def test_exceptions_of_the_clients_hold_no_secret(sftp_upload_dir, tmp_path):
    """The typed errors of the clients, with their whole traceback chain (causes and contexts), for: an
    expired pre-signed link, a rejected API key / token, a wrong PGP key or passphrase, a wrong SFTP
    password or private key."""
    from dataclasses import replace

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from include.clients.braze.export import BrazeExportClient, ExportLinkExpired
    from include.clients.lytics.scan import LyticsClient
    from include.clients.pgp.files import PgpError, decrypt_file, encrypt_file
    from include.clients.sftp import SftpSettings, check_target
    from include.common.errors import AuthError
    from include.common.retry import RetryPolicy
    from sandbox.lytics_server import LyticsSandbox

    once = RetryPolicy(attempts=1)
    key, token = distinct("brz"), distinct("lyt")
    raised: list[BaseException] = []

    def expect(error_type, call):
        with pytest.raises(error_type) as info:
            call()
        raised.append(info.value)

    with BrazeSandbox(key, [SegmentSpec("seg_x", 10)], export_delay=0.0, link_ttl=0.2) as braze:
        client = BrazeExportClient(braze.url, key, policy=once)
        url = client.start_segment_export("seg_x", ["external_id"]).url
        import time

        time.sleep(0.4)
        expect(ExportLinkExpired, lambda: client.export_ready(url))
        expect(ExportLinkExpired, lambda: client.download(url, tmp_path / "export.zip"))
        wrong_key = distinct("brz-wrong")
        expect(AuthError, lambda: BrazeExportClient(braze.url, wrong_key, policy=once).start_segment_export(
            "seg_x", ["external_id"]))
    with LyticsSandbox(token) as lytics:
        wrong_token = distinct("lyt-wrong")
        expect(AuthError, lambda: LyticsClient(lytics.url, wrong_token, policy=once).scan_ids("x"))

    right = make_keypair("sec-exc-right", passphrase=distinct("pgp-right"))
    wrong = make_keypair("sec-exc-wrong", passphrase=distinct("pgp-wrong"))
    (tmp_path / "plain.csv").write_text("user_id\nu1\n")
    encrypt_file(tmp_path / "plain.csv", tmp_path / "plain.csv.pgp", right.public_key)
    expect(PgpError, lambda: decrypt_file(tmp_path / "plain.csv.pgp", tmp_path / "o1", wrong.private_key,
                                          wrong.passphrase))
    bad_passphrase = distinct("pgp-typo")
    expect(PgpError, lambda: decrypt_file(tmp_path / "plain.csv.pgp", tmp_path / "o2", right.private_key,
                                          bad_passphrase))

    sshd = sftp_upload_dir
    good = SftpSettings(host=sshd.host, port=sshd.port, username=sshd.password_user, password=sshd.password,
                        host_key=sshd.host_key_line)
    wrong_password = distinct("sftp-wrong")
    expect(AuthError, lambda: check_target(replace(good, password=wrong_password), "/upload"))
    other_key = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()).decode()
    expect(AuthError, lambda: check_target(replace(good, username=sshd.key_user, password=None,
                                                   private_key=other_key), "/upload"))

    secrets = check_secrets({
        "Braze API key": key, "wrong Braze API key": wrong_key, "Lytics token": token,
        "wrong Lytics token": wrong_token, "bad passphrase": bad_passphrase, "SFTP password": sshd.password,
        "wrong SFTP password": wrong_password,
        **link_secrets(url, "expired link"),
        **pgp_secrets("right PGP", right), **pgp_secrets("wrong PGP", wrong),
        **key_lines("unknown SFTP private key", other_key),
    })
    assert len(raised) == 8
    findings = [f for i, exc in enumerate(raised)
                for f in in_text(f"exception {i} ({type(exc).__name__})", exception_text(exc), secrets)]
    assert findings == []
