"""A real OpenSSH ``sshd`` with chrooted SFTP-only users, for tests.

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
import contextlib
import ctypes
import grp
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

SSHD = Path("/usr/sbin/sshd")
SSH_KEYGEN = "ssh-keygen"
STATE_ROOT = Path("/var/lib/braze-lytics-tests")
PASSWORD_FILE = STATE_ROOT / "bltest_password"
GROUP = "bltest"
PASSWORD_USER = "bltest_pw"
KEY_USER = "bltest_key"
USER_SHELL = "/usr/sbin/nologin"
# Does not exist; sshd then stays in the chroot's "/" (it only warns outside a chroot).
USER_HOME = "/nonexistent"
SHARED_DIRS = ("upload", "inbound")

_MISSING_HINT = "run `.ci/run`, which apt-installs openssh-server and runs the tests as root"

_UNSET = object()


class SshdUnavailable(RuntimeError):
    """This machine cannot run a test sshd (not root, or openssh-server not installed)."""


class MountUnavailable(RuntimeError):
    """This machine does not let us mount a tmpfs (e.g. a container without CAP_SYS_ADMIN)."""


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


def _run(*cmd: str, input: str | None = None) -> str:
    proc = subprocess.run(cmd, input=input, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(
            f"{' '.join(cmd)!r} failed with exit code {proc.returncode}: {(proc.stderr or proc.stdout).strip()}"
        )
    return proc.stdout


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ensure_state_root() -> None:
    # Every component up to the chroot must be root-owned and not group/world-writable.
    STATE_ROOT.mkdir(mode=0o755, parents=True, exist_ok=True)
    os.chown(STATE_ROOT, 0, 0)
    os.chmod(STATE_ROOT, 0o755)


def _machine_password() -> str:
    """One random password per machine, stored root-only (0600) so parallel sessions agree on it."""
    _ensure_state_root()
    try:
        fd = os.open(PASSWORD_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        password = PASSWORD_FILE.read_text().strip()
        if password:
            return password
        fd = os.open(PASSWORD_FILE, os.O_WRONLY | os.O_TRUNC, 0o600)
    password = secrets.token_urlsafe(24)  # no whitespace, no ':' (chpasswd's separator)
    with os.fdopen(fd, "w") as f:
        f.write(password + "\n")
    return password


def _ensure_group(name: str) -> None:
    try:
        grp.getgrnam(name)
    except KeyError:
        proc = subprocess.run(["groupadd", "--system", name], capture_output=True, text=True, check=False)
        if proc.returncode not in (0, 9):  # 9: already exists (created concurrently)
            raise RuntimeError(f"groupadd {name} failed: {proc.stderr.strip()}") from None


def _ensure_user(name: str) -> None:
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        proc = subprocess.run(
            [
                "useradd",
                "--no-create-home",
                "--home-dir",
                USER_HOME,
                "--shell",
                USER_SHELL,
                "--gid",
                GROUP,
                "--comment",
                "braze-lytics test SFTP user",
                name,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode not in (0, 9):  # 9: already exists
            raise RuntimeError(f"useradd {name} failed: {proc.stderr.strip()}") from None
        pw = pwd.getpwnam(name)
    if pw.pw_gid != grp.getgrnam(GROUP).gr_gid or pw.pw_shell != USER_SHELL:
        _run("usermod", "--gid", GROUP, "--shell", USER_SHELL, name)


def _read_shadow_hash(user: str) -> str | None:
    try:
        for line in Path("/etc/shadow").read_text().splitlines():
            fields = line.split(":")
            if fields[0] == user:
                return fields[1]
    except OSError:
        pass
    return None


def _ensure_users(password: str) -> None:
    _ensure_group(GROUP)
    _ensure_user(PASSWORD_USER)
    _ensure_user(KEY_USER)
    _run("chpasswd", input=f"{PASSWORD_USER}:{password}\n")
    # useradd leaves the password as "!" (locked); with UsePAM no, sshd refuses *every* auth method,
    # public keys included, for a locked account. "*" means "no password" without being "locked".
    if _read_shadow_hash(KEY_USER) != "*":
        _run("usermod", "--password", "*", KEY_USER)


def _process_tree(root_pid: int) -> list[tuple[int, int]]:
    """``(pid, depth)`` of every process below ``root_pid``, read from /proc.

    sshd's per-connection children call setsid(), so a process-group kill would miss them.
    """
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path("/proc", entry, "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid ..." — comm may contain spaces/parens, so split after the last ')'.
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out: list[tuple[int, int]] = []
    todo = [(root_pid, 0)]
    while todo:
        pid, depth = todo.pop()
        for child in children.get(pid, []):
            out.append((child, depth + 1))
            todo.append((child, depth + 1))
    return out


def _descendants(root_pid: int) -> list[int]:
    return [pid for pid, _ in _process_tree(root_pid)]


def _pids_with_arg(needle: str) -> list[int]:
    """PIDs whose command line contains ``needle`` (sshd re-execs itself with our ``-f CONFIG``)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            argv = Path("/proc", entry, "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if needle.encode() in argv:
            found.append(int(entry))
    return found


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie counts as dead)."""
    try:
        state = Path("/proc", str(pid), "stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _exists(pid: int) -> bool:
    """True while ``pid`` has a /proc entry (zombies included, i.e. not yet reaped)."""
    return Path("/proc", str(pid)).exists()


def _wait_gone(pids: list[int], timeout: float, check=_exists) -> None:
    deadline = time.monotonic() + timeout
    while any(check(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.02)


def _signal(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def _die_with_parent() -> None:  # runs in the child between fork and exec
    # If the test process dies without running stop() (SIGKILL, SIGTERM), the kernel sends sshd SIGTERM.
    # Caveat: "parent" is the *thread* that forked; start servers from a thread that outlives them.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


_PR_SET_PDEATHSIG = 1


def _remove_stale_base_dirs(min_age: float = 120.0) -> None:
    """Remove base dirs left by killed sessions (no live sshd using their config). Young dirs may
    belong to a session that is starting right now, so they are left alone."""
    for d in STATE_ROOT.glob("sshd-*"):
        config = str(d / "sshd_config")
        try:
            pid = int((d / "sshd.pid").read_text().strip())
        except (OSError, ValueError):
            pid = None
        if pid is not None and _alive(pid) and pid in _pids_with_arg(config):
            continue
        try:
            if time.time() - d.stat().st_mtime < min_age:
                continue
        except OSError:
            continue
        _signal(_pids_with_arg(config), signal.SIGKILL)
        shutil.rmtree(d, ignore_errors=True)


class OpenSshServer:
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
    def empty_shared_dirs(self) -> None:
        """Remove everything inside ``chroot/upload`` and ``chroot/inbound`` (the dirs stay)."""
        gid = grp.getgrnam(GROUP).gr_gid
        for name in SHARED_DIRS:
            d = self.chroot / name
            d.mkdir(exist_ok=True)  # a test may have removed it locally
            os.chown(d, 0, gid)
            os.chmod(d, 0o2775)
            for child in d.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()

    @contextlib.contextmanager
    def tmpfs_dir(
        self, name: str, *, size: str = "2m", owner: str = PASSWORD_USER, read_only: bool = False
    ) -> Iterator[Path]:
        """A small tmpfs mounted at ``chroot/<name>`` (remote ``/<name>``), owned by ``owner``, mode 0755.

        For real "disk full" (ENOSPC: write more than ``size``) and read-only filesystem (EROFS:
        ``read_only=True``) tests. Unmounted (lazily if busy) and removed on exit. Raises
        :class:`MountUnavailable` when mounting is not permitted here.
        """
        path = self.chroot / name
        path.mkdir()
        pw = pwd.getpwnam(owner)
        options = f"size={size},mode=0755,uid={pw.pw_uid},gid={pw.pw_gid}" + (",ro" if read_only else "")
        proc = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, text=True, check=False
        )
        if proc.returncode != 0:
            path.rmdir()
            raise MountUnavailable(f"cannot mount a tmpfs at {path}: {(proc.stderr or proc.stdout).strip()}")
        try:
            yield path
        finally:
            if subprocess.run(["umount", str(path)], capture_output=True, check=False).returncode != 0:
                subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)
            with contextlib.suppress(OSError):
                path.rmdir()

    @contextlib.contextmanager
    def extra_dir(self, name: str, *, owner: str = "root", mode: int = 0o755) -> Iterator[Path]:
        """A plain directory ``chroot/<name>`` (remote ``/<name>``) with this owner (group ``bltest``) and mode.

        E.g. the default (root-owned 0755) is read-only for the test users; ``0o1777`` is a sticky
        directory where they cannot replace files of other owners. Removed with its content on exit.
        """
        path = self.chroot / name
        path.mkdir()
        os.chown(path, pwd.getpwnam(owner).pw_uid, grp.getgrnam(GROUP).gr_gid)
        os.chmod(path, mode)
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)

    def signal_sessions(
        self, user: str = PASSWORD_USER, *, what: str = "internal-sftp", sig: int = signal.SIGKILL
    ) -> list[int]:
        """Send ``sig`` to this server's per-connection processes running as ``user`` whose command line has ``what``.

        ``"internal-sftp"`` is the SFTP subsystem alone: killing it closes the channel while the SSH connection
        stays up; ``"@notty"`` is the whole connection; ``"bltest_pw@"`` both. A client that next sends on the
        closed channel gets paramiko's ``OSError("Socket is closed")``; one blocked reading gets ``EOFError`` /
        ``SSHException``. Returns the pids signalled.
        """
        uid = pwd.getpwnam(user).pw_uid
        hit = []
        for pid, _depth in _process_tree(self.pid or -1):
            try:
                if os.stat(f"/proc/{pid}").st_uid != uid:
                    continue
                if what.encode() not in Path("/proc", str(pid), "cmdline").read_bytes():
                    continue
                os.kill(pid, sig)
                hit.append(pid)
            except (OSError, ProcessLookupError):
                continue
        return hit

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
