"""The stack's parts without the stack: the settings file and its loader, and stopping process trees.
Quick (seconds); the end-to-end tests are in test_stack.py."""

from __future__ import annotations

import signal
import socket
import sys
import textwrap
import time
from pathlib import Path

import pytest

from sandbox import stack_procs, stack_settings
from sandbox.stack_services import REPO

pytestmark = [pytest.mark.stack]

VALUES = {name: f"<{name}>" for name in stack_settings.PLACEHOLDERS}


def test_the_shipped_settings_file_loads_and_names_what_the_pipeline_needs():
    settings = stack_settings.load(REPO / "airflow_settings.yaml", VALUES)
    conns = {c["conn_id"]: c for c in settings["airflow"]["connections"]}
    assert set(conns) == {"braze_default", "lytics_default", "lytics_sftp", "aws_default"}
    assert conns["lytics_sftp"]["conn_extra"] == {"host_key": "<SFTP_HOST_KEY>"}
    assert conns["lytics_sftp"]["conn_port"] == "<SFTP_PORT>"
    assert [(p["pool_name"], p["pool_slot"]) for p in settings["airflow"]["pools"]] == [("braze_api", 4)]

    pipeline = stack_settings.pipeline_config(settings, REPO)
    assert pipeline["lytics_to_braze"]["state_url"] == "s3://<S3_BUCKET>/lytics-to-braze"
    assert pipeline["defaults"]["braze_conn_id"] == "braze_default"  # the base file's values stay
    assert pipeline["defaults"]["poll_interval_seconds"] == 5
    assert [s["name"] for s in pipeline["segments"]] == ["all_users", "vip_users"]
    sandbox = settings["braze_lytics"]["sandbox"]
    assert sandbox["lytics_churn_every_minutes"] > 0 and sandbox["braze_segments"] and sandbox["lytics_audiences"]


def test_an_unknown_placeholder_names_where_it_is(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("airflow:\n  connections:\n    - {conn_id: x, conn_type: http, conn_host: '${NOPE}'}\n")
    with pytest.raises(stack_settings.SettingsError, match=r"airflow\.connections\[0\]\.conn_host: unknown placeholder \$\{NOPE\}"):
        stack_settings.load(path, VALUES)


def test_request_bodies_for_the_rest_api():
    body = stack_settings._connection_body(
        {"conn_id": "c", "conn_type": "sftp", "conn_port": "2222", "conn_extra": {"host_key": "ssh-ed25519 AAAA"}}, "x")
    assert body == {"connection_id": "c", "conn_type": "sftp", "port": 2222, "extra": '{"host_key": "ssh-ed25519 AAAA"}'}
    assert stack_settings._pool_body({"pool_name": "p", "pool_slot": 4}, "x") == {"name": "p", "slots": 4}
    assert stack_settings._variable_body({"variable_name": "v", "variable_value": {"a": 1}}, "x") == {
        "key": "v", "value": '{"a": 1}'}
    with pytest.raises(stack_settings.SettingsError, match="pool_slot"):
        stack_settings._pool_body({"pool_name": "p"}, "airflow.pools[0]")


TREE = textwrap.dedent("""
    import os, signal, subprocess, sys, time
    # a child that ignores SIGTERM, and one that leaves the session (setsid); each says when it is set
    subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                      "open('ignoring', 'w').close(); time.sleep(600)"])
    subprocess.Popen([sys.executable, "-c", "import os, time; os.setsid(); open('escaped', 'w').close(); time.sleep(600)"])
    time.sleep(600)
""")


def test_stop_ends_the_whole_tree_even_what_ignores_sigterm_or_left_the_session(tmp_path: Path):
    proc = stack_procs.start("tree", [sys.executable, "-c", TREE], state_dir=tmp_path, env={}, cwd=tmp_path)
    deadline = time.monotonic() + 30
    while not ((tmp_path / "ignoring").exists() and (tmp_path / "escaped").exists()) and time.monotonic() < deadline:
        time.sleep(0.1)
    family = stack_procs._family(proc.pid)
    assert len(family) == 3
    assert stack_procs.read_pid_file(tmp_path / "pids" / "tree.pid") == proc
    assert (tmp_path / "logs" / "tree.log").exists()

    killed = stack_procs.stop_all([proc], grace=2, log=lambda _msg: None)
    assert killed == ["tree"]  # the SIGTERM-ignoring child needed SIGKILL
    assert not any(stack_procs.proc_alive(pid) for pid in family)
    assert not (tmp_path / "pids" / "tree.pid").exists()


def test_a_reused_pid_is_not_taken_for_the_process_of_a_pid_file(tmp_path: Path):
    proc = stack_procs.start("sleeper", [sys.executable, "-c", "import time; time.sleep(600)"], state_dir=tmp_path,
                             env={}, cwd=tmp_path, stop_signal=signal.SIGINT)
    try:
        assert proc.alive and proc.stop_signal == signal.SIGINT
        assert not stack_procs.proc_alive(proc.pid, (proc.start_time or 0) + 1)
    finally:
        stack_procs.stop_all([proc], grace=5)
    assert not proc.alive


def test_port_in_use():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert stack_procs.port_in_use("127.0.0.1", port)
    assert not stack_procs.port_in_use("127.0.0.1", stack_procs.free_port())
