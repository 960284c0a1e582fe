"""Packaging the shaped CSV: what Lytics receives must decompress to the CSV, and re-runs must be byte-identical."""

from __future__ import annotations

import gzip
import hashlib
import zipfile
from pathlib import Path

import pytest

from include.common.errors import ConfigError
from include.segments_to_lytics.packaging import compress

CSV = ("user_id,note,timestamp\r\n" + "".join(
    f'u{i},"Zoë, ""quoted"" {i}\u2028🎉",2026-11-23T00:00:00Z\r\n' for i in range(20_000))).encode()


def _csv(tmp_path: Path, name: str = "seg_20261123.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(CSV)
    return path


def test_gzip_decompresses_to_the_csv_with_no_name_or_time_in_its_header(tmp_path):
    out = compress(_csv(tmp_path), "gzip", tmp_path / "seg_20261123.csv.gz", "seg_20261123.csv")
    data = out.read_bytes()
    assert gzip.decompress(data) == CSV
    flags, mtime = data[3], int.from_bytes(data[4:8], "little")
    assert flags & 0x08 == 0 and mtime == 0  # no FNAME, no time: the same input gives the same bytes
    assert out.stat().st_mode & 0o777 == 0o600  # customer data
    assert len(data) < len(CSV) / 3  # it compresses


def test_packaging_twice_gives_byte_identical_files(tmp_path):
    digests = set()
    for run in ("a", "b"):
        (tmp_path / run).mkdir()
        for kind, suffix in (("gzip", ".gz"), ("zip", ".zip")):
            out = compress(_csv(tmp_path / run), kind, tmp_path / run / f"seg_20261123.csv{suffix}", "seg_20261123.csv")
            digests.add((kind, hashlib.sha256(out.read_bytes()).hexdigest()))
    assert len(digests) == 2  # one digest per kind, the same for both runs


def test_zip_holds_the_csv_under_its_member_name(tmp_path):
    out = compress(_csv(tmp_path), "zip", tmp_path / "seg.zip", "seg_20261123.csv")
    with zipfile.ZipFile(out) as zf:
        assert zf.namelist() == ["seg_20261123.csv"] and zf.read("seg_20261123.csv") == CSV


def test_none_moves_the_csv_and_an_unknown_kind_is_a_config_error(tmp_path):
    assert compress(_csv(tmp_path), "none", tmp_path / "out.csv", "x").read_bytes() == CSV
    with pytest.raises(ConfigError, match="unknown compression 'bzip2'; use none, gzip or zip"):
        compress(_csv(tmp_path), "bzip2", tmp_path / "out.bz2", "x")
