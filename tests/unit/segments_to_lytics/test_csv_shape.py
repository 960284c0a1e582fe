"""Shaping Braze export records into Lytics CSV: quoting, unicode, nesting, dedupe, quarantine."""

from __future__ import annotations

import csv
import gzip
import io
import zipfile
from pathlib import Path

import orjson
import pytest

from include.common.errors import ConfigError
from include.segments_to_lytics.csv_shape import CsvShaper, shape_export
from include.segments_to_lytics.packaging import compress
from include.segments_to_lytics.quarantine_file import QUARANTINE_HEADER
from sandbox.braze_users import SegmentSpec, expected_users, export_lines

TS = "2026-11-23T00:00:00Z"
COLUMNS = {
    "user_id": "external_id",
    "email": "email",
    "first_name": "first_name",
    "last_name": "last_name",
    "tier": "custom_attributes.tier",
    "points": "custom_attributes.loyalty_points",
    "vip": "custom_attributes.vip",
    "note": "custom_attributes.note",
    "devices": "devices",
}


@pytest.fixture(autouse=True, params=["native", "python"])
def row_writer(request, monkeypatch):
    """Every test here runs both ways: with the native row writer (fast_rows.c) and in Python."""
    monkeypatch.setenv("BRAZE_LYTICS_NATIVE_SHAPING", "1" if request.param == "native" else "0")
    return request.param


def shaper(**kw) -> CsvShaper:
    return CsvShaper(COLUMNS, id_field="external_id", timestamp_column="exported_at", timestamp_value=TS, **kw)


def ndjson_zip(path: Path, lines: list[bytes], per_file: int = 5000) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for n, start in enumerate(range(0, max(len(lines), 1), per_file)):
            zf.writestr(f"export/part-{n:04d}.json", b"".join(lines[start:start + per_file]))
    return path


def read_csv(path: Path) -> list[list[str]]:
    with open(path, encoding="utf-8", newline="") as fh:
        return list(csv.reader(fh))


def expected_row(user: dict) -> list[str]:
    ca = user.get("custom_attributes") or {}

    def cell(v):
        if v is None:
            return ""
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (dict, list)):
            return orjson.dumps(v).decode()
        return str(v)

    return [cell(user.get("external_id")), cell(user.get("email")), cell(user.get("first_name")),
            cell(user.get("last_name")), cell(ca.get("tier")), cell(ca.get("loyalty_points")),
            cell(ca.get("vip")), cell(ca.get("note")), cell(user.get("devices")), TS]


def test_rows_match_the_generated_users_exactly(tmp_path):
    spec = SegmentSpec("seg", 3000)
    export = ndjson_zip(tmp_path / "e.zip", list(export_lines(spec, None)), per_file=700)
    stats = shape_export(export, shaper(), tmp_path / "out.csv", tmp_path / "q.csv")
    rows = read_csv(tmp_path / "out.csv")
    assert rows[0] == [*COLUMNS, "exported_at"]
    assert rows[1:] == [expected_row(u) for u in expected_users(spec, None)]
    assert (stats.rows_read, stats.rows_written, stats.rows_quarantined) == (3000, 3000, 0)
    assert not (tmp_path / "q.csv").exists()


def test_rfc4180_quoting_and_unicode_survive(tmp_path):
    tricky = {"external_id": "u1", "email": "a@b.c", "first_name": "Zoë 李 🎉", "last_name": 'The "Rock", Jr.',
              "custom_attributes": {"note": "line one\nline two, with comma\r\nand \"quotes\"", "vip": False,
                                    "loyalty_points": 0, "tier": None}, "devices": []}
    export = ndjson_zip(tmp_path / "e.zip", [orjson.dumps(tricky) + b"\n"])
    shape_export(export, shaper(), tmp_path / "out.csv", tmp_path / "q.csv")
    raw = (tmp_path / "out.csv").read_bytes()
    assert raw.endswith(b"\r\n") and b"\r\n" in raw.split(b"\r\n", 1)[0] + b"\r\n"
    assert b'"The ""Rock"", Jr."' in raw  # quotes doubled, field quoted
    assert "Zoë 李 🎉".encode() in raw  # UTF-8, no escaping
    row = read_csv(tmp_path / "out.csv")[1]
    assert row == ["u1", "a@b.c", "Zoë 李 🎉", 'The "Rock", Jr.', "", "0", "false",
                   "line one\nline two, with comma\r\nand \"quotes\"", "[]", TS]


def test_missing_nested_parent_and_non_object_parent_give_empty_cells(tmp_path):
    lines = [orjson.dumps({"external_id": "a"}) + b"\n",
             orjson.dumps({"external_id": "b", "custom_attributes": "oops"}) + b"\n"]
    export = ndjson_zip(tmp_path / "e.zip", lines)
    shape_export(export, shaper(), tmp_path / "out.csv", tmp_path / "q.csv")
    assert read_csv(tmp_path / "out.csv")[1:] == [["a", *[""] * 8, TS], ["b", *[""] * 8, TS]]


def test_rows_without_id_and_broken_lines_go_to_quarantine_with_reasons(tmp_path):
    lines = [
        b'{"external_id": "ok1", "email": "x@y.z"}\n',
        b'{"email": "no-id@y.z"}\n',
        b'{"external_id": "   ", "email": "blank@y.z"}\n',
        b'{"external_id": "ok2", "email"\n',
        b'["not", "an", "object"]\n',
        b'{"external_id": {"nested": 1}}\n',
        b"\n",  # blank lines are not records
    ]
    export = ndjson_zip(tmp_path / "e.zip", lines)
    stats = shape_export(export, shaper(), tmp_path / "out.csv", tmp_path / "q.csv")
    assert [r[0] for r in read_csv(tmp_path / "out.csv")[1:]] == ["ok1"]
    assert (stats.rows_read, stats.rows_written, stats.rows_rejected) == (6, 1, 5)
    q = read_csv(tmp_path / "q.csv")
    assert q[0] == QUARANTINE_HEADER
    reasons = {r[1]: r[2] for r in q[1:]}
    assert reasons["2"] == "missing external_id"
    assert reasons["3"] == "empty external_id"
    assert reasons["4"].startswith("invalid JSON")
    assert reasons["5"] == "not a JSON object"
    assert reasons["6"] == "external_id is not a string (dict)"
    assert q[1][0] == "e.zip!export/part-0000.json" and q[1][3] == '{"email": "no-id@y.z"}'
    assert stats.rejected_share == pytest.approx(5 / 6)


def test_duplicate_ids_keep_the_first_occurrence_deterministically(tmp_path):
    spec = SegmentSpec("dup", 2000, duplicate_every=100)
    lines = list(export_lines(spec, None))
    export = ndjson_zip(tmp_path / "e.zip", lines, per_file=300)
    stats = shape_export(export, shaper(), tmp_path / "out.csv", tmp_path / "q.csv")
    rows = read_csv(tmp_path / "out.csv")[1:]
    ids = [r[0] for r in rows]
    assert len(ids) == len(set(ids)) == 2000 - 20
    users = list(expected_users(spec, None))
    first_seen = {}
    for u in users:
        first_seen.setdefault(u["external_id"], u)
    assert rows == [expected_row(u) for u in first_seen.values()]  # the first of each id, in order
    assert stats.rows_duplicate == 20 and stats.rows_rejected == 0
    q = read_csv(tmp_path / "q.csv")[1:]
    assert len(q) == 20 and all("first occurrence" in r[2] for r in q)
    again = tmp_path / "again.csv"
    shape_export(export, shaper(), again, tmp_path / "q2.csv")
    assert again.read_bytes() == (tmp_path / "out.csv").read_bytes()


def test_parallel_workers_give_byte_identical_output(tmp_path):
    spec = SegmentSpec("par", 12_000, duplicate_every=997, missing_id_every=1500, malformed_every=2500)
    export = ndjson_zip(tmp_path / "e.zip", list(export_lines(spec, None)))
    (tmp_path / "1").mkdir()
    (tmp_path / "2").mkdir()
    one = shape_export(export, shaper(), tmp_path / "1/out.csv", tmp_path / "1/q.csv", workers=1)
    two = shape_export(export, shaper(), tmp_path / "2/out.csv", tmp_path / "2/q.csv", workers=2)
    assert (tmp_path / "1/out.csv").read_bytes() == (tmp_path / "2/out.csv").read_bytes()
    assert (tmp_path / "1/q.csv").read_bytes() == (tmp_path / "2/q.csv").read_bytes()
    assert (one.rows_read, one.rows_written, one.rows_rejected, one.rows_duplicate) == \
        (two.rows_read, two.rows_written, two.rows_rejected, two.rows_duplicate)
    assert one.rows_rejected > 0 and one.rows_duplicate > 0


def test_gzip_and_zip_of_gz_and_plain_inputs_read_the_same(tmp_path):
    lines = list(export_lines(SegmentSpec("fmt", 1200), None))
    multi = tmp_path / "multi.json.gz"  # one gzip member per Braze file, concatenated
    multi.write_bytes(b"".join(gzip.compress(b"".join(lines[i:i + 500])) for i in range(0, 1200, 500)))
    zgz = tmp_path / "zgz.zip"
    with zipfile.ZipFile(zgz, "w") as zf:
        zf.writestr("a/0.json.gz", gzip.compress(b"".join(lines[:600])))
        zf.writestr("a/1.json.gz", gzip.compress(b"".join(lines[600:])))
        zf.writestr("__MACOSX/._0.json.gz", b"junk")
    plain = tmp_path / "plain.json"
    plain.write_bytes(b"".join(lines))
    outputs = []
    for src in (multi, zgz, plain):
        out = tmp_path / f"{src.stem}.csv"
        assert shape_export(src, shaper(), out, tmp_path / "q.csv", workers=2).rows_written == 1200
        outputs.append(out.read_bytes())
    assert outputs[0] == outputs[1] == outputs[2]


def test_dashboard_csv_columns_are_taken_literally(tmp_path):
    src = tmp_path / "users.csv"
    src.write_text('Braze ID,user_id,email,custom.tier\nb1,u1,a@x.io,gold\nb2,,b@x.io,silver\nb3,u3\n', encoding="utf-8")
    zipped = tmp_path / "users-123.zip"
    with zipfile.ZipFile(zipped, "w") as zf:
        zf.write(src, "users.csv")
    sh = CsvShaper({"braze_id": "Braze ID", "user_id": "user_id", "tier": "custom.tier"}, id_field="user_id",
                   timestamp_column="ts", timestamp_value=TS, nested=False)
    stats = shape_export(zipped, sh, tmp_path / "out.csv", tmp_path / "q.csv")
    assert read_csv(tmp_path / "out.csv") == [["braze_id", "user_id", "tier", "ts"], ["b1", "u1", "gold", TS]]
    reasons = [r[2] for r in read_csv(tmp_path / "q.csv")[1:]]
    assert reasons == ["empty user_id", "wrong number of fields for the header"]
    assert stats.rows_read == 3


def test_rerun_without_rejects_removes_a_stale_quarantine_file(tmp_path):
    q = tmp_path / "q.csv"
    bad = ndjson_zip(tmp_path / "bad.zip", [b'{"email": "x"}\n', b'{"external_id": "a"}\n'])
    shape_export(bad, shaper(), tmp_path / "out.csv", q)
    assert q.exists()
    good = ndjson_zip(tmp_path / "good.zip", [b'{"external_id": "a"}\n'])
    shape_export(good, shaper(), tmp_path / "out.csv", q)
    assert not q.exists()


def test_id_field_must_be_mapped_to_a_column():
    with pytest.raises(ConfigError, match="not mapped to any CSV column"):
        CsvShaper({"email": "email"}, id_field="external_id", timestamp_column="ts", timestamp_value=TS)


@pytest.mark.parametrize("compression", ["gzip", "zip"])
def test_compression_is_byte_identical_across_reruns_and_readable(tmp_path, compression):
    digests = []
    for n in range(2):
        plain = tmp_path / f"p{n}.csv"
        plain.write_bytes(b"user_id,ts\r\nu1,x\r\n")
        dest = compress(plain, compression, tmp_path / f"out{n}.{compression}", "braze_20261123.csv")
        digests.append(dest.read_bytes())
        if compression == "gzip":
            assert gzip.decompress(dest.read_bytes()) == b"user_id,ts\r\nu1,x\r\n"
        else:
            with zipfile.ZipFile(io.BytesIO(dest.read_bytes())) as zf:
                assert zf.namelist() == ["braze_20261123.csv"]
                assert zf.read("braze_20261123.csv") == b"user_id,ts\r\nu1,x\r\n"
        assert not plain.exists()
    assert digests[0] == digests[1]


@pytest.mark.parametrize("cell", ["plain", "", "a,b", 'say "hi"', "line\nbreak", "cr\rhere", "crlf\r\n", '"', " spaced ", "Zoë,李"])
def test_cell_quoting_matches_the_csv_module_exactly(cell):
    from include.segments_to_lytics.csv_cells import quote as _quote

    buf = io.StringIO()
    csv.writer(buf, lineterminator="\r\n").writerow([cell, "x"])
    assert f"{_quote(cell)},x\r\n" == buf.getvalue()


_VALUES = ["plain", "", "a,b", 'say "hi"', "line\nbreak", "cr\rhere", "u\u2028sep", "null", "Zoë,李", None, True, False,
           0, -5, 9007199254740993, 1.5, -0.0, 1e22, 2.5e-08, [], {}, [1, 2.5, "x,y"], {"a": 'b"c', "n": None, "t": True},
           ["null", None, "\u2028"]]


@pytest.mark.parametrize("value", _VALUES, ids=repr)
def test_generated_row_matches_format_value_and_the_csv_module(value):
    """Every kind of JSON value, top level and nested, as the generated row function writes it: the
    same bytes as csv.writer of format_value's cells."""
    from include.segments_to_lytics.csv_cells import format_value

    sh = CsvShaper({"id": "external_id", "v": "v", "nested": "custom_attributes.v"}, id_field="external_id",
                   timestamp_column="ts", timestamp_value=TS)
    record = orjson.loads(orjson.dumps({"external_id": "u,1", "v": value, "custom_attributes": {"v": value}}))
    line, key = sh._row(record)
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\r\n").writerow(
        ["u,1", format_value(record["v"]), format_value(record["custom_attributes"]["v"]), TS])
    assert line == buf.getvalue()
    assert key == '"u,1"'


def test_corrupt_zip_member_is_a_clear_error_not_a_short_file(tmp_path):
    from include.common.errors import PermanentError
    from include.segments_to_lytics.export_files import iter_json_lines

    export = ndjson_zip(tmp_path / "e.zip", list(export_lines(SegmentSpec("bad", 3000), None)))
    data = bytearray(export.read_bytes())
    data[len(data) // 2] ^= 0xFF  # flip a byte in the compressed stream
    export.write_bytes(bytes(data))
    with pytest.raises(PermanentError, match=r"e\.zip!export/part-0000\.json: .*(corrupt|CRC)"):
        sum(1 for _ in iter_json_lines(export))


def test_stored_zip_members_are_read_too(tmp_path):
    lines = list(export_lines(SegmentSpec("st", 100), None))
    stored = tmp_path / "stored.zip"
    with zipfile.ZipFile(stored, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("a.json", b"".join(lines))
    assert shape_export(stored, shaper(), tmp_path / "o.csv", tmp_path / "q.csv").rows_written == 100

