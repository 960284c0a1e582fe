"""Reading Braze export files: export order, bounded memory, typed errors (CSV: test_dashboard_csv.py)."""

from __future__ import annotations

import gzip
import json
import os
import struct
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import pytest

from include.common.errors import ConfigError, PermanentError, TransientError
from include.segments_to_lytics.export_files import (
    DamagedExportError,
    ExportFileError,
    ExportFormatError,
    InflateRatioError,
    RejectedRecord,
    detect_kind,
    export_order,
    iter_records,
    member_groups,
)

REPO = Path(__file__).resolve().parents[3]


def make_zip(path: Path, members: dict[str, bytes], method=zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", method) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def records(path: Path, kind: str = "ndjson", **kw) -> list[tuple]:
    return list(iter_records(path, kind, **kw))


def patch_zip_headers(path: Path, **fields) -> None:
    """Overwrite fields of every local (PK\\3\\4) and central (PK\\1\\2) header, to forge a zip."""
    local = {"flags": (6, "<H"), "method": (8, "<H"), "crc": (14, "<I"), "size": (22, "<I")}
    central = {"flags": (8, "<H"), "method": (10, "<H"), "crc": (16, "<I"), "size": (24, "<I")}
    data = bytearray(path.read_bytes())
    for magic, offsets in ((b"PK\x03\x04", local), (b"PK\x01\x02", central)):
        at = data.find(magic)
        while at >= 0:
            for name, value in fields.items():
                off, fmt = offsets[name]
                struct.pack_into(fmt, data, at + off, value)
            at = data.find(magic, at + 4)
    path.write_bytes(bytes(data))


# --- export order -------------------------------------------------------------------------------


def test_export_order_compares_numbers_as_numbers():
    names = ["p/x-10.json", "p/x-2.json", "p/x-0.json", "p/x-1.json", "p/x-11.json"]
    assert export_order(names) == ["p/x-0.json", "p/x-1.json", "p/x-2.json", "p/x-10.json", "p/x-11.json"]
    keys = ["seg/2026-11-23/pre-12.zip", "seg/2026-11-23/pre-3.zip", "seg/2026-11-23/pre-100.gz"]
    assert export_order(keys) == ["seg/2026-11-23/pre-3.zip", "seg/2026-11-23/pre-12.zip", "seg/2026-11-23/pre-100.gz"]
    assert export_order(["x-1.json", "x-01.json", "x-b", "x-a"]) == ["x-01.json", "x-1.json", "x-a", "x-b"]


def test_members_are_read_in_numeric_export_order(tmp_path):
    """Regression: `x-10.json` was read before `x-2.json` (string order)."""
    shuffled = [7, 11, 0, 3, 10, 1, 9, 2, 5, 4, 8, 6]
    export = make_zip(tmp_path / "e.zip", {f"pre/pre-{n}.json": b'{"n": %d}\n' % n for n in shuffled})
    assert [json.loads(p)["n"] for _s, _l, p in records(export)] == list(range(12))
    assert records(export)[10][0] == "e.zip!pre/pre-10.json"


def test_member_groups_split_in_numeric_export_order(tmp_path):
    export = make_zip(tmp_path / "e.zip", {f"pre-{n}.json": b'{"n": %d}\n' % n for n in range(12)})
    groups = member_groups(export, 3)
    assert groups == [[f"pre-{n}.json" for n in range(i, i + 4)] for i in (0, 4, 8)]
    read = [json.loads(p)["n"] for g in groups for _s, _l, p in iter_records(export, "ndjson", g)]
    assert read == list(range(12))
    # members handed over in another order are still read in export order
    assert [json.loads(p)["n"] for *_, p in iter_records(export, "ndjson", ["pre-10.json", "pre-9.json"])] == [9, 10]


# --- record size limit ----------------------------------------------------------------------------


def test_a_line_over_the_limit_is_rejected_not_held(tmp_path):
    long = b'{"external_id": "u2", "note": "' + b"x" * 5000 + b'"}'
    export = make_zip(tmp_path / "e.zip", {"pre-0.json": b'{"external_id": "u1"}\n' + long + b'\n{"external_id": "u3"}\n'})
    got = records(export, max_record_bytes=1000)
    assert [(s, n) for s, n, _p in got] == [("e.zip!pre-0.json", 1), ("e.zip!pre-0.json", 2), ("e.zip!pre-0.json", 3)]
    assert got[0][2] == b'{"external_id": "u1"}' and got[2][2] == b'{"external_id": "u3"}'  # no line break
    rejected = got[1][2]
    assert isinstance(rejected, RejectedRecord)
    assert rejected.reason == f"record longer than 1,000 bytes ({len(long):,} bytes)"
    assert rejected.excerpt == long[:200].decode()
    with pytest.raises(AttributeError):  # frozen
        rejected.reason = "x"


def test_the_limit_is_on_the_line_without_its_newline(tmp_path):
    at_limit, over = b"{" + b"a" * 98 + b"}", b"{" + b"a" * 99 + b"}"
    export = tmp_path / "e.json"
    export.write_bytes(at_limit + b"\n" + at_limit + b"\r\n" + over + b"\r\n" + over + b"\n" + over)  # no final newline
    got = [p for *_, p in records(export, max_record_bytes=100)]
    assert got[:2] == [at_limit, at_limit + b"\r"]  # the line without its LF (a CR stays)
    assert got[2:] == [RejectedRecord("record longer than 100 bytes (101 bytes)", over.decode()[:200])] * 3


def test_default_limit_is_16_mib_and_the_excerpt_is_short_and_printable(tmp_path):
    line = b'{"a": "\x00\x01\x1b\xff\xfe' + "é€".encode() * 10 + b'\t' + b"z" * (17 << 20) + b'"}\n'
    export = tmp_path / "e.json"
    export.write_bytes(b'{"ok": 1}\n' + line + b'{"ok": 2}\n')
    got = records(export)
    assert [type(p) for *_, p in got] == [bytes, RejectedRecord, bytes]
    rejected = got[1][2]
    assert rejected.reason == f"record longer than 16 MiB ({len(line) - 1:,} bytes)"
    assert len(rejected.excerpt) == 200
    assert rejected.excerpt.startswith('{"a": "\\x00\\x01\\x1b\ufffd\ufffd' + "é€" * 10 + "\\x09zzz")
    assert not any(ord(c) < 32 for c in rejected.excerpt)


def test_a_long_gzip_line_is_rejected_too(tmp_path):
    export = tmp_path / "e.json.gz"
    export.write_bytes(gzip.compress(b'{"a": 1}\n') + gzip.compress(b'{"b": "' + os.urandom(3000).hex().encode() + b'"}\n'))
    got = [p for *_, p in records(export, max_record_bytes=4096)]
    assert got[0] == b'{"a": 1}' and isinstance(got[1], RejectedRecord)


def test_limits_are_validated():
    with pytest.raises(ConfigError, match="max_record_bytes"):
        records(Path("unused.json"), max_record_bytes=0)
    with pytest.raises(ConfigError, match="max_inflate_ratio"):
        records(Path("unused.json"), max_inflate_ratio=0.5)


# --- decompression ratio ----------------------------------------------------------------------------


def test_zip_member_declaring_a_huge_inflated_size_is_refused_before_reading(tmp_path):
    export = make_zip(tmp_path / "e.zip", {"pre-0.json": b'{"a": 1}\n', "pre-1.json": b" " * (50 << 20) + b"\n"})
    with pytest.raises(InflateRatioError) as err:
        next(iter_records(export, "ndjson"))  # nothing is yielded, not even the good first member
    msg = str(err.value)
    assert msg.startswith("e.zip!pre-1.json: would inflate to 52,428,801 bytes from ")
    assert "decompression bomb or a damaged export" in msg and "max_inflate_ratio" in msg
    assert isinstance(err.value, PermanentError)
    assert [type(p) for *_, p in records(export, max_inflate_ratio=None)] == [bytes, RejectedRecord]  # lifted
    small = make_zip(tmp_path / "s.zip", {"pre-0.json": b" " * 1_000_000 + b"\n"})  # ~1000:1, but under 1 MiB
    assert [len(p) for *_, p in records(small)] == [1_000_000]


def test_zip_member_lying_about_its_size_is_stopped_while_inflating(tmp_path):
    export = make_zip(tmp_path / "e.zip", {"pre-0.json": b" " * (50 << 20) + b"\n"})
    patch_zip_headers(export, size=1000)
    with pytest.raises(InflateRatioError, match=r"^e\.zip!pre-0\.json: inflated past .*max_inflate_ratio=200"):
        records(export)
    with pytest.raises(DamagedExportError, match="size or CRC-32 does not match"):
        records(export, max_inflate_ratio=None)


def test_gzip_stream_over_the_ratio_is_stopped(tmp_path):
    export = tmp_path / "e.json.gz"
    export.write_bytes(gzip.compress(b'{"a": 1}\n' + b" " * (60 << 20)))
    with pytest.raises(InflateRatioError, match=r"^e\.json\.gz: inflated past .* more than max_inflate_ratio=200 "):
        records(export)
    got = [p for *_, p in records(export, max_inflate_ratio=100_000)]  # the limit can be raised
    assert got[0] == b'{"a": 1}' and got[1].reason == f"record longer than 16 MiB ({60 << 20:,} bytes)"


def test_gzip_members_inside_a_zip_are_read_and_capped(tmp_path):
    lines = b"".join(b'{"n": %d}\n' % n for n in range(1000))
    export = make_zip(tmp_path / "e.zip", {"pre-0.json.gz": gzip.compress(lines)}, zipfile.ZIP_STORED)
    assert b"".join(p + b"\n" for *_, p in records(export)) == lines
    bomb = make_zip(tmp_path / "b.zip", {"pre-0.json.gz": gzip.compress(b" " * (50 << 20))}, zipfile.ZIP_STORED)
    with pytest.raises(InflateRatioError, match=r"^b\.zip!pre-0\.json\.gz: inflated past"):
        records(bomb)


# --- memory stays bounded -------------------------------------------------------------------------

_CHILD = """
import json, resource, sys
from pathlib import Path
resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))  # the old reader dies here instead of swapping
from include.segments_to_lytics.export_files import iter_records
path, kind, ratio = Path(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3])
seen, error = [], None
try:
    for _s, _n, p in iter_records(path, kind, max_inflate_ratio=ratio):
        seen.append(type(p).__name__ + ":" + (p.reason if type(p).__name__ == "RejectedRecord" else str(len(p))))
except Exception as exc:
    error = type(exc).__name__ + ": " + str(exc)[:300]
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(json.dumps({"seen": seen, "error": error, "hwm_kb": hwm}))
"""
_HOSTILE = 300 << 20


def _write_hostile(path: Path, head: bytes, fill: bytes, kind: str) -> Path:
    """`head` then 300 MiB of `fill` without a newline, streamed to disk (zip member or gzip)."""
    chunk, level = fill * (1 << 20), 9 if fill == b"\x00" else 1  # NULs: a ~1000:1 bomb, like the incident
    if kind == "gz":
        with gzip.open(path, "wb", compresslevel=level) as fh:
            fh.write(head)
            for _ in range(_HOSTILE >> 20):
                fh.write(chunk)
    else:
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=level) as zf, zf.open(kind, "w") as fh:
            fh.write(head)
            for _ in range(_HOSTILE >> 20):
                fh.write(chunk)
    return path


def _run_child(path: Path, kind: str, ratio) -> dict:
    out = subprocess.run([sys.executable, "-c", _CHILD, str(path), kind, json.dumps(ratio)], cwd=REPO,
                         capture_output=True, text=True, timeout=300, check=True)
    return json.loads(out.stdout)


_TOO_LONG = "RejectedRecord:record longer than 16 MiB ("


@pytest.mark.parametrize(("packaging", "kind", "head", "fill", "ratio", "expect"), [
    # the incident: one line of NULs; refused by the zip's declared sizes / while inflating the gzip
    ("zip", "ndjson", b'{"note": "', b"\x00", 200, "InflateRatioError"),
    ("gz", "ndjson", b'{"note": "', b"\x00", 200, "InflateRatioError"),
    # the ratio cap lifted, so the line reader itself must cope
    ("zip", "ndjson", b'{"a": 1}\n{"note": "', b"x", None, ["bytes:8", _TOO_LONG]),
    ("gz", "ndjson", b'{"a": 1}\n{"note": "', b"\x00", None, ["bytes:8", _TOO_LONG]),
    ("zip", "csv", b"user_id,note\nu1,", b"x", None, [_TOO_LONG]),
], ids=["zip-nul", "gz-nul", "zip-line", "gz-nul-line", "zip-csv"])
def test_peak_memory_stays_bounded_on_hostile_input(tmp_path, packaging, kind, head, fill, ratio, expect):
    """Regression: a 1 MB zip holding one 1 GiB line of NULs drove the reader to 9.5 GB RSS."""
    member = "users.csv" if kind == "csv" else "pre-0.json"
    path = _write_hostile(tmp_path / f"h.{packaging}", head, fill, "gz" if packaging == "gz" else member)
    result = _run_child(path, kind, ratio)
    if isinstance(expect, str):
        assert result["error"].startswith(expect + ": ") and result["seen"] == []
    else:
        assert result["error"] is None
        assert [s[:len(e)] for s, e in zip(result["seen"], expect, strict=True)] == expect
    print(f"peak RSS {result['hwm_kb'] / 1024:.0f} MB")
    assert result["hwm_kb"] < 200 * 1024


def test_nul_data_without_the_ratio_cap_is_not_ndjson(tmp_path):
    export = tmp_path / "e.json.gz"
    export.write_bytes(gzip.compress(b"\x00" * (4 << 20)))
    with pytest.raises(ExportFormatError, match=r"^e\.json\.gz: not NDJSON text, it starts with binary data \(00 00"):
        records(export, max_inflate_ratio=None)


# --- damaged and unreadable files -----------------------------------------------------------------


def _lines(n: int = 20_000) -> bytes:
    return b"".join(b'{"external_id": "u%d", "email": "u%d@example.com"}\n' % (i, i) for i in range(n))


def assert_permanent(exc: BaseException) -> None:
    assert isinstance(exc, ExportFileError) and isinstance(exc, PermanentError)
    assert not isinstance(exc, TransientError)
    assert "u1@example" not in str(exc)  # no customer data in the message


def test_truncated_gzip_is_a_damaged_export(tmp_path):
    """Regression: a raw EOFError (retried as if transient)."""
    data = gzip.compress(_lines())
    export = tmp_path / "e.json.gz"
    export.write_bytes(data[: len(data) // 2])
    with pytest.raises(DamagedExportError) as err:
        records(export)
    assert_permanent(err.value)
    assert str(err.value).startswith("e.json.gz: the file is damaged (truncated gzip stream, after ")
    assert "request a new export" in str(err.value) and "clear the task" in str(err.value)


def test_corrupt_gzip_data_and_crc_are_damaged_exports(tmp_path):
    data = bytearray(gzip.compress(_lines()))
    export = tmp_path / "e.json.gz"
    export.write_bytes(bytes(data[:-8]) + b"\0\0\0\0" + bytes(data[-4:]))  # wrong CRC in the trailer
    with pytest.raises(DamagedExportError, match="CRC") as err:
        records(export)
    assert_permanent(err.value)
    data[10:60] = b"\xff" * 50  # the start of the deflate stream
    export.write_bytes(bytes(data))
    with pytest.raises(DamagedExportError, match="corrupt compressed data"):
        records(export)


@pytest.mark.parametrize("reader", ["records", "detect_kind", "member_groups"])
def test_truncated_zip_is_a_damaged_export(tmp_path, reader):
    """Regression: a raw zipfile.BadZipFile."""
    full = make_zip(tmp_path / "full.zip", {f"pre-{n}.json": _lines(5000) for n in range(3)}).read_bytes()
    export = tmp_path / "e.zip"
    export.write_bytes(full[: len(full) // 2])
    with pytest.raises(DamagedExportError, match=r"^e\.zip: the file is damaged, not a readable zip") as err:
        {"records": records, "detect_kind": detect_kind, "member_groups": lambda p: member_groups(p, 4)}[reader](export)
    assert_permanent(err.value)


@pytest.mark.parametrize("method", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
def test_zip_crc_mismatch_is_a_damaged_export(tmp_path, method):
    """Regression: a raw BadZipFile('Bad CRC-32') for stored members."""
    export = make_zip(tmp_path / "e.zip", {"pre-0.json": _lines(100)}, method)
    patch_zip_headers(export, crc=12345)
    with pytest.raises(DamagedExportError, match=r"^e\.zip!pre-0\.json: the file is damaged \(.*CRC") as err:
        records(export)
    assert_permanent(err.value)


def test_zip_member_with_an_unsupported_method_says_how_to_fix(tmp_path):
    """Regression: a raw NotImplementedError for Deflate64 (what Windows' zip tool writes for big files)."""
    export = make_zip(tmp_path / "e.zip", {"pre-0.json": _lines(100)})
    patch_zip_headers(export, method=9)
    with pytest.raises(ExportFormatError, match=r"^e\.zip!pre-0\.json: .*method 9 \(Deflate64\).*re-zip") as err:
        records(export)
    assert_permanent(err.value)


def test_encrypted_zip_member_is_refused(tmp_path):
    export = make_zip(tmp_path / "e.zip", {"pre-0.json": _lines(10)}, zipfile.ZIP_STORED)
    patch_zip_headers(export, flags=1)
    with pytest.raises(ExportFormatError, match=r"^e\.zip!pre-0\.json: the member is encrypted"):
        records(export)


def test_zip_without_data_files_is_an_error_but_an_empty_zip_is_an_empty_export(tmp_path):
    junk = make_zip(tmp_path / "j.zip", {"__MACOSX/._pre-0.json": b"\x00\x05", ".DS_Store": b"\x00"})
    with zipfile.ZipFile(junk, "a") as zf:
        zf.mkdir("pre")
    with pytest.raises(ExportFormatError, match=r"^j\.zip: the zip holds no data files, only '__MACOSX/._pre-0\.json'"):
        records(junk)
    assert records(make_zip(tmp_path / "empty.zip", {})) == []  # what an empty segment exports


@pytest.mark.parametrize(("content", "hint"), [
    (os.urandom(4096), ""),
    (zlib.compress(b"x" * 1000), ""),
    (b"PK\x03\x04" + bytes(200), ": looks like a zip archive"),
    (gzip.compress(b'{"a": 1}\n'), ": looks like gzip data"),
], ids=["random", "zlib", "zip", "gzip"])
def test_gzip_of_binary_data_is_not_ndjson(tmp_path, content, hint):
    export = tmp_path / "e.json.gz"
    export.write_bytes(gzip.compress(content))
    with pytest.raises(ExportFormatError, match=r"^e\.json\.gz: not NDJSON text, it starts with binary data") as err:
        records(export)
    assert hint in str(err.value) and "re-export" in str(err.value)


def test_text_that_is_not_json_is_left_to_the_consumer(tmp_path):
    export = tmp_path / "e.json.gz"
    export.write_bytes(gzip.compress(b"hello, world\n\n{not json\n"))
    assert [p for *_, p in records(export)] == [b"hello, world", b"{not json"]


def test_required_fields_do_not_apply_to_ndjson(tmp_path):
    export = tmp_path / "e.json"
    export.write_bytes(b'{"a": 1}\n')
    assert len(records(export, required_fields=["email"])) == 1


def test_excerpt_escapes_controls_and_stays_short():
    from include.segments_to_lytics.export_files import excerpt

    assert excerpt(b"a\x00b\r\n") == "a\\x00b"
    assert excerpt(b"\x85\xc2\x85") == "\ufffd\\x85"
    assert excerpt(b"\x01" * 1000) == "\\x01" * 50
    assert len(excerpt("€".encode() * 1000)) == 200


def test_plain_ndjson_files_are_read_and_blank_lines_skipped(tmp_path):
    export = tmp_path / "e.json"
    export.write_bytes(b'{"a": 1}\n\n\r\n{"b": 2}')
    assert records(export) == [("e.json", 1, b'{"a": 1}'), ("e.json", 4, b'{"b": 2}')]


def _reference_lines(data: bytes, limit: int) -> list[tuple[int, object]]:
    """What the reader must yield, computed the obvious way with the whole file in memory."""
    parts = data.split(b"\n")
    if parts and not parts[-1]:
        parts.pop()
    out = []
    for n, line in enumerate(parts, 1):
        size = len(line) - line.endswith(b"\r")
        if size > limit:
            out.append((n, ("rejected", size)))
        elif len(line) > 1 or line.strip():
            out.append((n, line))
    return out


@pytest.mark.parametrize("seed", range(8))
def test_lines_across_read_chunks_are_split_and_numbered_exactly(tmp_path, seed):
    """Lines and CR LF pairs cut by the reader's 1 MiB reads, over-long lines ending in the middle of
    a read, at its end or at the end of the file: the same records as splitting the whole file."""
    import random

    from include.segments_to_lytics.export_files import _BLOCK
    from include.segments_to_lytics.export_records import SKIP_CHUNK as _CHUNK

    rng = random.Random(seed)
    limit = [1000, 100_000, 300_000, 900_000, _CHUNK + 10, _BLOCK - 1, _BLOCK + 1, 2000][seed]
    pieces = []
    for _ in range(rng.randint(20, 60)):
        size = rng.choice([0, 1, 2, rng.randint(3, 200), rng.randint(1000, 400_000), _BLOCK - 1, _BLOCK,
                           _BLOCK + 1, limit - 1, limit, limit + 1, rng.randint(limit, 3 * _CHUNK)])
        body = b'{"x": "' + b"y" * max(0, size - 10) + b'"}' if size >= 10 else b" " * size
        pieces.append(body + rng.choice([b"\n", b"\r\n"]))
    data = b"".join(pieces)
    if seed % 2:
        data = data.rstrip(b"\r\n")  # no final line break
    export = tmp_path / "e.json"
    export.write_bytes(data)
    got = [(n, ("rejected", int(p.reason.rsplit("(", 1)[1].split()[0].replace(",", "")))
                if isinstance(p, RejectedRecord) else p) for _s, n, p in records(export, max_record_bytes=limit)]
    assert got == _reference_lines(data, limit)


@pytest.mark.parametrize("limit", [1000, 300_000])
def test_a_line_of_exactly_the_limit_whose_cr_lf_is_cut_by_a_read_is_kept(tmp_path, limit):
    """The read ends between the CR and the LF of a line exactly `limit` bytes long: the CR is the
    line break's, not the record's, so the line is kept, not rejected as one byte too long."""
    from include.segments_to_lytics.export_files import _BLOCK

    line = b'{"x": "' + b"y" * (limit - 9) + b'"}'
    assert len(line) == limit
    reads = -(-(limit + 1) // _BLOCK)  # the read whose end falls right after the CR
    filler_size = reads * _BLOCK - (limit + 1)
    filler = b"".join(b'{"f": "' + b"z" * 90 + b'"}\n' for _ in range(filler_size // 100))
    filler += b" " * (filler_size - len(filler) - 1) + b"\n" if filler_size > len(filler) else b""
    data = filler + line + b"\r\n" + b'{"n": 1}\n'
    assert data.index(line) + limit + 1 == reads * _BLOCK  # the CR is a read's last byte
    export = tmp_path / "e.json"
    export.write_bytes(data)
    got = [p for *_, p in records(export, max_record_bytes=limit)]
    assert got[-2:] == [line + b"\r", b'{"n": 1}']
