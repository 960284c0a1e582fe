"""Finding, ordering and awaiting a bucket export's objects (on a local fsspec filesystem; the
S3 path is tested end to end against a real S3 API server in tests/dags/test_braze_exports_e2e.py)."""

from __future__ import annotations

import os
import time
from datetime import UTC, date, datetime, timedelta

import fsspec

from include.segments_to_lytics.bucket_export import export_complete, export_folder, find_export_objects


def put(root, day: date, name: str, age_seconds: float = 3600, prefix: str = "p1") -> None:
    folder = root / "segment-export" / "seg" / day.strftime("%Y-%m-%d") / prefix
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(b"x")
    stamp = time.time() - age_seconds
    os.utime(path, (stamp, stamp))


def test_objects_are_listed_in_numeric_export_order(tmp_path):
    day = date(2026, 11, 23)
    for n in (10, 2, 0, 11, 1):
        put(tmp_path, day, f"p1-{n}.zip")
    put(tmp_path, day, "p1-3.zip.tmp")  # not an export file
    objects = find_export_objects(fsspec.filesystem("file"), str(tmp_path), "seg", "p1", day)
    assert [o.path.rsplit("/", 1)[1] for o in objects] == ["p1-0.zip", "p1-1.zip", "p1-2.zip", "p1-10.zip", "p1-11.zip"]


def test_the_folder_of_the_day_the_export_finished_is_found(tmp_path):
    requested = date(2026, 11, 23)
    put(tmp_path, requested + timedelta(days=1), "p1-0.json.gz")
    put(tmp_path, requested, "p1-0.zip", prefix="another-export")
    objects = find_export_objects(fsspec.filesystem("file"), str(tmp_path), "seg", "p1", requested)
    assert [o.path for o in objects] == [export_folder(str(tmp_path), "seg", requested + timedelta(days=1), "p1")
                                         + "/p1-0.json.gz"]
    assert find_export_objects(fsspec.filesystem("file"), str(tmp_path), "seg", "p1", requested - timedelta(days=3)) == []


def test_unnumbered_objects_are_read_in_the_order_they_were_written(tmp_path):
    day = date(2026, 11, 23)
    put(tmp_path, day, "zzz.zip", age_seconds=300)
    put(tmp_path, day, "aaa.zip", age_seconds=200)
    put(tmp_path, day, "mmm.zip", age_seconds=100)
    objects = find_export_objects(fsspec.filesystem("file"), str(tmp_path), "seg", "p1", day)
    assert [o.path.rsplit("/", 1)[1] for o in objects] == ["zzz.zip", "aaa.zip", "mmm.zip"]


def test_complete_only_after_a_quiet_period(tmp_path):
    day = date(2026, 11, 23)
    fs = fsspec.filesystem("file")
    assert export_complete([], 60) is False  # nothing written yet
    put(tmp_path, day, "p1-0.zip", age_seconds=600)
    put(tmp_path, day, "p1-1.zip", age_seconds=5)  # Braze is still writing
    objects = find_export_objects(fs, str(tmp_path), "seg", "p1", day)
    assert export_complete(objects, 60) is False
    assert export_complete(objects, 60, now=datetime.now(UTC) + timedelta(seconds=120)) is True
