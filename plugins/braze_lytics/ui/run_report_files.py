"""The files of a run that the report offers for download, and only those.

A download URL names a run and a *kind* of file (a fixed name, or a segment of the run); the
file's location is then worked out from the run alone, never taken from the request:

* audience runs: the state store key comes from ``include.audiences_to_braze.run_files`` for the
  run's key (``run_key_for(run_id)``), in the store the run was planned with (``state_url`` of the
  frozen configuration ``plan_audiences`` pushed, else the default). The store's own key check
  refuses ``..`` and absolute keys on top;
* segment runs: ``<quarantine_dir>/<segment>/<file_root>_<YYYYMMDD>.quarantine.csv`` for a segment
  the run planned (``plan_segments``' XCom) and the run's date, and the resolved path must lie in
  that segment's folder of this API server's quarantine directory.

Files are streamed in 1 MiB pieces (never read whole); Parquet files can also be had as CSV,
converted batch by batch.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from include.audiences_to_braze import run_files

PIECE = 1 << 20
PARQUET = "application/vnd.apache.parquet"
CSV = "text/csv; charset=utf-8"


# name in the URL -> (key of the run's file, media type, served as CSV converted from Parquet, label)
AUDIENCE_FILES = {
    "plan.json": (run_files.plan_key, "application/json", False, "the run's plan (counts, guard verdict)"),
    "planned_payloads.jsonl": (run_files.payloads_key, "application/x-ndjson", False,
                               "planned /users/track request bodies (dry run)"),
    "dead_letters.csv": (run_files.dead_letter_key, CSV, True, "users Braze rejected, retried next run"),
    "dead_letters.parquet": (run_files.dead_letter_key, PARQUET, False, "the same, as stored"),
    "parked.csv": (run_files.parked_key, CSV, True, "parked users (rejected too many runs in a row)"),
    "parked.parquet": (run_files.parked_key, PARQUET, False, "the same, as stored"),
}

# State store URLs the API server will open: file systems and object stores. A state_url comes from
# an XCom, which a user with XCom edit rights could change: never let that make the API server fetch
# http:// or other URLs.
SERVED_PROTOCOLS = frozenset({"file", "local", "s3", "s3a", "gs", "gcs", "abfs", "abfss", "az", "adl"})

# The configuration's rules for a segment name and a file root (include/segments_to_lytics/config.py).
_SEGMENT_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
_FILE_ROOT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


class UnservedStore(Exception):
    """The run's state store is not one the report reads (see SERVED_PROTOCOLS)."""


def state_store(config: dict | None):
    """The state store of an audience run, from its frozen configuration (XCom) or the default."""
    from braze_lytics.hooks.state_store import open_state_store
    from include.common import settings

    url = str((config or {}).get("state_url") or settings.default_state_url())
    protocols = {part.split("://", 1)[0].lower() if "://" in part else "file" for part in url.split("::")}
    if not protocols <= SERVED_PROTOCOLS:
        raise UnservedStore(f"the run's state store uses {sorted(protocols - SERVED_PROTOCOLS)}, which the run "
                            f"report does not read (served: {', '.join(sorted(SERVED_PROTOCOLS))})")
    return open_state_store(url)


def audience_file_key(run_id: str, name: str) -> str | None:
    """The state store key of the run's file called `name` in URLs, or None for an unknown name."""
    spec = AUDIENCE_FILES.get(name)
    return None if spec is None else spec[0](run_files.run_key_for(run_id))


def existing_audience_files(store, run_id: str) -> list[tuple[str, str]]:
    """(name, label) of the run's files that exist in the store, in AUDIENCE_FILES order."""
    present: dict[str, bool] = {}
    found = []
    for name, (key_of, _, _, label) in AUDIENCE_FILES.items():
        key = key_of(run_files.run_key_for(run_id))
        if key not in present:
            present[key] = store.exists(key)
        if present[key]:
            found.append((name, label))
    return found


def ds_nodash(value) -> str | None:
    """`YYYYMMDD` (UTC) of a datetime or an ISO 8601 text (`2026-11-23T00:00:00Z`); None if neither."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
    if not isinstance(value, datetime):
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y%m%d")


def quarantine_place():
    """Where this server looks for quarantine files: the BRAZE_LYTICS_QUARANTINE_URL store when it is set
    (shared by every worker), else the local BRAZE_LYTICS_QUARANTINE_DIR."""
    from braze_lytics.tasks.segments_to_lytics import quarantine_store
    from include.common import settings

    return quarantine_store() or settings.quarantine_dir()


def find_quarantine(place, segment: dict, day: str | None) -> Callable[[], Any] | None:
    """A function opening the quarantine file of a planned segment for the run's day (binary), or None when
    there is none. `place` is a local directory or a state store (see `quarantine_place`)."""
    if isinstance(place, (str, Path)):
        path = quarantine_path(Path(place), segment, day)
        return None if path is None else (lambda: open_local_file(path))
    names = _quarantine_names(segment, day)
    if names is None:
        return None
    from include.segments_to_lytics.transfer import quarantine_file

    key = quarantine_file(Path(), *names).as_posix()
    return (lambda: open_store_file(place, key)) if place.exists(key) else None


def _quarantine_names(segment: dict, day: str | None) -> tuple[str, str, str] | None:
    """(segment name, file root, YYYYMMDD) when all are plain names (no path tricks from XCom), else None."""
    name, root = segment.get("name"), segment.get("file_root") or segment.get("name")
    if not (isinstance(name, str) and _SEGMENT_NAME.fullmatch(name) and isinstance(root, str)
            and _FILE_ROOT.fullmatch(root) and isinstance(day, str) and re.fullmatch(r"\d{8}", day)):
        return None
    return name, root, day


def quarantine_path(quarantine_dir: Path, segment: dict, day: str | None) -> Path | None:
    """The quarantine file of a planned segment for the run's day, if it exists in this server's quarantine
    directory (the same name `TransferJob.quarantine_path` gives it); None otherwise."""
    names = _quarantine_names(segment, day)
    if names is None:
        return None
    from include.segments_to_lytics.transfer import quarantine_file

    name, root, day = names
    folder = (Path(quarantine_dir) / name).resolve()
    path = quarantine_file(Path(quarantine_dir), name, root, day).resolve()
    if path.parent != folder or not path.is_file():
        return None
    return path


def download_name(dag_id: str, run_id: str, name: str) -> str:
    return f"{dag_id}__{run_files.run_key_for(run_id)}__{name}"


def content_disposition(filename: str) -> str:
    """`attachment` with an ASCII fallback name and the RFC 6266 `filename*` form."""
    fallback = re.sub(r"[^A-Za-z0-9_.-]", "_", filename)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"


# -------------------------------------------------------------------------------------- streaming
def open_store_file(store, key: str):
    """The stored file opened for reading (raises the store's NotFoundError when it is gone)."""
    from include.common.errors import NotFoundError

    if not store.exists(key):
        raise NotFoundError(f"{key} does not exist")
    return store.fs.open(store.path(key), "rb")


def open_local_file(path: Path):
    return open(path, "rb")  # closed by iter_pieces


def iter_pieces(fh) -> Iterator[bytes]:
    """The content of an open binary file, PIECE bytes at a time; closes it."""
    try:
        while piece := fh.read(PIECE):
            yield piece
    finally:
        fh.close()


def iter_parquet_as_csv(store, key: str, batch_rows: int = 10_000) -> Iterator[bytes]:
    """A stored Parquet file as CSV (header first), batch by batch; list/struct values as JSON."""
    parquet = store.parquet_file(key)
    columns = parquet.schema_arrow.names
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    writer.writerow(columns)
    yield buffer.getvalue().encode()
    for batch in parquet.iter_batches(batch_size=batch_rows):
        buffer.seek(0)
        buffer.truncate()
        for row in batch.to_pylist():
            writer.writerow([_cell(row[c]) for c in columns])
        yield buffer.getvalue().encode()


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, list | dict):
        return json.dumps(value, ensure_ascii=False, default=str)
    return str(value)
