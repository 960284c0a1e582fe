"""Dashboard-style exports dropped in a landing directory (local, or an SFTP inbound folder).

Braze's dashboard "Export CSV user data" (or a bucket export) lands as
`segment-export/SEGMENT_ID/YYYY-MM-dd/users-RANDOM.zip` (docs/vendor-contracts.md#braze-dashboard-csv-exports). The drop path is
configured per segment with {segment_id} {name} {ds} {ds_nodash} placeholders; the newest
file matching the pattern wins, so a re-export for the same date replaces the older one.
Hidden files and in-flight uploads (`*.partial`, `*.tmp`, `*.part`) are never picked.
"""

from __future__ import annotations

import fnmatch
import logging
import posixpath
import shutil
import stat
from pathlib import Path

from include.clients.sftp import SftpSettings, open_sftp
from include.common.scratch import private_file

log = logging.getLogger(__name__)

_IN_FLIGHT = (".partial", ".tmp", ".part", ".filepart")


def _eligible(name: str, pattern: str) -> bool:
    return not name.startswith(".") and not name.endswith(_IN_FLIGHT) and fnmatch.fnmatch(name, pattern)


def _newest(entries: list[tuple[str, float]]) -> str | None:
    """Latest modification time; the name breaks ties so the choice is deterministic."""
    if not entries:
        return None
    if len(entries) > 1:
        log.warning("Several drop files match; taking the newest. Candidates: %s", sorted(n for n, _ in entries))
    return max(entries, key=lambda e: (e[1], e[0]))[0]


def find_drop(directory: str, pattern: str, sftp: SftpSettings | None = None) -> str | None:
    """The file name to take from `directory`, or None when nothing has landed yet."""
    if sftp is None:
        root = Path(directory)
        if not root.is_dir():
            return None
        entries = [(p.name, p.stat().st_mtime) for p in root.iterdir() if p.is_file() and _eligible(p.name, pattern)]
        return _newest(entries)
    with open_sftp(sftp) as client:
        try:
            attrs = client.listdir_attr(directory)
        except FileNotFoundError:
            return None
        entries = [(a.filename, float(a.st_mtime or 0)) for a in attrs
                   if stat.S_ISREG(a.st_mode or 0) and _eligible(a.filename, pattern)]
        return _newest(entries)


def fetch_drop(directory: str, name: str, dest_dir: Path, sftp: SftpSettings | None = None) -> Path:
    """Copy the chosen drop file into the scratch directory (the original stays where it is)."""
    dest = private_file(dest_dir / name)  # 0600 before the copy writes customer data into it
    if sftp is None:
        shutil.copyfile(Path(directory) / name, dest)
    else:
        with open_sftp(sftp) as client:
            client.get(posixpath.join(directory, name), str(dest))  # paramiko pipelines reads (prefetch)
    return dest
