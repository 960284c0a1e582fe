"""Duplicate ids keep their first occurrence in export order - across many files and processes."""

from __future__ import annotations

import csv
import math
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import orjson
import pytest

from include.segments_to_lytics import csv_shape, duplicate_ids
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


# --- bounded memory: digests sorted one partition at a time -------------------------------------


def spilled(tmp_path: Path) -> list[str]:
    """Scratch files shaping leaves beside its output (part rows, rejects, spills, partitions)."""
    return sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("out.csv."))


def many_files(n: int = 25) -> list[list[dict]]:
    """`n` files of 20 users; ids repeated across files whose numeric and name orders differ
    (-2 < -10 < -21 as numbers, -10 < -2 < -21 as names)."""
    files = [[{"external_id": f"f{f}-u{i}", "name": f"n{f}.{i}", "note": str(i)} for i in range(20)] for f in range(n)]
    files[3][5] = {"external_id": "dup-x", "name": "FIRST-x", "note": "kept"}
    files[10][0] = {"external_id": "dup-x", "name": "later-x", "note": "dropped"}
    files[21][19] = {"external_id": "dup-x", "name": "last-x", "note": "dropped"}
    files[2][19] = {"external_id": "dup-y", "name": "FIRST-y", "note": "kept"}
    files[12][7] = {"external_id": "dup-y", "name": "later-y", "note": 'a "quoted",\r\nvalue\u2028'}
    files[9][0] = {"external_id": "dup-z", "name": "FIRST-z", "note": "kept"}
    files[19][1] = {"external_id": "dup-z", "name": "later-z", "note": "dropped"}
    files[1][1] = {"external_id": "null", "name": "FIRST-null", "note": "null"}
    files[11][1] = {"external_id": "null", "name": "later-null", "note": "dropped"}
    return files


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_several_partitions_give_the_same_bytes_as_one(tmp_path, monkeypatch, workers):
    """ROWS_PER_PARTITION forced down to 7 rows: ~70 partitions of a 500-row export, split by
    digest into partition files and sorted one at a time; output and quarantine byte-identical to
    the single-partition run, and no scratch file left behind."""
    export = braze_zip(tmp_path / "export.zip", many_files())
    one, many = tmp_path / "one", tmp_path / "many"
    one.mkdir()
    many.mkdir()
    stats_one = shape_export(export, shaper(), one / "out.csv", one / "q.csv", workers=workers)
    split_into = []
    real_split = duplicate_ids._split
    monkeypatch.setattr(duplicate_ids, "_split", lambda parts, paths: (split_into.append(len(paths)),
                                                                        real_split(parts, paths))[1])
    monkeypatch.setattr(duplicate_ids, "ROWS_PER_PARTITION", 7)
    stats_many = shape_export(export, shaper(), many / "out.csv", many / "q.csv", workers=workers)
    assert split_into == [math.ceil(stats_many.rows_read / 7)] and split_into[0] > 50
    assert (many / "out.csv").read_bytes() == (one / "out.csv").read_bytes()
    assert (many / "q.csv").read_bytes() == (one / "q.csv").read_bytes()
    assert stats_many.rows_duplicate == stats_one.rows_duplicate == 5
    assert spilled(one) == spilled(many) == []


def test_duplicates_across_more_than_ten_files_keep_the_first_in_numeric_order(tmp_path, monkeypatch):
    monkeypatch.setattr(duplicate_ids, "ROWS_PER_PARTITION", 16)
    export = braze_zip(tmp_path / "export.zip", many_files())
    outputs = set()
    for workers in (1, 2, 3):
        out, q = tmp_path / f"out{workers}.csv", tmp_path / f"q{workers}.csv"
        stats = shape_export(export, shaper(), out, q, workers=workers)
        written = rows(out)
        by_id = {r[0]: r for r in written[1:]}
        assert [by_id[i][1] for i in ("dup-x", "dup-y", "dup-z", "null")] == ["FIRST-x", "FIRST-y", "FIRST-z",
                                                                            "FIRST-null"]
        assert len(written) - 1 == stats.rows_written == 25 * 20 - 5
        output_row = {r[0]: n for n, r in enumerate(written[1:], 1)}
        q = rows(q)[1:]
        assert [(r[0].rsplit("!", 1)[1], r[1]) for r in q] == [
            ("abc123-10.json", "1"), ("abc123-11.json", "2"), ("abc123-12.json", "8"), ("abc123-19.json", "2"),
            ("abc123-21.json", "20")]
        assert [orjson.loads(r[3])["name"] for r in q] == ["later-x", "later-null", "later-y", "later-z", "last-x"]
        firsts = {"dup-x": ("abc123-3.json", 6), "dup-y": ("abc123-2.json", 20), "dup-z": ("abc123-9.json", 1),
                  "null": ("abc123-1.json", 2)}
        for r in q:
            key = orjson.loads(r[3])["user_id"]
            source, line = firsts[key]
            assert f"duplicate external_id {key!r}: the first occurrence (export.zip!{source} line {line}, " \
                   f"output row {output_row[key]}) is kept" == r[2]
        assert orjson.loads(q[2][3])["note"] == 'a "quoted",\r\nvalue\u2028'
        outputs.add((out.read_bytes(), (tmp_path / f"q{workers}.csv").read_bytes()))
    assert len(outputs) == 1


def test_ids_sharing_a_digest_across_partitions(tmp_path, monkeypatch):
    """Few digests for many ids: groups of colliding ids, each in one of several partitions."""
    export = braze_zip(tmp_path / "export.zip", many_files())
    shape_export(export, shaper(), tmp_path / "honest.csv", tmp_path / "q1.csv", workers=2)
    monkeypatch.setattr(csv_shape, "id_digest", lambda key: (len(key) % 5) << 32 | len(key))
    monkeypatch.setattr(duplicate_ids, "ROWS_PER_PARTITION", 50)
    stats = shape_export(export, shaper(), tmp_path / "colliding.csv", tmp_path / "q2.csv", workers=2)
    assert (tmp_path / "colliding.csv").read_bytes() == (tmp_path / "honest.csv").read_bytes()
    assert (tmp_path / "q2.csv").read_bytes() == (tmp_path / "q1.csv").read_bytes()
    assert stats.rows_duplicate == 5


def test_find_duplicates_spill_files_are_private_and_removed(tmp_path, monkeypatch):
    """Spill and partition files are 0600 while they exist, and gone after success and failure."""
    monkeypatch.setattr(duplicate_ids, "ROWS_PER_PARTITION", 40)
    export = braze_zip(tmp_path / "export.zip", many_files())
    seen: dict[str, int] = {}
    real = duplicate_ids._candidates

    def look(digests):
        for p in tmp_path.iterdir():
            if p.name.startswith("out.csv."):
                seen[p.name] = stat.S_IMODE(p.stat().st_mode)
        return real(digests)

    monkeypatch.setattr(duplicate_ids, "_candidates", look)
    shape_export(export, shaper(), tmp_path / "out.csv", tmp_path / "q.csv", workers=2)
    kinds = {name.removeprefix("out.csv.") for name in seen}
    assert {"0.rows.digests", "1.rows.lengths", "0.rows.lines"} <= kinds
    assert any(name.startswith("out.csv.ids.") and name.endswith(".indexes") for name in seen)
    assert set(seen.values()) == {0o600}
    assert spilled(tmp_path) == []

    def boom(digests):
        raise RuntimeError("sorting failed")

    monkeypatch.setattr(duplicate_ids, "_candidates", boom)
    with pytest.raises(RuntimeError, match="sorting failed"):
        shape_export(export, shaper(), tmp_path / "out.csv", tmp_path / "q2.csv", workers=2)
    assert spilled(tmp_path) == []


def test_spill_files_are_removed_when_a_worker_fails(tmp_path, monkeypatch):
    export = braze_zip(tmp_path / "export.zip", many_files())
    calls = []
    flush = duplicate_ids.RowSpill.flush

    def failing_flush(self):  # both row writers (native and Python) spill through here
        calls.append(1)
        if len(calls) > 3:
            raise ValueError("worker failed mid-part")
        flush(self)

    monkeypatch.setattr(duplicate_ids.RowSpill, "flush", failing_flush)
    monkeypatch.setattr(duplicate_ids, "SPILL_ROWS", 8)
    for workers in (1, 2):
        with pytest.raises(ValueError, match="worker failed"):
            shape_export(export, shaper(), tmp_path / "out.csv", tmp_path / "q.csv", workers=workers)
        assert spilled(tmp_path) == []
        calls.clear()
