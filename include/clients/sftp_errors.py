"""What a failed SFTP operation means, as the project's typed errors (used by `include.clients.sftp`).

OpenSSH's sftp-server folds errno into a handful of SFTP status codes: EACCES/EPERM become
PERMISSION_DENIED (paramiko raises `PermissionError`), ENOENT becomes NO_SUCH_FILE
(`FileNotFoundError`), and nearly everything else - ENOSPC, EDQUOT, EROFS, EIO - a bare FAILURE
(`OSError('Failure')`, no errno). A bare failure is told apart by asking the server about the
filesystem (the `statvfs@openssh.com` extension): read-only means :class:`RemoteWriteDeniedError`;
otherwise a failed *write* means the disk or the account's quota is full
(:class:`RemoteStorageFullError`). Both are permanent: only a person can fix them.

A broken connection or SFTP session - `EOFError`, `paramiko.SSHException`, `paramiko.SFTPError`,
`ConnectionError` (reset, broken pipe), a timeout, or *any* `OSError` once the channel is closed
(paramiko's "Socket is closed") - is a `TransientError`: the delivery is idempotent, so starting it
over (after removing the partial file left behind) fixes it.

Every message names the connection id, host and remote path and says what to do; never a secret.
"""

from __future__ import annotations

import contextlib
import errno
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, NamedTuple

from include.common.errors import (
    AuthError,
    BrazeLyticsError,
    NotFoundError,
    PermanentError,
    TransientError,
)

if TYPE_CHECKING:
    from include.clients.sftp import SftpSettings

log = logging.getLogger(__name__)

_ST_RDONLY = 0x1  # SSH2_FXE_STATVFS_ST_RDONLY (OpenSSH PROTOCOL, statvfs@openssh.com)
_SERVER_ERRNOS = (None, errno.ENOENT, errno.EACCES)  # what paramiko puts on a server status error


class RemoteStorageFullError(PermanentError):
    """The SFTP server's disk, or the account's quota there, is full: free space, then clear the task."""


class RemoteWriteDeniedError(AuthError):
    """The SFTP account may not write there (directory permissions, or a read-only filesystem)."""


class RemoteSpace(NamedTuple):
    free: int  # bytes available to unprivileged users
    total: int
    free_inodes: int
    read_only: bool


def remote_space(sftp, path: str) -> RemoteSpace | None:
    """The server's view of the filesystem holding `path` (statvfs@openssh.com), or None if it cannot say."""
    from paramiko.sftp import CMD_EXTENDED, CMD_EXTENDED_REPLY

    try:
        kind, msg = sftp._request(CMD_EXTENDED, "statvfs@openssh.com", sftp._adjust_cwd(path))
        if kind != CMD_EXTENDED_REPLY:
            return None
        bsize, frsize, blocks, _bfree, bavail, _files, _ffree, favail, _fsid, flag, _namemax = (
            msg.get_int64() for _ in range(11)
        )
    except Exception as exc:  # unsupported extension, odd reply, or the session is gone
        log.debug("statvfs of %s failed: %r", path, exc)
        return None
    unit = frsize or bsize
    return RemoteSpace(free=unit * bavail, total=unit * blocks, free_inodes=favail, read_only=bool(flag & _ST_RDONLY))


def session_broken(exc: BaseException, sftp=None) -> bool:
    """True when `exc` means the connection or the SFTP session broke (so a retry may succeed)."""
    import paramiko

    if isinstance(exc, (EOFError, ConnectionError, TimeoutError, paramiko.SSHException, paramiko.SFTPError)):
        return True
    if not isinstance(exc, OSError) or sftp is None:
        return False
    try:
        channel = sftp.get_channel()
        transport = channel.get_transport()
        return bool(channel.closed or channel.eof_received or transport is None or not transport.is_active())
    except Exception:
        return True


def _size(n: int) -> str:
    return f"{n:,} bytes" + (f" ({n / 2**20:,.1f} MiB)" if n >= 2**20 else "")


def classify(exc: BaseException, sftp, settings: SftpSettings, *, step: str, path: str, nbytes: int | None = None,
             note: str = "", directory: str | None = None) -> BaseException:
    """The typed error for `exc`, raised while `step` (e.g. "uploading") on remote `path`.

    `nbytes`: how much was being written (set it for steps that write data: a bare server
    failure there means a full disk or quota). `note` is appended (e.g. what state the
    target was left in). `directory`: where the write went (default: `path`'s parent), whose
    filesystem is asked about. Returns `exc` itself when it is already typed or is a local error.
    """
    if isinstance(exc, BrazeLyticsError):
        return exc
    where = f"connection {settings.name!r}: {settings.host}:{settings.port}"
    note = f" {note}" if note else ""
    if session_broken(exc, sftp):
        return TransientError(
            f"{where}: the SFTP session broke while {step} {path!r} ({exc!r}). A retry starts over and first "
            f"removes any partial file left behind.{note}"
        )
    if not isinstance(exc, OSError) or exc.errno not in _SERVER_ERRNOS:
        return exc  # not the server's answer (e.g. reading the local file failed): leave it as it is
    if isinstance(exc, PermissionError):
        return RemoteWriteDeniedError(
            f"{where}: {settings.username} may not write to {path!r} (permission denied while {step}). Fix the "
            f"directory's permissions on the server or remote_dir in the pipeline configuration, then clear "
            f"the task.{note}"
        )
    if isinstance(exc, FileNotFoundError):
        return NotFoundError(
            f"{where}: {path!r} or its directory disappeared while {step} ({exc}). Was the directory removed, "
            f"or is another delivery of the same file running? Check, then clear the task.{note}"
        )
    directory = directory or path.rsplit("/", 1)[0] or "/"
    space = remote_space(sftp, directory)
    if space is not None and space.read_only:
        return RemoteWriteDeniedError(
            f"{where}: {directory!r} is on a read-only filesystem on the server (SFTP said {str(exc)!r} while "
            f"{step} {path!r}). Ask the server's operator to make it writable, or change remote_dir, then "
            f"clear the task.{note}"
        )
    if "size mismatch" in str(exc) and (nbytes is None or space is None or space.free > nbytes):
        return TransientError(f"{where}: {step} {path!r} did not store every byte ({exc}); a retry starts over.{note}")
    if nbytes is not None:
        if space is None:
            evidence = "the server does not report its free space"
        elif space.free_inodes == 0:
            evidence = "its filesystem has no free inodes (files) left"
        elif space.free < nbytes:
            evidence = f"its filesystem has {_size(space.free)} free of {_size(space.total)}"
        else:
            evidence = (f"its filesystem still has {_size(space.free)} free, so most likely the account's "
                        f"quota is full (or the server had a write error)")
        return RemoteStorageFullError(
            f"{where}: the server could not store {path!r} ({_size(nbytes)}): its disk or the account's "
            f"quota is full (SFTP said {str(exc)!r} while {step}; {evidence}). Free space on the server or ask "
            f"its operator to raise the quota, then clear the task.{note}"
        )
    return PermanentError(
        f"{where}: the server refused {step} {path!r} (SFTP said {str(exc)!r}). Check the server (its log, "
        f"its disk) or ask its operator, then clear the task.{note}"
    )


@contextlib.contextmanager
def typed_errors(sftp, settings: SftpSettings, step: str, path: str, nbytes: int | None = None, note: str = "",
                 directory: str | None = None) -> Iterator[None]:
    """Raise the typed error (:func:`classify`) for a failure of `step` on remote `path`."""
    try:
        yield
    except Exception as exc:
        typed = classify(exc, sftp, settings, step=step, path=path, nbytes=nbytes, note=note, directory=directory)
        if typed is exc:
            raise
        raise typed from None
