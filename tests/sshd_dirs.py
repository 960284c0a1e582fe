"""What tests do to a running OpenSshServer's directories and sessions: empty the shared
folders, mount a tiny tmpfs (a full disk), add a directory with given owner/mode (read-only
targets), and signal the SFTP session processes of a user (a dropped session).

A mixin of :class:`tests.sshd_server.OpenSshServer`, which provides ``chroot`` and ``pid``.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

from tests.sshd_system import GROUP, PASSWORD_USER, SHARED_DIRS, _process_tree


class MountUnavailable(RuntimeError):
    """This machine does not let us mount a tmpfs (e.g. a container without CAP_SYS_ADMIN)."""


class TestDirsMixin:
    chroot: Path
    pid: int | None

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

