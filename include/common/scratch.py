"""Private scratch directories for one task's files, removed even when the task fails; full disks named.

Exports hold personal data in plaintext once decrypted; they live only inside a 0700
directory that is deleted on the way out, whatever happened. The base directory is
`BRAZE_LYTICS_WORK_DIR` (default: the system temp dir); give it room for about three times
the largest export (download, CSV, encrypted copy).

Every file written there is created 0600 (:func:`private_file` / :func:`open_private`), and every
directory the project creates for customer data (scratch, quarantine, a local state store) is 0700
(:func:`private_dirs`), whatever the process umask.

A task killed with SIGKILL cannot run its ``finally``: its scratch directory stays. The directory's
name is stamped with the creating process (:func:`process_stamp`: host, pid, process start time),
so the next :func:`scratch_dir` in the same base directory deletes the scratch directories of
processes that are gone (:func:`sweep_dead_scratch`); live processes' directories, other hosts'
and names it did not make are never touched.

A full disk must not surface as a bare ``OSError: [Errno 28] No space left on device``. Wrap
every step that writes scratch files in :func:`disk_errors`, naming the step::

    with scratch_dir(segment.name) as work:
        with disk_errors("downloading the export"):
            raw = fetch(work)
        with disk_errors("shaping the CSV"):
            shape_export(raw, ..., work / "users.csv")
        with disk_errors("encrypting with gpg"):
            encrypt_file(...)

An ``OSError`` with errno ENOSPC or EDQUOT (also when it is the cause or context of another
exception, e.g. re-raised by a worker process or wrapped by a client) then becomes a
:class:`ScratchSpaceError` - a ``PermanentError``, so the task fails at once instead of retrying
into the same full disk - saying which step ran out of space, the scratch base directory, its
free bytes, and what to do. `scratch_dir()` applies it too (creating the directory, and as a
fallback around its body), so an unwrapped step still gets the clear message.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import re
import shutil
import socket
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

from include.common import settings
from include.common.errors import PermanentError, StorageError
from include.common.names import file_safe

log = logging.getLogger(__name__)

_FULL = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded"}


class ScratchSpaceError(PermanentError):
    """A scratch file could not be written: the disk (or quota) holding it is full."""


def _full_disk_error(exc: BaseException | None) -> OSError | None:
    """The ENOSPC/EDQUOT `OSError` that is `exc` or caused it (its __cause__/__context__ chain), if any."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in _FULL:
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def _free(path: Path) -> str:
    """'N bytes free of M' for the filesystem holding `path` (or its nearest existing parent)."""
    for candidate in (path, *path.parents):
        try:
            usage = shutil.disk_usage(candidate)
        except OSError:
            continue
        return f"{usage.free:,} bytes ({usage.free / 2**20:,.1f} MiB) free of {usage.total / 2**20:,.1f} MiB"
    return "free space unknown"


def _message(what: str, error: OSError, base: Path) -> str:
    written = f" writing {error.filename}" if error.filename else ""
    text = (
        f"{what}: ran out of disk space ({_FULL[error.errno]}{written}). The scratch base directory {base} "
        f"({settings.WORK_DIR}) has {_free(base)}. Free space there, or point {settings.WORK_DIR} to a directory "
        f"on a larger disk (the pipelines need about 3x the largest export: download, CSV, encrypted copy), "
        f"then clear the task."
    )
    if error.filename:
        target = Path(os.fsdecode(error.filename)).resolve()
        with contextlib.suppress(OSError):
            if target.parent.exists() and os.stat(target.parent).st_dev != os.stat(base).st_dev:
                text += f" Note: {error.filename} is on another disk than {base}, which has {_free(target.parent)}."
    return text


@contextlib.contextmanager
def disk_errors(what: str, base: Path | None = None) -> Iterator[None]:
    """Turn a full disk (ENOSPC/EDQUOT) during `what` (e.g. "shaping the CSV") into a :class:`ScratchSpaceError`.

    `base` is the scratch base directory named in the message (default: `settings.work_dir()`).
    Other exceptions, a `ScratchSpaceError` from an inner `disk_errors`, and a `StorageError` (a full
    disk elsewhere - the quarantine, the state store - already named with its own setting) pass unchanged.
    """
    try:
        yield
    except (ScratchSpaceError, StorageError):
        raise
    except Exception as exc:
        error = _full_disk_error(exc)
        if error is None:
            raise
        raise ScratchSpaceError(_message(what, error, base or settings.work_dir())) from exc


# ----------------------------------------------------------------------------------------------
# Private files and directories
# ----------------------------------------------------------------------------------------------


def private_dirs(path: Path | str) -> Path:
    """`path` as a directory; every component this call creates is 0700 (existing ones are left as they are)."""
    path = Path(path)
    missing = []
    probe = path
    while not probe.is_dir():
        missing.append(probe)
        if probe.parent == probe:
            break
        probe = probe.parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, 0o700)
        except FileExistsError:
            if not directory.is_dir():
                raise
            continue  # created meanwhile by another process
        os.chmod(directory, 0o700)  # whatever the umask
    return path


def private_file(path: Path | str) -> Path:
    """Create `path` empty with mode 0600 (or truncate it and set 0600), before a library that opens by
    name (zipfile, shutil.copyfile, paramiko, fsspec) writes customer data into it."""
    os.close(_private_fd(path, os.O_WRONLY))
    return Path(path)


def open_private(path: Path | str, mode: str = "wb", **kwargs):
    """`open(path, mode)` for writing ("w"/"wb"/"a"/"ab"), the file created or reset to mode 0600."""
    if not mode.startswith(("w", "a")) or "+" in mode:
        raise ValueError(f"open_private is for writing ('w', 'wb', 'a', 'ab'), not {mode!r}")
    flags = os.O_WRONLY | (os.O_APPEND if mode.startswith("a") else 0)
    return os.fdopen(_private_fd(path, flags, truncate=mode.startswith("w")), mode, **kwargs)


def _private_fd(path: Path | str, flags: int, *, truncate: bool = True) -> int:
    fd = os.open(path, flags | os.O_CREAT | (os.O_TRUNC if truncate else 0) | getattr(os, "O_CLOEXEC", 0), 0o600)
    try:
        os.fchmod(fd, 0o600)  # an existing file keeps its mode through O_CREAT: reset it
    except BaseException:
        os.close(fd)
        raise
    return fd


# ----------------------------------------------------------------------------------------------
# Process stamps: whose scratch is this, and is that process still alive?
# ----------------------------------------------------------------------------------------------

_STAMP = r"(?P<host>[0-9a-f]{8})\.(?P<pid>\d+)\.(?P<start>\d+)"
_SCRATCH_NAME = re.compile(rf"^braze-lytics-{_STAMP}-")
_STAGING_NAME = re.compile(rf"^state-store-{_STAMP}-")


def _host_tag() -> str:
    """8 hex digits naming this host (container): pids are only comparable on the same one."""
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def _start_ticks(pid: int) -> tuple[str, str] | None:
    """(state, start time in clock ticks since boot) of a process from /proc; None when unknown."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rfind(")") + 2:].split()
    return (fields[0], fields[19]) if len(fields) > 19 else None


def process_stamp(pid: int | None = None) -> str:
    """`<host>.<pid>.<start ticks>` of this process: goes into the names of its scratch directories,
    gpg homes and staging files, so a later run can tell whether their creator is gone."""
    pid = os.getpid() if pid is None else pid
    info = _start_ticks(pid)
    return f"{_host_tag()}.{pid}.{info[1] if info else 0}"


def stamp_is_dead(match: re.Match) -> bool:
    """True when the stamp matched (see `_STAMP`) names a process of this host that no longer runs
    (gone, a zombie, or its pid now belongs to a process started at another time)."""
    if match["host"] != _host_tag():
        return False  # another host's (a shared work dir): not ours to judge
    pid = int(match["pid"])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # alive, another user's process
    info = _start_ticks(pid)
    if info is None:
        return False
    state, start = info
    return state in ("Z", "X") or (match["start"] != "0" and start != match["start"])


def sweep_dead_scratch(base: Path | None = None) -> list[str]:
    """Delete scratch directories and state-store staging files in `base` (default: the work dir) left
    by processes that are gone (a task killed with SIGKILL); the names deleted."""
    base = Path(base or settings.work_dir())
    swept: list[str] = []
    try:
        entries = list(os.scandir(base))
    except OSError:
        return swept
    for entry in entries:
        match = _SCRATCH_NAME.match(entry.name) or _STAGING_NAME.match(entry.name)
        if match is None or not stamp_is_dead(match):
            continue
        try:
            info = entry.stat(follow_symlinks=False)
            if info.st_uid != os.getuid():
                continue
            if stat.S_ISDIR(info.st_mode):
                shutil.rmtree(entry.path)
            elif stat.S_ISREG(info.st_mode):
                os.unlink(entry.path)
            else:
                continue
        except FileNotFoundError:
            continue  # swept meanwhile by another process
        except OSError as exc:
            log.warning("could not delete %s, left by a process that is gone: %s", entry.path, exc)
            continue
        swept.append(entry.name)
    if swept:
        log.info("Deleted %d scratch item(s) left in %s by killed tasks: %s", len(swept), base, sorted(swept))
    return swept


@contextlib.contextmanager
def scratch_dir(label: str, base: Path | None = None) -> Iterator[Path]:
    """A fresh 0700 directory named after `label` (a segment name, never a secret), removed on exit.

    Scratch directories of killed tasks (their process is gone) in the same base are deleted first.
    A full disk - creating it, or in a body step not wrapped in its own `disk_errors` - raises
    :class:`ScratchSpaceError`.
    """
    base = base or settings.work_dir()
    safe = file_safe(label, 60)
    with disk_errors(f"creating the scratch directory for {label!r}", base):
        private_dirs(base)
        sweep_dead_scratch(base)
        path = Path(tempfile.mkdtemp(prefix=f"braze-lytics-{process_stamp()}-{safe}-", dir=base))
    try:
        os.chmod(path, 0o700)  # mkdtemp's default; stated, whatever the umask or platform
        with disk_errors(f"writing scratch files for {label!r}", base):
            yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
