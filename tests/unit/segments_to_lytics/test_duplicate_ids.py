"""Duplicate ids keep their first occurrence in export order - across many files and processes."""

from __future__ import annotations

import csv
import subprocess
import sys
import zipfile
from pathlib import Path

import orjson
import pytest

from include.segments_to_lytics import csv_shape
from include.segments_to_lytics.csv_shape import CsvShaper, shape_export
from include.segments_to_lytics.duplicate_ids import id_digest

COLUMNS = {"user_id": "external_id", "name": "name", "note": "note"}


def shaper() -> CsvShaper:
    return CsvShaper(COLUMNS, id_field="external_id", timestamp_column="ts", timestamp_value="T")


def braze_zip(path: Path, files: list[list[dict]]) -> Path:
    """Members named like Braze's: <prefix>-0.json ... <prefix>-N.json (no zero padding)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for n, users in enumerate(files):
            zf.writestr(f"abc123-{n}.json", b"".join(orjson.dumps(u) + b"\n" for u in users))
    return path


def rows(path: Path) -> list[list[str]]:
    with open(path, encoding="utf-8", newline="") as fh:
        return list(csv.reader(fh))


def twelve_files() -> list[list[dict]]:
    """12 files of 50 users; 'dup-a' first in file 2, again in files 10 and 11; 'dup-b' in 1 and 9,
    with a quoted newline in the later copy (its bytes must be cut out exactly)."""
    files = [[{"external_id": f"f{n}-u{i}", "name": f"n{n}.{i}", "note": ""} for i in range(50)] for n in range(12)]
    files[2][7] = {"external_id": "dup-a", "name": "FIRST", "note": "kept"}
    files[10][3] = {"external_id": "dup-a", "name": "later", "note": "dropped"}
    files[11][49] = {"external_id": "dup-a", "name": "last", "note": "dropped too"}
    files[1][0] = {"external_id": "dup-b", "name": "FIRST-b", "note": "x"}
    files[9][20] = {"external_id": "dup-b", "name": "later-b", "note": 'multi\nline, "quoted"\u2028'}
    return files


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_first_occurrence_in_numeric_file_order_is_kept_across_files_and_workers(tmp_path, workers):
    export = braze_zip(tmp_path / "export.zip", twelve_files())
    out, quarantine = tmp_path / "out.csv", tmp_path / "q.csv"
    stats = shape_export(export, shaper(), out, quarantine, workers=workers)
    written = rows(out)
    by_id = {r[0]: r for r in written[1:]}
    assert by_id["dup-a"][1] == "FIRST" and by_id["dup-b"][1] == "FIRST-b"
    assert len(written) - 1 == stats.rows_written == 12 * 50 - 3 and stats.rows_duplicate == 3
    assert [r[0] for r in written[1:]] == [u["external_id"] for f in twelve_files() for u in f
                                           if (u["external_id"], u["name"]) not in
                                           {("dup-a", "later"), ("dup-a", "last"), ("dup-b", "later-b")}]
    q = rows(quarantine)[1:]
    assert [(r[0], r[1]) for r in q] == [("export.zip!abc123-9.json", "21"), ("export.zip!abc123-10.json", "4"),
                                      ("export.zip!abc123-11.json", "50")]
    assert all("duplicate external_id" in r[2] for r in q)
    assert "abc123-2.json line 8" in q[1][2] and "abc123-1.json line 1" in q[0][2]
    assert orjson.loads(q[0][3])["note"] == 'multi\nline, "quoted"\u2028'


def test_output_is_byte_identical_whatever_the_number_of_workers(tmp_path):
    export = braze_zip(tmp_path / "export.zip", twelve_files())
    outputs = []
    for workers in (1, 2, 3):
        out = tmp_path / f"out{workers}.csv"
        shape_export(export, shaper(), out, tmp_path / f"q{workers}.csv", workers=workers)
        outputs.append((out.read_bytes(), (tmp_path / f"q{workers}.csv").read_bytes()))
    assert outputs[0] == outputs[1] == outputs[2]


def test_ids_sharing_a_digest_are_both_kept(tmp_path, monkeypatch):
    """Every id gets the same digest: only the exact comparison can tell them apart."""
    export = braze_zip(tmp_path / "export.zip", twelve_files())
    honest = tmp_path / "honest.csv"
    shape_export(export, shaper(), honest, tmp_path / "q1.csv", workers=2)
    monkeypatch.setattr(csv_shape, "id_digest", lambda key: 42)
    colliding = tmp_path / "colliding.csv"
    stats = shape_export(export, shaper(), colliding, tmp_path / "q2.csv", workers=2)
    assert colliding.read_bytes() == honest.read_bytes() and stats.rows_duplicate == 3


def test_id_digest_is_the_same_in_every_process():
    """Worker processes find duplicates from id digests: they must agree whatever each process's
    hash seed (Python's own str hash is salted per process)."""
    ids = ["u1", "ünïcödé-😀", "x" * 300, ""]
    code = f"from include.segments_to_lytics.duplicate_ids import id_digest; print([id_digest(i) for i in {ids!r}])"
    seen = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={"PYTHONHASHSEED": seed, "PATH": "/usr/bin:/bin"}).stdout.strip()
            for seed in ("1", "2", "3")}
    assert seen == {str([id_digest(i) for i in ids])}
    assert len({id_digest(i) for i in ids}) == len(ids)
