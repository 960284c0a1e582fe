"""Private scratch directories for one task's files, removed even when the task fails; full disks named.

Exports hold personal data in plaintext once decrypted; they live only inside a 0700
directory that is deleted on the way out, whatever happened. The base directory is
`BRAZE_LYTICS_WORK_DIR` (default: the system temp dir); give it room for about three times
the largest export (download, CSV, encrypted copy).

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
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from include.common import settings
from include.common.errors import PermanentError
from include.common.names import file_safe

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
    Other exceptions, and a `ScratchSpaceError` from an inner `disk_errors`, pass unchanged.
    """
    try:
        yield
    except ScratchSpaceError:
        raise
    except Exception as exc:
        error = _full_disk_error(exc)
        if error is None:
            raise
        raise ScratchSpaceError(_message(what, error, base or settings.work_dir())) from exc


@contextlib.contextmanager
def scratch_dir(label: str, base: Path | None = None) -> Iterator[Path]:
    """A fresh 0700 directory named after `label` (a segment name, never a secret), removed on exit.

    A full disk - creating it, or in a body step not wrapped in its own `disk_errors` - raises
    :class:`ScratchSpaceError`.
    """
    base = base or settings.work_dir()
    safe = file_safe(label, 60)
    with disk_errors(f"creating the scratch directory for {label!r}", base):
        base.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = Path(tempfile.mkdtemp(prefix=f"braze-lytics-{safe}-", dir=base))
    try:
        os.chmod(path, 0o700)  # mkdtemp's default; stated, whatever the umask or platform
        with disk_errors(f"writing scratch files for {label!r}", base):
            yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
