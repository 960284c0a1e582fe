"""The local stack end to end, as separate processes: scripts/up.sh, the UI's API, both DAGs run by the
scheduler through LocalExecutor (parallelism 4) with the audience state in S3 (moto), a 3-day
backfill, and scripts/stop.sh leaving nothing behind.

The tests share one stack (module fixture in conftest.py) and run in file order; the last one stops it.
The stack is started with --no-schedule: unpausing a DAG then starts no scheduled run of its own, so
only the runs a test creates run (Airflow 3 runs no run of a paused DAG, manual or backfill: the
scheduler only picks queued runs of unpaused DAGs).
"""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import time
from pathlib import Path

import boto3
import paramiko
import pytest
import requests

from sandbox import stack_procs
from sandbox.stack_services import ALL_PROCS, REPO, S3_BUCKET

pytestmark = [pytest.mark.slow, pytest.mark.stack, pytest.mark.timeout(1800)]

DAGS = ("braze_segments_to_lytics", "lytics_audiences_to_braze")
RUN_TIMEOUT = 600  # one DAG run on a loaded 2-core machine, generously
MANUAL_DATE = "2026-11-20"
BACKFILL_DATES = ("2026-11-01", "2026-11-02", "2026-11-03")
ALL_USERS_COLUMNS = ["braze_id", "user_id", "email", "first_name", "last_name", "phone", "country", "city",
                     "language", "birth_date", "created_at", "tier", "loyalty_points"]  # include/config/braze_lytics.yaml


def _wait_runs(stack, dag_id: str, run_ids: list[str] | None = None, *, run_type: str | None = None,
               count: int | None = None, timeout: float = RUN_TIMEOUT) -> list[dict]:
    """Wait until the runs (by id, or all `count` runs of `run_type`) are finished; return them."""
    deadline = time.monotonic() + timeout
    runs: list[dict] = []
    while time.monotonic() < deadline:
        params = {"limit": 100}
        if run_type:
            params["run_type"] = run_type
        resp = stack.api("GET", f"/dags/{dag_id}/dagRuns", params=params)
        resp.raise_for_status()
        runs = resp.json()["dag_runs"]
        if run_ids is not None:
            runs = [r for r in runs if r["dag_run_id"] in run_ids]
        enough = len(runs) == (len(run_ids) if run_ids is not None else count)
        if enough and all(r["state"] in ("success", "failed") for r in runs):
            return runs
        time.sleep(3)
    states = {r["dag_run_id"]: r["state"] for r in runs}
    pytest.fail(f"{dag_id}: runs not finished within {timeout}s: {states}; logs in {stack.state_dir}/logs and "
                f"{stack.state_dir}/airflow/logs")


def _task_instances(stack, dag_id: str, run_id: str) -> list[dict]:
    resp = stack.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances", params={"limit": 100})
    resp.raise_for_status()
    return resp.json()["task_instances"]


def _failed_tasks(stack, dag_id: str, run_id: str) -> list[str]:
    return [f"{t['task_id']}[{t['map_index']}]={t['state']}" for t in _task_instances(stack, dag_id, run_id)
            if t["state"] not in ("success", "skipped")]


def _unpause(stack, dag_id: str) -> None:
    resp = stack.api("PATCH", f"/dags/{dag_id}", json={"is_paused": False})
    assert resp.status_code == 200, resp.text
    assert resp.json()["is_paused"] is False


def _proc_env(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode(errors="replace").split("=", 1) for item in raw if b"=" in item)


# -------------------------------------------------------------------------------------------- a
def test_ui_mode(stack):
    out = stack.up_output
    for n in range(1, 7):
        assert f"[{n}/6]" in out  # progress lines while it works
    assert stack.url in out and "admin / admin" in out and "scripts/stop.sh" in out

    health = stack.api("GET", "/monitor/health").json()
    assert {k: v["status"] for k, v in health.items()} == {
        "metadatabase": "healthy", "scheduler": "healthy", "triggerer": "healthy", "dag_processor": "healthy"}

    bad = requests.post(f"{stack.url}/auth/token", json={"username": "admin", "password": "wrong"}, timeout=60)
    assert bad.status_code == 401
    assert stack.token()

    dags = {d["dag_id"]: d for d in stack.api("GET", "/dags", params={"limit": 100}).json()["dags"]}
    for dag_id in DAGS:
        assert dag_id in dags, sorted(dags)
        assert dags[dag_id]["is_paused"] is True  # paused at creation; up unpauses nothing

    conns = {c["connection_id"]: c for c in stack.api("GET", "/connections", params={"limit": 100}).json()["connections"]}
    assert {"braze_default", "lytics_default", "lytics_sftp", "aws_default"} <= set(conns)
    assert conns["braze_default"]["host"] == stack.info["braze_url"]
    assert conns["lytics_default"]["host"] == stack.info["lytics_url"]
    assert conns["lytics_sftp"]["port"] == stack.info["sftp_port"]
    assert '"host_key": "ssh-ed25519 ' in conns["lytics_sftp"]["extra"]
    assert stack.info["s3_url"] in conns["aws_default"]["extra"]
    pool = stack.api("GET", "/pools/braze_api").json()
    assert pool["slots"] == 4

    # The shape: LocalExecutor with parallelism >= 4 on PostgreSQL, run from the venv.
    env = _proc_env(stack.info["pids"]["airflow-scheduler"])
    assert env["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
    assert int(env["AIRFLOW__CORE__PARALLELISM"]) >= 4
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg://")
    assert env["PATH"].split(":")[0] == str(REPO / ".venv" / "bin")

    # up again: says so, starts nothing, changes nothing.
    before = {p.name: p.pid for p in stack.pid_files()}
    again = stack.script("up.sh", "--port", str(stack.port), "--no-schedule")
    assert again.returncode == 0, again.stdout
    assert "already running" in again.stdout
    assert {p.name: p.pid for p in stack.pid_files()} == before
    assert all(p.alive for p in stack.pid_files())


# -------------------------------------------------------------------------------------------- b
def test_both_dags_run_through_the_scheduler(stack):
    runs = {}
    for dag_id in DAGS:
        _unpause(stack, dag_id)
    for dag_id, logical_date in zip(DAGS, (f"{MANUAL_DATE}T00:00:00Z", None), strict=True):
        resp = stack.api("POST", f"/dags/{dag_id}/dagRuns", json={"logical_date": logical_date, "conf": {}})
        assert resp.status_code == 200, resp.text
        runs[dag_id] = resp.json()["dag_run_id"]
    for dag_id, run_id in runs.items():
        (run,) = _wait_runs(stack, dag_id, [run_id])
        assert run["state"] == "success", _failed_tasks(stack, dag_id, run_id)

    scheduler_pid = stack.info["pids"]["airflow-scheduler"]
    for dag_id, run_id in runs.items():
        tis = [t for t in _task_instances(stack, dag_id, run_id) if t["state"] == "success"]
        pids = {t["pid"] for t in tis}
        assert None not in pids and scheduler_pid not in pids
        assert len(pids) == len(tis) > 1, f"{dag_id}: tasks did not run in processes of their own: {pids}"
        assert all(t["hostname"] for t in tis)

    # The audience state landed in the S3 bucket (moto), shared by all the worker processes.
    secrets = json.loads((stack.state_dir / "secrets.json").read_text())
    s3 = boto3.session.Session().client("s3", endpoint_url=stack.info["s3_url"], region_name="us-east-1",
                                        aws_access_key_id=secrets["s3_access_key"],
                                        aws_secret_access_key=secrets["s3_secret_key"])
    keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=S3_BUCKET)
            for o in page.get("Contents", [])]
    for slug in ("high_value", "churn_risk"):
        assert f"lytics-to-braze/audiences/{slug}/committed.json" in keys, keys
        assert any(k.startswith(f"lytics-to-braze/audiences/{slug}/") and k.endswith(".parquet") for k in keys), keys

    # The segment files landed on the SFTP server: read back over SFTP, the host key pinned.
    conn = stack.api("GET", "/connections/lytics_sftp").json()
    host_key = json.loads(conn["extra"])["host_key"]
    client = paramiko.SSHClient()
    client.get_host_keys().add(f"[127.0.0.1]:{conn['port']}", "ssh-ed25519",
                               paramiko.Ed25519Key(data=base64.b64decode(host_key.split()[1])))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.connect("127.0.0.1", conn["port"], username=conn["login"], password=secrets["sftp_password"],
                   look_for_keys=False, allow_agent=False, timeout=30)
    try:
        sftp = client.open_sftp()
        day = MANUAL_DATE.replace("-", "")
        names = set(sftp.listdir("/upload"))
        for name in (f"braze_users_{day}.csv", f"braze_vip_users_{day}.csv.gz"):
            assert name in names and f"{name}.sha256" in names, sorted(names)
            with sftp.open(f"/upload/{name}", "rb") as fh:
                data = fh.read()
            with sftp.open(f"/upload/{name}.sha256", "rb") as fh:
                assert fh.read().decode().split()[0] == hashlib.sha256(data).hexdigest()
        with sftp.open(f"/upload/braze_users_{day}.csv", "rb") as fh:
            header = fh.readline().decode().strip().split(",")
        assert set(header) == {*ALL_USERS_COLUMNS, "exported_at"}  # the order: next test
        assert len(data) > 1000
    finally:
        client.close()


def test_csv_header_keeps_the_configured_column_order(stack):
    path = Path(stack.info["sftp_root"]) / "upload" / f"braze_users_{MANUAL_DATE.replace('-', '')}.csv"
    with open(path, encoding="utf-8", newline="") as fh:
        header = fh.readline().strip().split(",")
    assert header == [*ALL_USERS_COLUMNS, "exported_at"]


# -------------------------------------------------------------------------------------------- c
def test_backfill_three_days(stack):
    dag_id = "braze_segments_to_lytics"
    _unpause(stack, dag_id)  # the scheduler runs no run of a paused DAG, backfill runs included
    cmd = (f"source {stack.state_dir}/env.sh && airflow backfill create --dag-id {dag_id} "
           f"--from-date {BACKFILL_DATES[0]} --to-date {BACKFILL_DATES[-1]}")
    result = subprocess.run(["bash", "-c", cmd], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr

    runs = _wait_runs(stack, dag_id, run_type="backfill", count=len(BACKFILL_DATES))
    assert sorted(r["logical_date"][:10] for r in runs) == list(BACKFILL_DATES)
    for r in runs:
        assert r["state"] == "success", (r["dag_run_id"], _failed_tasks(stack, dag_id, r["dag_run_id"]))
    upload = Path(stack.info["sftp_root"]) / "upload"
    for day in BACKFILL_DATES:
        name = f"braze_users_{day.replace('-', '')}.csv"
        assert (upload / name).is_file() and (upload / f"{name}.sha256").is_file(), sorted(p.name for p in upload.iterdir())
        assert (upload / f"braze_vip_users_{day.replace('-', '')}.csv.gz").is_file()
        with open(upload / name, encoding="utf-8", newline="") as fh:
            fh.readline()
            first_row = fh.readline()
        assert f"{day}T00:00:00" in first_row  # the timestamp column holds the run's own logical date


# -------------------------------------------------------------------------------------------- a (end)
def test_stop_leaves_no_process_behind(stack):
    procs = stack.pid_files()
    assert {p.name for p in procs} == set(ALL_PROCS)
    # Every process of the stack: the leaders and all they started (workers, log servers, backends).
    family = {pid for p in procs for pid in stack_procs._family(p.pid)}
    starts = {pid: stack_procs._start_time(pid) for pid in family}
    assert len(family) > len(procs)

    result = stack.script("stop.sh")
    assert result.returncode == 0, result.stdout
    assert "Traceback" not in result.stdout
    assert "Stopped 9 processes" in result.stdout, result.stdout
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(stack_procs.proc_alive(pid, starts[pid]) for pid in family):
        time.sleep(0.2)
    left = sorted(pid for pid in family if stack_procs.proc_alive(pid, starts[pid]))
    assert not left, f"still running after stop: {left}"
    assert not list((stack.state_dir / "pids").glob("*.pid"))

    again = stack.script("stop.sh")
    assert again.returncode == 0 and "Nothing is running" in again.stdout
