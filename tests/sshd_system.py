"""System plumbing behind tests/sshd_server.py: the throwaway SFTP users, the state directory,
and the process helpers (find, signal and wait for sshd and its session processes).

Split out so that sshd_server.py holds the server's lifecycle and configuration only.
"""

from __future__ import annotations

import ctypes
import grp
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

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
        # Any sign of life keeps the dir: its pid alive (even if /proc shows it differently under load),
        # or any process still started with its config. Only dead sessions' dirs go.
        if (pid is not None and _alive(pid)) or _pids_with_arg(config):
            continue
        try:
            if time.time() - d.stat().st_mtime < min_age:
                continue
        except OSError:
            continue
        _signal(_pids_with_arg(config), signal.SIGKILL)
        shutil.rmtree(d, ignore_errors=True)
