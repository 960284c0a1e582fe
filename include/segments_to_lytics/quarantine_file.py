"""The quarantine file: rows a shaping run refused, each with its source, line and reason.

Written beside, never into, the delivered CSV, in its own directory (BRAZE_LYTICS_QUARANTINE_DIR,
0700; files 0600: rejected rows are customer data). A rejected record is kept whole up to 64 Ki
characters, else as its beginning with the size it had. A quarantine directory that cannot take
the file is a `StorageError` that says which setting to change, never a bare `OSError`.
"""

from __future__ import annotations

import contextlib
import errno
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from include.common import settings
from include.common.errors import StorageError
from include.common.scratch import open_private
from include.segments_to_lytics.csv_cells import quote

if TYPE_CHECKING:
    from include.segments_to_lytics.csv_shape import ShapeStats

QUARANTINE_HEADER = ["source", "line", "reason", "record"]
_UNWRITABLE = {errno.EROFS: "its filesystem is read-only", errno.ENOSPC: "its disk is full",
               errno.EDQUOT: "the disk quota is exceeded", errno.EACCES: "permission denied",
               errno.EPERM: "permission denied"}


@contextlib.contextmanager
def quarantine_errors(quarantine_path: Path) -> Iterator[None]:
    """The quarantine directory cannot take the file: a `StorageError` naming BRAZE_LYTICS_QUARANTINE_DIR (not the
    scratch dir's full-disk error, nor a bare OSError)."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in _UNWRITABLE:
            raise
        raise StorageError(
            f"cannot write the quarantine file {quarantine_path}: {_UNWRITABLE[exc.errno]} ({exc}). Rejected rows "
            f"are kept in {settings.QUARANTINE_DIR}: make that directory writable or free space there, or point "
            f"{settings.QUARANTINE_DIR} to another directory, then clear the task. Nothing was delivered."
        ) from exc


def join_quarantine(dest: Path, part_paths: list[Path]) -> None:
    """The quarantine header, then each part's rejected rows in order."""
    with open_private(dest, "wb") as out:
        out.write(",".join(quote(h) for h in QUARANTINE_HEADER).encode() + b"\r\n")
        for part in part_paths:
            with open(part, "rb") as src:
                shutil.copyfileobj(src, out, 1 << 20)


MAX_QUARANTINED_CHARS = 65_536  # a rejected record longer than this is kept as an excerpt


def rejected_text(line: bytes) -> str:
    """A rejected line as quarantine text: whole when it is of a sane size, else its beginning."""
    text = line[:MAX_QUARANTINED_CHARS * 4].decode("utf-8", "replace").rstrip("\r\n")
    if len(text) > MAX_QUARANTINED_CHARS:
        return f"{text[:MAX_QUARANTINED_CHARS]}... [truncated: {len(line):,} bytes]"
    return text


def quarantine_line(source: str, line: int, reason: str, record: str) -> str:
    """One quarantine row with its CR LF, quoted as csv.writer would (QUOTE_MINIMAL), several times
    faster on long records: csv.writer looks at a record character by character."""
    return f"{quote(source)},{line},{quote(reason)},{quote(record)}\r\n"


class QuarantineRows:
    """Rejected rows of one part with their reasons, written beside, never into, the output."""

    def __init__(self, path: Path):
        self._fh = open_private(path, "w", encoding="utf-8", newline="")
        self._write = self._fh.write

    def __enter__(self) -> QuarantineRows:
        return self

    def add(self, source: str, line: int, reason: str, record: str, stats: ShapeStats) -> None:
        self._write(quarantine_line(source, line, reason, record))
        # Count by kind of reason, not by the varying detail after ':' or ' (' (positions, sizes).
        stats.reasons[reason.split(":", 1)[0].split(" (", 1)[0]] += 1
        stats.rows_rejected += 1

    def __exit__(self, *exc) -> None:
        self._fh.close()
