"""Bucket exports: a Braze segment export written to the workspace's own S3/Azure/GCS bucket.

When a Braze workspace has bucket credentials, `POST /users/export/segment` answers with an
`object_prefix` and no download link, and Braze writes the export as one object per ~5,000 users
to ``<bucket>/segment-export/<SEGMENT_ID>/<YYYY-MM-dd>/<object_prefix>/<name>-<N>.zip`` (``.gz``
with ``output_format: gzip``), where the date is the day the export *finished*, which can be a
day after the request (docs/vendor-contracts.md#braze-segment-exports).

Braze writes no completion marker. The export counts as complete when its folder holds at least
one object and no object is newer than a quiet period: Braze writes the files one after the
other, so a folder that has not changed for `quiet_seconds` is finished. The check is stateless
(object timestamps), so a sensor in reschedule mode can ask it at every poke.

Everything here works on an fsspec filesystem (what Airflow's ``ObjectStoragePath`` gives for
a connection), so S3, GCS and Azure share one code path; the Airflow glue builds it.
"""

from __future__ import annotations

import logging
import posixpath
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from include.common.errors import NotFoundError, TransientError
from include.common.scratch import private_file
from include.segments_to_lytics.export_files import export_order

log = logging.getLogger(__name__)

EXPORT_SUFFIXES = (".zip", ".gz")
_NUMBERED = re.compile(r"-\d+(\.json)?\.(zip|gz)$")  # "<object_prefix>-<N>.zip", "...-<N>.json.gz"
DAYS_TO_LOOK = 3  # the request day and the two after it (a long export finishes after midnight)


@dataclass(frozen=True)
class BucketObject:
    path: str  # the filesystem's path, e.g. "bucket/segment-export/seg/2026-11-23/prefix/prefix-0.zip"
    size: int
    modified: datetime


def export_folder(root: str, segment_id: str, day: date, object_prefix: str) -> str:
    """Where Braze puts the objects of one export finished on `day`."""
    return posixpath.join(root.rstrip("/"), "segment-export", segment_id, day.strftime("%Y-%m-%d"), object_prefix)


def find_export_objects(fs, root: str, segment_id: str, object_prefix: str, requested: date) -> list[BucketObject]:
    """The export's objects in export order (numeric file order), or [] while there are none."""
    for offset in range(DAYS_TO_LOOK):
        folder = export_folder(root, segment_id, requested + timedelta(days=offset), object_prefix)
        try:
            entries = fs.ls(folder, detail=True, refresh=True)
        except FileNotFoundError:
            continue
        except OSError as exc:  # network trouble, throttling: the next poke tries again
            raise TransientError(f"listing the bucket export folder {folder!r} failed: {exc}") from exc
        objects = {posixpath.basename(e["name"]): e for e in entries
                   if e.get("type") == "file" and e["name"].endswith(EXPORT_SUFFIXES)}
        if objects:
            found = {name: BucketObject(path=e["name"], size=int(e.get("size") or 0), modified=_modified(fs, e))
                     for name, e in objects.items()}
            if all(_NUMBERED.search(name) for name in found):
                order = export_order(list(found))
            else:  # names without a file number: the order Braze wrote them in
                order = sorted(found, key=lambda name: (found[name].modified, name))
            return [found[name] for name in order]
    return []


def _modified(fs, entry: dict) -> datetime:
    stamp = entry.get("LastModified") or entry.get("last_modified") or entry.get("mtime")
    if stamp is None:
        stamp = fs.modified(entry["name"])
    if isinstance(stamp, int | float):
        stamp = datetime.fromtimestamp(stamp, UTC)
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)


def export_complete(objects: list[BucketObject], quiet_seconds: float, now: datetime | None = None) -> bool:
    """True when the export has objects and none of them changed for `quiet_seconds`."""
    if not objects:
        return False
    newest = max(o.modified for o in objects)
    return ((now or datetime.now(UTC)) - newest).total_seconds() >= quiet_seconds


def fetch_export_objects(fs, objects: list[BucketObject], dest_dir: Path) -> list[Path]:
    """Copy the objects into the scratch directory (streamed, in export order); their local paths."""
    if not objects:
        raise NotFoundError("the bucket export has no objects any more; were they moved or deleted?")
    local = []
    for n, obj in enumerate(objects):
        dest = dest_dir / f"{n:05d}-{posixpath.basename(obj.path)}"
        try:
            private_file(dest)  # 0600 before the object's customer data is written into it
            fs.get_file(obj.path, str(dest))
        except FileNotFoundError:
            raise NotFoundError(f"bucket object {obj.path!r} disappeared while it was being read; re-export "
                                f"the segment and clear its task group") from None
        except OSError as exc:
            raise TransientError(f"reading bucket object {obj.path!r} failed: {exc}") from exc
        local.append(dest)
    log.info("Read %d object(s), %d bytes, from the bucket export", len(local), sum(o.size for o in objects))
    return local


def delete_export_objects(fs, objects: list[BucketObject]) -> None:
    """Remove the consumed objects (only when the segment asks for it, after delivery)."""
    fs.rm([o.path for o in objects])
    log.info("Deleted %d consumed object(s) from the bucket", len(objects))
