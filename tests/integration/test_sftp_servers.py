"""Both test SFTP servers, driven with paramiko the way the delivery code will drive them.

- ``sshd``: a real OpenSSH sshd (tests/sshd_server.py; root + openssh-server), marked ``sshd``;
- ``demo``: the pure-Python asyncssh server of the local demo (sandbox/sftp_server.py).
"""

from __future__ import annotations

import base64
import io
import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import paramiko
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from sandbox.sftp_server import DemoSftpServer
from tests.sshd_server import OpenSshServer, _alive, _process_tree

PROJECT_ROOT = Path(__file__).resolve().parents[2]


# -- helpers --------------------------------------------------------------------------------------
def key_from_line(line: str) -> paramiko.PKey:
    key_type, data = line.split()[:2]
    return paramiko.PKey.from_type_string(key_type, base64.b64decode(data))


def ssh_client(
    host: str,
    port: int,
    username: str,
    *,
    password: str | None = None,
    pkey: paramiko.PKey | None = None,
    host_key_line: str | None = None,
) -> paramiko.SSHClient:
    """Connect with host-key pinning: the pinned key or nothing (RejectPolicy, no known_hosts)."""
    client = paramiko.SSHClient()
    if host_key_line is not None:
        key = key_from_line(host_key_line)
        client.get_host_keys().add(f"[{host}]:{port}", key.get_name(), key)
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    try:
        client.connect(
            host,
            port,
            username,
            password=password,
            pkey=pkey,
            look_for_keys=False,
            allow_agent=False,
            timeout=10,
            banner_timeout=10,
            auth_timeout=10,
        )
    except BaseException:
        client.close()
        raise
    return client


def _new_ed25519_pem() -> str:
    key = Ed25519PrivateKey.generate()
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    ).decode()


# An unrelated ed25519 key: "some other server's host key" / "someone else's client key".
_OTHER_ED25519_PEM = _new_ed25519_pem()


def other_host_key_line() -> str:
    key = paramiko.Ed25519Key.from_private_key(io.StringIO(_OTHER_ED25519_PEM))
    return f"{key.get_name()} {key.get_base64()}"


@dataclass
class Target:
    """One SFTP server under test, as the delivery code sees it."""

    name: str
    host: str
    port: int
    user: str
    password: str
    host_key_line: str
    local_root: Path  # local path of the remote "/"

    def connect(self, **kw) -> paramiko.SSHClient:
        kw.setdefault("password", self.password)
        kw.setdefault("host_key_line", self.host_key_line)
        return ssh_client(self.host, self.port, self.user, **kw)


# -- fixtures -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def demo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoSftpServer]:
    root = tmp_path_factory.mktemp("demo-sftp")
    with DemoSftpServer(root, password="demo-pass") as srv:
        yield srv


@pytest.fixture
def demo_target(demo_server: DemoSftpServer) -> Target:
    for child in demo_server.root.iterdir():
        if child.is_dir():
            shutil.rmtree(child)
        else:
            child.unlink()
    (demo_server.root / "upload").mkdir()
    (demo_server.root / "inbound").mkdir()
    return Target(
        "demo",
        demo_server.host,
        demo_server.port,
        demo_server.username,
        demo_server.password,
        demo_server.host_key_line,
        demo_server.root,
    )


@pytest.fixture(params=[pytest.param("sshd", marks=pytest.mark.sshd), "demo"])
def target(request: pytest.FixtureRequest) -> Target:
    if request.param == "demo":
        return request.getfixturevalue("demo_target")
    srv: OpenSshServer = request.getfixturevalue("sftp_upload_dir")
    return Target("sshd", srv.host, srv.port, srv.password_user, srv.password, srv.host_key_line, srv.chroot)


# -- both servers ---------------------------------------------------------------------------------
def test_password_login_with_pinned_host_key(target: Target) -> None:
    with target.connect() as client, client.open_sftp() as sftp:
        assert {"upload", "inbound"} <= set(sftp.listdir("/"))


def test_wrong_password_is_refused(target: Target) -> None:
    with pytest.raises(paramiko.AuthenticationException):
        target.connect(password="not-the-password")


def test_different_host_key_is_refused(target: Target) -> None:
    with pytest.raises(paramiko.BadHostKeyException):
        target.connect(host_key_line=other_host_key_line())


def test_unknown_host_is_refused(target: Target) -> None:
    with pytest.raises(paramiko.SSHException, match="not found in known_hosts"):
        target.connect(host_key_line=None)


def test_putfo_confirm_then_posix_rename_replaces_existing(target: Target) -> None:
    final = "/upload/braze_users_20261123.csv"
    tmp = "/upload/.braze_users_20261123.csv.part"
    old, new = b"id\n1\n", b"id\n" + b"".join(b"%d\n" % i for i in range(100_000))
    with target.connect() as client, client.open_sftp() as sftp:
        sftp.putfo(io.BytesIO(old), final, confirm=True)
        attrs = sftp.putfo(io.BytesIO(new), tmp, confirm=True)
        assert attrs.st_size == len(new)
        # Plain SFTP rename refuses to overwrite ...
        with pytest.raises(OSError):
            sftp.rename(tmp, final)
        # ... posix-rename@openssh.com replaces atomically.
        sftp.posix_rename(tmp, final)
        assert sftp.stat(final).st_size == len(new)
        assert sorted(sftp.listdir("/upload")) == ["braze_users_20261123.csv"]
        with sftp.open(final, "rb") as f:
            assert f.read() == new
    assert (target.local_root / "upload" / "braze_users_20261123.csv").read_bytes() == new


def test_mkdir_stat_listdir_remove(target: Target) -> None:
    with target.connect() as client, client.open_sftp() as sftp:
        sftp.mkdir("/upload/2026-11-23")
        sftp.putfo(io.BytesIO(b"x" * 10), "/upload/2026-11-23/a.csv", confirm=True)
        sftp.putfo(io.BytesIO(b"{}"), "/upload/2026-11-23/a.csv.sha256.json", confirm=True)
        assert sorted(sftp.listdir("/upload/2026-11-23")) == ["a.csv", "a.csv.sha256.json"]
        assert sftp.stat("/upload/2026-11-23/a.csv").st_size == 10
        sftp.remove("/upload/2026-11-23/a.csv")
        with pytest.raises(FileNotFoundError):
            sftp.stat("/upload/2026-11-23/a.csv")
        with pytest.raises(FileNotFoundError):
            sftp.remove("/upload/2026-11-23/a.csv")
    assert (target.local_root / "upload" / "2026-11-23" / "a.csv.sha256.json").read_bytes() == b"{}"


def test_chroot_confines_the_user(target: Target) -> None:
    with target.connect() as client, client.open_sftp() as sftp:
        assert sorted(sftp.listdir("/")) == ["inbound", "upload"]
        assert sftp.normalize("/..") == "/"
        assert sftp.normalize("../../..") == "/"
        for path in ("/etc", "/etc/passwd", "/../../etc/passwd", "../../../etc/passwd"):
            with pytest.raises(FileNotFoundError):
                sftp.stat(path)
        assert sorted(sftp.listdir("/../..")) == ["inbound", "upload"]


# -- sshd only ------------------------------------------------------------------------------------
@pytest.mark.sshd
def test_sshd_key_auth_and_shared_upload_dir(sftp_upload_dir: OpenSshServer) -> None:
    srv = sftp_upload_dir
    pkey = paramiko.Ed25519Key.from_private_key(io.StringIO(srv.private_key_pem))
    with (
        ssh_client(
            srv.host, srv.port, srv.password_user, password=srv.password, host_key_line=srv.host_key_line
        ) as pw_client,
        pw_client.open_sftp() as pw_sftp,
    ):
        pw_sftp.putfo(io.BytesIO(b"old"), "/upload/x.csv", confirm=True)
    with (
        ssh_client(
            srv.host, srv.port, srv.key_user, pkey=pkey, host_key_line=srv.host_key_line
        ) as key_client,
        key_client.open_sftp() as key_sftp,
    ):
        key_sftp.putfo(io.BytesIO(b"newer"), "/upload/x.csv.part", confirm=True)
        key_sftp.posix_rename("/upload/x.csv.part", "/upload/x.csv")  # over the other user's file
    local = srv.chroot / "upload" / "x.csv"
    assert local.read_bytes() == b"newer"
    assert local.stat().st_uid == pwd.getpwnam(srv.key_user).pw_uid


@pytest.mark.sshd
def test_sshd_key_user_has_no_password_and_wrong_key_is_refused(sshd: OpenSshServer) -> None:
    with pytest.raises(paramiko.AuthenticationException):
        ssh_client(
            sshd.host, sshd.port, sshd.key_user, password=sshd.password, host_key_line=sshd.host_key_line
        )
    other = paramiko.Ed25519Key.from_private_key(io.StringIO(_OTHER_ED25519_PEM))
    with pytest.raises(paramiko.AuthenticationException):
        ssh_client(sshd.host, sshd.port, sshd.key_user, pkey=other, host_key_line=sshd.host_key_line)


@pytest.mark.sshd
def test_sshd_refuses_port_forwarding(sshd: OpenSshServer) -> None:
    with ssh_client(
        sshd.host, sshd.port, sshd.password_user, password=sshd.password, host_key_line=sshd.host_key_line
    ) as client:
        transport = client.get_transport()
        assert transport is not None
        with pytest.raises(paramiko.ChannelException):
            transport.open_channel("direct-tcpip", ("127.0.0.1", 22), ("127.0.0.1", 0), timeout=10)


@pytest.mark.sshd
def test_sshd_conn_json_shape(sshd: OpenSshServer) -> None:
    pw = json.loads(sshd.conn_json(sshd.password_user, auth="password"))
    assert pw == {
        "conn_type": "sftp",
        "host": "127.0.0.1",
        "port": sshd.port,
        "login": sshd.password_user,
        "password": sshd.password,
        "extra": {"host_key": sshd.host_key_line, "no_host_key_check": False},
    }
    key = json.loads(sshd.conn_json(sshd.key_user, auth="key", host_key=None))
    assert "password" not in key
    assert key["extra"] == {"private_key": sshd.private_key_pem, "no_host_key_check": False}
    unchecked = json.loads(sshd.conn_json(sshd.key_user, auth="key", no_host_key_check=True))
    assert unchecked["extra"] == {"private_key": sshd.private_key_pem, "no_host_key_check": True}


@pytest.mark.sshd
@pytest.mark.parametrize("auth", ["password", "key"])
def test_sshd_conn_json_works_with_airflow_sftp_hook(
    sftp_upload_dir: OpenSshServer, auth: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow.providers.sftp.hooks.sftp import SFTPHook

    srv = sftp_upload_dir
    user = srv.password_user if auth == "password" else srv.key_user
    monkeypatch.setenv("AIRFLOW_CONN_TEST_SFTP", srv.conn_json(user, auth=auth))
    hook = SFTPHook(ssh_conn_id="test_sftp")
    with hook.get_managed_conn() as sftp:
        sftp.putfo(io.BytesIO(b"via airflow"), "/inbound/hook.txt", confirm=True)
    assert (srv.chroot / "inbound" / "hook.txt").read_bytes() == b"via airflow"

    monkeypatch.setenv(
        "AIRFLOW_CONN_TEST_SFTP", srv.conn_json(user, auth=auth, host_key=other_host_key_line())
    )
    # SSHHook retries *every* connect failure (bad host key too) 3x with 3-5 s sleeps; one attempt here.
    with pytest.raises(paramiko.BadHostKeyException):
        with SFTPHook(ssh_conn_id="test_sftp", conn_retry_attempts=1).get_managed_conn() as sftp:
            sftp.listdir("/")


@pytest.mark.sshd
def test_sshd_stop_kills_everything_and_removes_base_dir(sshd: OpenSshServer) -> None:
    """A second server, with a connection still open at stop(): nothing may survive."""
    srv = OpenSshServer().start()
    try:
        assert srv.host_key_line != sshd.host_key_line  # fresh host key per server
        base, port, pid = srv.base, srv.port, srv.pid
        assert base is not None and pid is not None
        assert base.stat().st_uid == 0 and oct(base.stat().st_mode & 0o777) == "0o755"
        client = ssh_client(
            srv.host, srv.port, srv.password_user, password=srv.password, host_key_line=srv.host_key_line
        )
        sftp = client.open_sftp()
        sftp.listdir("/")
        tree = _process_tree(pid)
        assert len(tree) >= 2  # the connection's monitor + its unprivileged child
    finally:
        srv.stop()
    try:
        assert not _alive(pid)
        assert [p for p, _ in tree if _alive(p)] == []
        # ... and reaped, not left as zombies (PID 1 may reap the last ones a little later).
        deadline = time.monotonic() + 10
        while any(Path("/proc", str(p)).exists() for p, _ in tree) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [p for p, _ in tree if Path("/proc", str(p)).exists()] == []
        assert not base.exists()
        with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
            pass
        srv.stop()  # idempotent
    finally:
        client.close()


@pytest.mark.sshd
def test_sshd_start_retries_when_the_probed_port_is_taken(
    sshd: OpenSshServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tests.sshd_server as sshd_server

    real_free_port = sshd_server._free_port
    ports = iter([sshd.port])  # first probe: a port sshd cannot bind (the session server has it)
    monkeypatch.setattr(sshd_server, "_free_port", lambda: next(ports, None) or real_free_port())
    with OpenSshServer() as srv:
        assert srv.port != sshd.port
        assert "Address already in use" in srv.log_path.read_text()
        with ssh_client(
            srv.host, srv.port, srv.password_user, password=srv.password, host_key_line=srv.host_key_line
        ):
            pass


# -- demo server only ----------------------------------------------------------------------------
def test_demo_refuses_exec(demo_target: Target) -> None:
    with demo_target.connect() as client:
        with pytest.raises(paramiko.SSHException):
            client.exec_command("cat /etc/passwd", timeout=10)


def test_demo_host_key_file_survives_restart(tmp_path: Path) -> None:
    key_file = tmp_path / "keys" / "host_ed25519"
    with DemoSftpServer(tmp_path / "root", password="p", host_key_file=key_file) as first:
        line = first.host_key_line
    assert oct(key_file.stat().st_mode & 0o777) == "0o600"
    with DemoSftpServer(tmp_path / "root", password="p", host_key_file=key_file) as second:
        assert second.host_key_line == line
        with ssh_client(second.host, second.port, "lytics", password="p", host_key_line=line) as client:
            client.open_sftp().listdir("/")
    with DemoSftpServer(tmp_path / "root", password="p") as fresh:
        assert fresh.host_key_line != line


def test_demo_stop_closes_open_connections(tmp_path: Path) -> None:
    srv = DemoSftpServer(tmp_path, password="p").start()
    client = ssh_client(srv.host, srv.port, "lytics", password="p", host_key_line=srv.host_key_line)
    try:
        sftp = client.open_sftp()
        sftp.listdir("/")
        srv.stop()
        assert not srv.running
        with pytest.raises((OSError, EOFError, paramiko.SSHException)):
            sftp.listdir("/")
        srv.stop()  # idempotent
    finally:
        client.close()


def test_demo_cli_runs_in_foreground(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sandbox.sftp_server",
            "--root",
            str(tmp_path),
            "--port",
            str(port),
            "--password",
            "cli-pass",
        ],
        cwd=PROJECT_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        host_key_line = None
        deadline = time.monotonic() + 30
        assert proc.stdout is not None
        while host_key_line is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            if line.startswith("host_key: "):
                host_key_line = line.removeprefix("host_key: ").strip()
        assert host_key_line and host_key_line.startswith("ssh-ed25519 AAAA"), proc.stdout.read()
        with ssh_client("127.0.0.1", port, "lytics", password="cli-pass", host_key_line=host_key_line) as c:
            with c.open_sftp() as sftp:
                sftp.putfo(io.BytesIO(b"cli"), "/x.txt", confirm=True)
        assert (tmp_path / "x.txt").read_bytes() == b"cli"
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0
