"""Background processes of the local stack: start detached with a log and a pid file, stop by pid.

Each process is started in a session of its own (``start_new_session``: pid = process group id =
session id), stdin from /dev/null, stdout and stderr into ``<state>/logs/<name>.log``, and gets a
pid file ``<state>/pids/<name>.pid`` holding ``<pid> <start time>`` (the start time, in clock
ticks since boot, tells a live process from a later one that reused the pid).

Stopping a process stops everything it started: the members of its process group and session
and all its descendants (collected before and while waiting, so children that were re-parented
or that moved to a group of their own are not missed) get the stop signal, have ``grace`` seconds
to end, then get SIGKILL. A zombie counts as gone (its parent or init reaps it).

Linux only (reads /proc). Standard library only.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Proc", "free_port", "port_in_use", "proc_alive", "read_pid_file", "start", "stop_all"]


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (index 0 = state), or None."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError, OSError):
        return None
    return raw[raw.rfind(")") + 2:].split()


def _start_time(pid: int) -> int | None:
    fields = _stat(pid)
    return int(fields[19]) if fields else None  # field 22 of stat: starttime


def proc_alive(pid: int, start_time: int | None = None) -> bool:
    """The process exists, is not a zombie, and (if given) started at ``start_time``."""
    fields = _stat(pid)
    if fields is None or fields[0] in ("Z", "X"):
        return False
    return start_time is None or int(fields[19]) == start_time


def _all_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _family(leader: int) -> set[int]:
    """Live processes in the leader's process group or session, plus all descendants of those."""
    table: dict[int, tuple[int, int, int]] = {}  # pid -> (ppid, pgid, sid)
    for pid in _all_pids():
        fields = _stat(pid)
        if fields and fields[0] not in ("Z", "X"):
            table[pid] = (int(fields[1]), int(fields[2]), int(fields[3]))
    members = {pid for pid, (_, pgid, sid) in table.items() if pgid == leader or sid == leader}
    if leader in table:
        members.add(leader)
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    todo = list(members)
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in members:
                members.add(child)
                todo.append(child)
    return members


@dataclass
class Proc:
    """One stack process, as its pid file describes it."""

    name: str
    pid: int
    start_time: int | None
    pid_file: Path
    stop_signal: int = signal.SIGTERM

    @property
    def alive(self) -> bool:
        return proc_alive(self.pid, self.start_time)


def read_pid_file(path: Path) -> Proc | None:
    """The process a pid file names, or None when the file is missing or unreadable."""
    try:
        parts = path.read_text().split()
        pid = int(parts[0])
        start_time = int(parts[1]) if len(parts) > 1 else None
        sig = int(parts[2]) if len(parts) > 2 else int(signal.SIGTERM)
    except (OSError, ValueError, IndexError):
        return None
    return Proc(path.stem, pid, start_time, path, sig)


def start(name: str, argv: Sequence[str], *, state_dir: Path, env: dict[str, str], cwd: Path,
          stop_signal: int = signal.SIGTERM, user: str | None = None) -> Proc:
    """Start ``argv`` detached (own session), logging to ``logs/<name>.log``; write ``pids/<name>.pid``."""
    logs = state_dir / "logs"
    pids = state_dir / "pids"
    logs.mkdir(parents=True, exist_ok=True)
    pids.mkdir(parents=True, exist_ok=True)
    log_path = logs / f"{name}.log"
    with open(log_path, "ab") as log:
        log.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} starting: {' '.join(argv)}\n".encode())
        log.flush()
        kwargs: dict = {}
        if user is not None:
            import pwd

            entry = pwd.getpwnam(user)
            kwargs.update(user=entry.pw_uid, group=entry.pw_gid, extra_groups=[])
        popen = subprocess.Popen(
            list(argv), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            env=env, cwd=cwd, start_new_session=True, close_fds=True, **kwargs,
        )
    start_time = _start_time(popen.pid)
    pid_file = pids / f"{name}.pid"
    pid_file.write_text(f"{popen.pid} {start_time or 0} {int(stop_signal)}\n")
    # The Popen object is dropped on purpose: the process outlives this program. Python would warn
    # ("subprocess still running") when the object is collected; returncode=0 keeps it quiet.
    popen.returncode = 0
    return Proc(name, popen.pid, start_time, pid_file, stop_signal)


def _signal_all(pids: Iterable[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def stop_all(procs: Sequence[Proc], *, grace: float = 30.0, log=print) -> list[str]:
    """Stop these processes and everything they started, together: the stop signal, up to ``grace``
    seconds, then SIGKILL. Removes their pid files. Returns the names that needed SIGKILL."""
    live = [p for p in procs if p.alive]
    family: dict[str, set[int]] = {p.name: _family(p.pid) for p in live}
    starts: dict[int, int | None] = {}
    for pids in family.values():
        for pid in pids:
            starts[pid] = _start_time(pid)
    for p in live:
        _signal_all([p.pid], p.stop_signal)
        # The leader passes the signal on; the rest of the group gets it too unless the leader
        # handles shutdown itself (postgres: its postmaster stops its backends).
        if p.stop_signal == signal.SIGTERM:
            _signal_all(family[p.name] - {p.pid}, signal.SIGTERM)

    def remaining(name: str) -> set[int]:
        pids = family[name]
        if procs_by_name[name].alive:  # still running: it may have started more
            pids |= _family(procs_by_name[name].pid)
            for pid in pids:
                starts.setdefault(pid, _start_time(pid))
        return {pid for pid in pids if proc_alive(pid, starts.get(pid))}

    procs_by_name = {p.name: p for p in live}
    deadline = time.monotonic() + grace
    killed: list[str] = []
    while True:
        left = {name: remaining(name) for name in family}
        left = {name: pids for name, pids in left.items() if pids}
        if not left:
            break
        if time.monotonic() > deadline:
            for name, pids in left.items():
                log(f"    {name}: still running after {grace:.0f}s, sending SIGKILL to {sorted(pids)}")
                _signal_all(pids, signal.SIGKILL)
                killed.append(name)
            end = time.monotonic() + 10
            while any(remaining(name) for name in left) and time.monotonic() < end:
                time.sleep(0.1)
            break
        time.sleep(0.2)
    for p in procs:
        with contextlib.suppress(FileNotFoundError):
            p.pid_file.unlink()
    return killed


def port_in_use(host: str, port: int) -> bool:
    """Something listens on (or holds) ``host:port``: binding it fails."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return True
    if host not in ("127.0.0.1", "localhost"):
        return False
    # A server bound to the wildcard address answers on loopback too.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def free_port(host: str = "127.0.0.1", avoid: Iterable[int] = ()) -> int:
    """A port nothing listens on now (the kernel's pick), not one of ``avoid``."""
    avoid = set(avoid)
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        if port not in avoid:
            return port
