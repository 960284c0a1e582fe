"""A real OpenSSH ``sshd`` with chrooted SFTP-only users, for tests (users and processes: sshd_system.py;
test-time directory and session tricks: sshd_dirs.py).

Needs root and ``/usr/sbin/sshd`` (``apt-get install -y openssh-server``; ``.ci/run`` does this).

Each :class:`OpenSshServer` gets its own base directory under ``/var/lib/braze-lytics-tests/`` (sshd's
``ChrootDirectory`` demands that every component of the path is root-owned and not group/world-writable,
which rules out ``/tmp``), its own freshly generated ed25519 host key, its own loopback port and its own
``sshd_config``::

    /var/lib/braze-lytics-tests/sshd-<random>/    root 0755
        sshd_config, sshd.pid, sshd.log, ssh_host_ed25519_key[.pub]
        authorized_keys/<user>                     root 0644
        chroot/                                    root 0755   <- what the SFTP users see as "/"
            upload/                                root:bltest 2775
            inbound/                               root:bltest 2775

Two throwaway system users are created once per machine and reused (``bltest_pw``: password auth,
``bltest_key``: public-key auth; shell ``/usr/sbin/nologin``, group ``bltest``). sshd only lets them use
``internal-sftp`` inside the chroot, no forwarding.

The password is random, generated once per machine and kept in a root-only file, so concurrent test
sessions on one machine agree on it, and it is not published in the repository (a system sshd on port 22,
if there is one, would otherwise accept it).

Usage::

    with OpenSshServer() as srv:
        client.connect(srv.host, srv.port, srv.password_user, srv.password)
        ...  # remote /upload/x.csv is srv.chroot / "upload" / "x.csv"
"""

from __future__ import annotations

import atexit
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Literal

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.sshd_dirs import TestDirsMixin
from tests.sshd_system import (
    KEY_USER,
    PASSWORD_USER,
    SSH_KEYGEN,
    SSHD,
    STATE_ROOT,
    _alive,
    _die_with_parent,
    _ensure_state_root,
    _ensure_users,
    _free_port,
    _machine_password,
    _pids_with_arg,
    _process_tree,
    _remove_stale_base_dirs,
    _run,
    _signal,
    _wait_gone,
)

_MISSING_HINT = "run `.ci/run`, which apt-installs openssh-server and runs the tests as root"

_UNSET = object()


class SshdUnavailable(RuntimeError):
    """This machine cannot run a test sshd (not root, or openssh-server not installed)."""


def check_available() -> None:
    """Raise :class:`SshdUnavailable` (a ``RuntimeError``) saying what is missing."""
    missing = []
    if os.geteuid() != 0:
        missing.append(f"root (running as uid {os.geteuid()})")
    if not SSHD.is_file():
        missing.append(f"{SSHD} (package openssh-server)")
    if shutil.which(SSH_KEYGEN) is None:
        missing.append("ssh-keygen (package openssh-client)")
    for tool in ("useradd", "groupadd", "usermod", "chpasswd"):
        if shutil.which(tool) is None and not Path("/usr/sbin", tool).exists():
            missing.append(f"{tool} (package passwd)")
    if missing:
        raise SshdUnavailable("A real sshd for tests needs " + ", ".join(missing) + f": {_MISSING_HINT}.")


class OpenSshServer(TestDirsMixin):
    """A throwaway OpenSSH sshd on 127.0.0.1 with two chrooted, SFTP-only users."""

    host = "127.0.0.1"
    password_user = PASSWORD_USER
    key_user = KEY_USER

    def __init__(self, *, start_timeout: float = 15.0) -> None:
        self.start_timeout = start_timeout
        self.base: Path | None = None
        self.port: int = 0
        self.password: str = ""
        self.host_key_line: str = ""
        self.private_key_pem: str = ""
        self.public_key_line: str = ""
        self._proc: subprocess.Popen[bytes] | None = None

    # -- paths ---------------------------------------------------------------------------------
    def _need_base(self) -> Path:
        if self.base is None:
            raise RuntimeError("OpenSshServer is not started")
        return self.base

    @property
    def chroot(self) -> Path:
        """Local path of the users' "/" (remote ``/upload/x`` is ``chroot / "upload" / "x"``)."""
        return self._need_base() / "chroot"

    @property
    def config_path(self) -> Path:
        return self._need_base() / "sshd_config"

    @property
    def log_path(self) -> Path:
        return self._need_base() / "sshd.log"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except (OSError, RuntimeError):
            return "(no log)"

    # -- lifecycle -----------------------------------------------------------------------------
    def __enter__(self) -> OpenSshServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> OpenSshServer:
        if self._proc is not None:
            raise RuntimeError("OpenSshServer already started")
        check_available()
        try:
            self._prepare()
            last_error: Exception | None = None
            for _attempt in range(3):  # the free port can be taken between probing and binding
                self.port = _free_port()
                self._write_config()
                try:
                    self._launch()
                    break
                except _PortTaken as e:
                    last_error = e
            else:
                raise RuntimeError(f"sshd could not bind a free port: {last_error}")
        except BaseException:
            self.stop()
            raise
        atexit.register(self.stop)
        return self

    def _prepare(self) -> None:
        self.password = _machine_password()
        _ensure_users(self.password)
        _ensure_state_root()
        _remove_stale_base_dirs()
        base = STATE_ROOT / f"sshd-{secrets.token_hex(6)}"
        base.mkdir(mode=0o755)
        self.base = base
        os.chmod(base, 0o755)  # umask-proof

        # Host key: fresh per server.
        host_key = base / "ssh_host_ed25519_key"
        _run(SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", "", "-f", str(host_key))
        self.host_key_line = " ".join(host_key.with_suffix(".pub").read_text().split()[:2])

        # Client key pair for the key user (OpenSSH-format PEM, what paramiko and Airflow's
        # `private_key` extra load).
        key = Ed25519PrivateKey.generate()
        self.private_key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
        ).decode()
        self.public_key_line = (
            key.public_key()
            .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
            .decode()
        )
        auth_dir = base / "authorized_keys"
        auth_dir.mkdir(mode=0o755)
        (auth_dir / KEY_USER).write_text(self.public_key_line + " bltest-client\n")
        os.chmod(auth_dir / KEY_USER, 0o644)

        chroot = base / "chroot"
        chroot.mkdir(mode=0o755)
        os.chmod(chroot, 0o755)
        self.empty_shared_dirs()  # creates upload/ and inbound/ (root:bltest 2775)

        Path("/run/sshd").mkdir(mode=0o755, parents=True, exist_ok=True)  # privilege-separation dir

    def _write_config(self) -> None:
        base = self._need_base()
        users = f"{PASSWORD_USER},{KEY_USER}"
        self.config_path.write_text(
            f"""\
# Generated by tests/sshd_server.py — throwaway test server, do not reuse.
Port {self.port}
ListenAddress 127.0.0.1
HostKey {base / "ssh_host_ed25519_key"}
PidFile {base / "sshd.pid"}
LogLevel VERBOSE
UsePAM no
KbdInteractiveAuthentication no
PasswordAuthentication yes
PermitEmptyPasswords no
PubkeyAuthentication yes
AuthorizedKeysFile {base / "authorized_keys"}/%u
StrictModes yes
PermitRootLogin no
AllowUsers {PASSWORD_USER} {KEY_USER}
X11Forwarding no
AllowAgentForwarding no
AllowTcpForwarding no
PermitTunnel no
PrintMotd no
UseDNS no
MaxStartups 100:30:200
MaxSessions 20
Subsystem sftp internal-sftp

Match User {users}
    ChrootDirectory {base / "chroot"}
    ForceCommand internal-sftp
    AllowTcpForwarding no
    X11Forwarding no
"""
        )
        os.chmod(self.config_path, 0o644)

    def _launch(self) -> None:
        # Test the config first: a syntax error then fails with sshd's own message.
        proc = subprocess.run([str(SSHD), "-t", "-f", str(self.config_path)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"sshd rejected {self.config_path}: {proc.stderr.strip()}")
        log_size = len(self._log_bytes())
        self._proc = subprocess.Popen(
            [str(SSHD), "-D", "-f", str(self.config_path), "-E", str(self.log_path)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        # Readiness = *our* sshd logged that it listens, and the port answers with an SSH banner. A bare
        # connect is not enough: if the probed port got taken meanwhile, it reaches the other server.
        listening = f"Server listening on {self.host} port {self.port}.".encode()
        deadline = time.monotonic() + self.start_timeout
        while True:
            code = self._proc.poll()
            log = self._log_bytes()[log_size:]
            if code is not None:
                self._proc = None
                text = log.decode(errors="replace")
                if "Address already in use" in text:
                    raise _PortTaken(f"port {self.port} taken")
                raise RuntimeError(
                    f"sshd exited with code {code} right after start; its log:\n{text[-4000:]}"
                )
            if listening in log:
                try:
                    with socket.create_connection((self.host, self.port), timeout=1) as s:
                        s.settimeout(2)
                        if s.recv(64).startswith(b"SSH-2.0-"):
                            return
                except OSError:
                    pass
            if time.monotonic() > deadline:
                tail = self.log_tail()
                self.stop()
                raise RuntimeError(
                    f"sshd did not accept connections on {self.host}:{self.port} within "
                    f"{self.start_timeout:.0f}s; log tail:\n{tail}"
                )
            time.sleep(0.02)

    def _log_bytes(self) -> bytes:
        try:
            return self.log_path.read_bytes()
        except FileNotFoundError:
            return b""

    def stop(self) -> None:
        """Kill sshd and every per-connection child it forked, then remove the base directory."""
        atexit.unregister(self.stop)
        proc, self._proc = self._proc, None
        if proc is not None:
            # Kill the per-connection processes leaves first (sftp child, then the unprivileged net
            # child, then the [priv] monitor), each level while its parent is still alive to reap it.
            # Killing the listener first would orphan them all to PID 1, and where PID 1 is not a real
            # init (containers, micro-VMs) they linger as zombies. Waiting for each level to be *reaped*
            # costs ~1.5 s per open connection (the monitor reaps lazily), so only wait for it to die.
            tree = _process_tree(proc.pid)
            for depth in sorted({d for _, d in tree}, reverse=True):
                level = [pid for pid, d in tree if d == depth]
                _signal(level, signal.SIGTERM)
                _wait_gone(level, 0.5, check=_alive)
                _signal([p for p in level if _alive(p)], signal.SIGKILL)
                _wait_gone(level, 2, check=_alive)
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
            leftovers = [pid for pid, _ in tree if _alive(pid)]
            _signal(leftovers, signal.SIGKILL)
        if self.base is not None:
            # Stragglers (e.g. a server whose Popen object was lost) still carry our config path.
            leftovers = _pids_with_arg(str(self.config_path))
            _signal(leftovers, signal.SIGKILL)
            shutil.rmtree(self.base, ignore_errors=True)
            self.base = None

    # -- helpers for tests ---------------------------------------------------------------------
    def conn_json(
        self,
        user: str,
        *,
        auth: Literal["password", "key"],
        host_key: str | None | object = _UNSET,
        no_host_key_check: bool = False,
    ) -> str:
        """An Airflow connection as JSON (for ``AIRFLOW_CONN_<ID>``) pointing at this server.

        ``host_key`` defaults to this server's own key, except with ``no_host_key_check=True`` where it
        defaults to omitted (providers-ssh refuses ``host_key`` together with ``no_host_key_check``;
        pass both explicitly to test that). ``None`` omits it.
        """
        if auth not in ("password", "key"):
            raise ValueError(f"auth must be 'password' or 'key', not {auth!r}")
        if host_key is _UNSET:
            host_key = None if no_host_key_check else self.host_key_line
        conn: dict[str, object] = {"conn_type": "sftp", "host": self.host, "port": self.port, "login": user}
        extra: dict[str, object] = {}
        if auth == "password":
            conn["password"] = self.password
        else:
            extra["private_key"] = self.private_key_pem
        if host_key is not None:
            extra["host_key"] = host_key
        extra["no_host_key_check"] = no_host_key_check
        conn["extra"] = extra
        return json.dumps(conn)


class _PortTaken(RuntimeError):
    pass
