"""The native row writer (fast_rows.c) against the Python path it stands in for.

The one property that matters: for any line, the native writer either writes exactly the bytes
(row, id digest, length) the Python path writes, or leaves the line to the Python path. It must
never shape a line that orjson refuses or whose id Python would reject, and it must handle the
realistic lines itself, or the fast path is silently unused.
"""

from __future__ import annotations

import random
from array import array
from pathlib import Path

import orjson
import pytest

from include.segments_to_lytics.csv_cells import quote
from include.segments_to_lytics.csv_shape import CsvShaper
from include.segments_to_lytics.duplicate_ids import id_digest, spill_files
from sandbox.braze_users import SegmentSpec, export_lines

try:
    from include.segments_to_lytics._fast_rows import RowWriter
except ImportError:  # pragma: no cover - the next test says so
    RowWriter = None

TS = "2026-11-23T00:00:00Z"
COLUMNS = {
    "user_id": "external_id",
    "braze_id": "braze_id",
    "email": "email",
    "first_name": "first_name",
    "country": "country",
    "city": "home_city",
    "created_at": "created_at",
    "tier": "custom_attributes.tier",
    "points": "custom_attributes.loyalty_points",
    "vip": "custom_attributes.vip",
    "note": "custom_attributes.note",
    "lucky": "custom_attributes.lucky_numbers",
    "geo_lat": "custom_attributes.address.geo.lat",
    "address": "custom_attributes.address",
    "devices": "devices",
}
# The realistic export's mapped fields with no floats inside a written list or object (the lists
# of the custom attributes hold floats, which the native writer leaves to Python).
PLAIN_COLUMNS = {k: v for k, v in COLUMNS.items() if k not in ("lucky", "address")}


def make_shaper(columns: dict[str, str] = COLUMNS) -> CsvShaper:
    return CsvShaper(columns, id_field="external_id", timestamp_column="exported_at", timestamp_value=TS)


def make_writer(shaper: CsvShaper):
    return RowWriter(shaper._paths, quote(TS).encode(), shaper.id_index)


def python_row(shaper: CsvShaper, line: bytes) -> tuple[bytes, int] | None:
    """What the Python path writes for `line` (row with CR LF, id digest), or None: not a row."""
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    if type(obj) is not dict:
        return None
    value = obj.get("external_id")
    if shaper._id_problem(value) is not None:
        return None
    row, key = shaper._row(obj)
    return row.encode(), id_digest(key)


def native_row(writer, line: bytes) -> tuple[bytes, int] | None:
    """What the native writer writes for `line`, or None: left to the Python path."""
    stop, rows, digests, lengths = writer.rows([line], 0)
    if stop == 0:
        assert rows == b"" and digests == b"" and lengths == b""
        return None
    assert array("I", lengths).tolist() == [len(rows)]
    return rows, array("Q", digests)[0]


@pytest.fixture(scope="module")
def writer_and_shaper():
    if RowWriter is None:
        pytest.fail("the native row writer is not built: run scripts/setup.sh (pip install -e . builds it)")
    shaper = make_shaper()
    return make_writer(shaper), shaper


@pytest.fixture(scope="module", params=["plain", "wide"])
def any_writer(request):
    if RowWriter is None:
        pytest.fail("the native row writer is not built: run scripts/setup.sh (pip install -e . builds it)")
    shaper = make_shaper(PLAIN_COLUMNS if request.param == "plain" else COLUMNS)
    return make_writer(shaper), shaper, request.param


def test_the_native_writer_is_built_and_used_by_default():
    assert RowWriter is not None, "scripts/setup.sh builds it; without it shaping is ~3x slower"
    assert make_shaper()._native_rows() is not None


def realistic_lines(n: int = 3000) -> list[bytes]:
    return [line.rstrip(b"\n") for line in export_lines(SegmentSpec("fast", n, realistic=True), None)]


def test_realistic_lines_are_shaped_natively_and_byte_for_byte_as_in_python(any_writer):
    writer, shaper, columns = any_writer
    lines = realistic_lines()
    native = python = 0
    for line in lines:
        want, got = python_row(shaper, line), native_row(writer, line)
        if got is None:
            python += 1
            continue
        native += 1
        assert got == want, line
    # Lines without an id (~2%) are left to Python, which quarantines them; everything else is native.
    no_id = sum(1 for line in lines if python_row(shaper, line) is None)
    assert no_id > 20
    if columns == "plain":
        assert python == no_id and native == len(lines) - no_id
    else:  # lines whose written lists/objects hold floats go to Python, the others stay native
        with_floats = sum(1 for line in lines if b"." in line.split(b'"lucky_numbers"')[-1].split(b"]")[0])
        assert python > no_id and native > len(lines) // 10, (python, native, with_floats)


EDGE_CASES = [
    # (line, handled natively?)
    (b'{"external_id":"u1","email":"a,b@x","first_name":"say \\"hi\\"\\nbye"}', True),
    (b'{"external_id":"u1","first_name":"\\u00e9\\u2028\\ud83d\\ude00 \\/ \\b\\f\\r\\t\\\\"}', True),
    (b'{"external_id":"u1","first_name":"\xe2\x80\xa8 \xf0\x9f\x98\x80 \xd7\xa9\xd7\x9c\xd7\x95\xd7\x9d"}', True),
    (b'{"external_id":"u1","first_name":"null","email":null,"country":"NULL"}', True),
    (b'{"external_id":"u1","custom_attributes":{"loyalty_points":-0,"vip":false,"tier":12}}', True),
    (b'{"external_id":"u1","custom_attributes":{"loyalty_points":123456789012345678}}', True),
    (b'{"external_id":"u1","custom_attributes":{"loyalty_points":1.5e-7,"tier":-0.0,"note":1E5}}', True),
    (b'{"external_id":"u1","custom_attributes":{"loyalty_points":0.1,"tier":1e22,"note":123.456e2}}', True),
    (b'{"external_id":"u1","devices":[{"os":"iOS","n":[1,true,null,"a\\"b"]},[],{}],"x":[1.5,2e400]}', False),
    (b'{"external_id":"u1","devices":[{"os":"iOS","n":[1,true,null,"a\\"b\\u0001\\u001f\\u007f"]},[],{}]}', True),
    (b' \t{ "external_id" : "u1" , "devices" : [ 1 , { "a" : { } } ] } \r', True),
    (b'{"external_id":"u1","external_id":"u2"}', True),  # the last one wins, as in a dict
    (b'{"external_id":"u1","custom_attributes":{"tier":"a"},"custom_attributes":{"vip":true}}', True),
    (b'{"external_id":"u1","custom_attributes":{"tier":"a"},"custom_attributes":7}', True),
    (b'{"external_id":"u1","custom_attributes":{"address":{"geo":{"lat":1,"lat":2}}}}', False),  # dup key written
    (b'{"external_id":"u1","custom_attributes":{"address":{"geo":"x"},"other":{"a":1,"a":2}}}', True),
    (b'{"external_id":"u1","custom_attributes":{"loyalty_points":1234567890123456789}}', False),
    (b'{"external_id":"u1","other":123456789012345678901234567890}', True),  # skipped: a float to orjson
    (b'{"external_id":"u1","devices":[0.5]}', False),  # a float inside a written list: orjson's format
    (b'{"external_id":"u1","devices":[12345678901234567890]}', False),
    (b'{"external_id":"u1","devices":[-0]}', False),
    (b'{"external_id":"u1","ext\\u0065rnal_id":"u2"}', False),  # an escaped key could be a column
    (b'{"external_id":"u1","other":{"ext\\u0065rnal_id":"u2"}}', True),  # not on a column's way
    (b'{"external_id":"u1","other":1e400}', False),  # infinity: orjson refuses the line
    (b'{"external_id":"u1","other":"\\ud800"}', False),  # lone surrogate: orjson refuses
    (b'{"external_id":"u1","other":"\\udc00\\ud800"}', False),
    (b'{"external_id":"u1","other":"\xed\xa0\x80"}', False),  # UTF-8 surrogate
    (b'{"external_id":"u1","other":"\xc0\xaf"}', False),  # overlong
    (b'{"external_id":"u1","other":"\xf4\x90\x80\x80"}', False),  # > U+10FFFF
    (b'{"external_id":"u1","other":"\xe2\x80"}', False),  # truncated
    (b'{"external_id":"u1","other":"tab\there"}', False),  # raw control character
    (b'{"external_id":"u1","other":NaN}', False),
    (b'{"external_id":"u1","other":01}', False),
    (b'{"external_id":"u1","other":1.}', False),
    (b'{"external_id":"u1","other":.5}', False),
    (b'{"external_id":"u1",}', False),
    (b'{"external_id":"u1"} x', False),
    (b'{"external_id":"u1"}{}', False),
    (b'\xef\xbb\xbf{"external_id":"u1"}', False),  # BOM: orjson refuses
    (b'["external_id","u1"]', False),
    (b'{"external_id":" "}', False),
    (b'{"external_id":""}', False),
    (b'{"external_id":"\\u2003"}', False),  # Unicode whitespace only: Python's isspace decides
    (b'{"external_id":12}', False),  # a number id: Python's rules
    (b'{"external_id":null}', False),
    (b'{"email":"a@x"}', False),
    (b'{"external_id":"u1","deep":' + b"[" * 70 + b"]" * 70 + b"}", False),
    (b'{"external_id":"u1","deep":' + b"[" * 20 + b"]" * 20 + b"}", True),
    (b'{"external_id":"u1","custom_attributes":{"lucky_numbers":[7,-1,0]}}', True),
    (b'{"external_id":"u,1\\r\\n","devices":"plain, string"}', True),
]


@pytest.mark.parametrize(("line", "native"), EDGE_CASES, ids=[repr(c[0][:60]) for c in EDGE_CASES])
def test_edge_cases_are_written_as_python_writes_them_or_left_to_python(writer_and_shaper, line, native):
    writer, shaper = writer_and_shaper
    got, want = native_row(writer, line), python_row(shaper, line)
    if native:
        assert got is not None, "expected the native writer to handle this line"
        assert got == want
    else:
        assert got is None, f"the native writer wrote {got!r}; Python: {want!r}"


def _mutations(rng: random.Random, line: bytes) -> bytes:
    kind = rng.randrange(8)
    data = bytearray(line)
    at = rng.randrange(len(data))
    if kind == 0:
        data[at] = rng.randrange(256)
    elif kind == 1:
        del data[at:at + rng.randint(1, 8)]
    elif kind == 2:
        data[at:at] = rng.choice([b"\\", b'"', b"\\u", b"\\ud83d", b"\\ude00", b"\xc3", b"\xe2\x80\xa8", b",", b"}",
                                  b"]", b" ", b"\x00", b"1e999", b"-0", b"0.1", b"12345678901234567890", b"\\n"])
    elif kind == 3:
        return bytes(data[:at])
    elif kind == 4:  # a number anywhere
        return line.replace(b"true", rng.choice([b"1.0", b"-0", b"1e5", b"99999999999999999999", b"-1.5E-3"]), 1)
    elif kind == 5:  # a string value escaped
        return line.replace(b'"gold"', b'"g\\u006fld"').replace(b'"iOS', b'"\\u0069OS')
    elif kind == 6:
        return line.replace(b'"external_id"', rng.choice([b'"external_id":"x","external_id"', b'"ext"']), 1)
    else:
        return line.replace(b"[", b"[ ", 2).replace(b":", b" : ", 3)
    return bytes(data)


@pytest.mark.parametrize("seed", range(4))
def test_mutated_realistic_lines_are_never_shaped_differently(any_writer, seed):
    """Fuzz: realistic lines with bytes flipped, cut, inserted, numbers and escapes swapped in.
    Whatever the native writer shapes must be exactly Python's row; what orjson refuses it leaves."""
    writer, shaper, _ = any_writer
    rng = random.Random(seed)
    lines = realistic_lines(1500)
    native = 0
    for _ in range(6000):
        line = _mutations(rng, rng.choice(lines))
        if not line:
            continue
        got = native_row(writer, line)
        if got is not None:
            native += 1
            assert got == python_row(shaper, line), line
    assert native > 500  # many mutations still leave a valid line the native writer takes


def test_floats_are_written_as_python_writes_them(writer_and_shaper):
    writer, shaper = writer_and_shaper
    rng = random.Random(7)
    texts = ["0.1", "1e-7", "-2.5E+300", "123456789.123456789", "5e-324", "1.7976931348623157e308", "0.0"]
    texts += [repr(rng.uniform(-1e6, 1e6)) for _ in range(300)]
    texts += [f"{rng.randint(1, 10**15)}e{rng.randint(-320, 300)}" for _ in range(300)]
    texts += [f"0.{rng.randint(0, 10**18):018d}" for _ in range(300)]
    for text in texts:
        line = b'{"external_id":"u1","custom_attributes":{"loyalty_points":' + text.encode() + b"}}"
        got, want = native_row(writer, line), python_row(shaper, line)
        assert got is None or got == want, text
        if want is not None:
            assert got is not None, text


def test_a_block_stops_at_the_first_line_for_python_and_goes_on_after_it(writer_and_shaper):
    writer, shaper = writer_and_shaper
    good = [b'{"external_id":"u%d"}' % i for i in range(5)]
    block = [good[0], good[1], b"", good[2], b"{bad", good[3], b" ", good[4]]
    stop, rows, digests, lengths = writer.rows(block, 0)
    assert stop == 2 and rows == python_row(shaper, good[0])[0] + python_row(shaper, good[1])[0]
    assert writer.rows(block, 3)[0] == 4 and writer.rows(block, 5)[0] == 6 and writer.rows(block, 7)[0] == 8
    assert writer.rows(block, 8)[0] == 8  # the end: nothing to do


def test_write_part_output_is_the_same_with_and_without_the_native_writer(tmp_path, monkeypatch):
    """The whole part (rows, spill files, quarantine) on realistic and mutated lines, both ways."""
    rng = random.Random(3)
    lines = realistic_lines(2000)
    lines += [_mutations(rng, rng.choice(lines)) for _ in range(2000)]
    lines += [b"", b" ", b"\r", b"  "]
    rng.shuffle(lines)
    blocks = [("f.json", range(i + 1, i + 1 + len(lines[i:i + 97])), lines[i:i + 97]) for i in range(0, len(lines), 97)]
    outputs = {}
    for mode in ("1", "0"):
        monkeypatch.setenv("BRAZE_LYTICS_NATIVE_SHAPING", mode)
        shaper = make_shaper(PLAIN_COLUMNS)
        assert (shaper._native_rows() is None) == (mode == "0")
        rows_path, rejects = tmp_path / f"{mode}.rows", tmp_path / f"{mode}.rejects"
        stats, part = shaper.write_part(blocks, rows_path, rejects)
        outputs[mode] = (rows_path.read_bytes(), rejects.read_bytes(), stats.rows_read, stats.rows_rejected,
                         dict(stats.reasons), part.rows, [p.read_bytes() for p in spill_files(rows_path)])
    assert outputs["1"] == outputs["0"]
    assert outputs["1"][5] > 2000


def test_columns_reading_one_field_twice_fall_back_to_python():
    shaper = CsvShaper({"a": "email", "b": "email", "id": "external_id"}, id_field="external_id",
                       timestamp_column="ts", timestamp_value=TS)
    assert shaper._native_rows() is None


def test_dashboard_csv_input_is_shaped_in_python(tmp_path: Path):
    shaper = CsvShaper({"id": "user_id"}, id_field="user_id", timestamp_column="ts", timestamp_value=TS, nested=False)
    assert shaper._native_rows() is None


@pytest.mark.parametrize("setup", ["native", "off", "not built"])
def test_the_log_says_which_row_writer_shaped_the_export(tmp_path, monkeypatch, caplog, setup):
    import zipfile

    from include.segments_to_lytics import csv_shape

    lines = realistic_lines(500)
    export = tmp_path / "e.zip"
    with zipfile.ZipFile(export, "w") as zf:
        zf.writestr("x-0.json", b"\n".join(lines) + b"\n")
    if setup == "off":
        monkeypatch.setenv("BRAZE_LYTICS_NATIVE_SHAPING", "0")
    elif setup == "not built":
        monkeypatch.setattr(csv_shape, "_RowWriter", None)
    caplog.set_level("INFO", logger=csv_shape.__name__)
    stats = csv_shape.shape_export(export, make_shaper(PLAIN_COLUMNS), tmp_path / "o.csv", tmp_path / "q.csv")
    text = caplog.text
    if setup == "native":
        python = stats.rows_written + stats.rows_duplicate - stats.rows_native
        assert stats.rows_native > 450 and f"Rows: {stats.rows_native} by the native row writer, {python} by" in text
    else:
        assert stats.rows_native == 0
        assert ("turned off (BRAZE_LYTICS_NATIVE_SHAPING=0)" if setup == "off" else "is not built here") in text


def test_escaped_and_spaced_forms_of_realistic_lines_are_shaped_as_in_python(any_writer):
    """The same users written by another JSON encoder: every non-ASCII character as a \\u escape
    (emoji as surrogate pairs), or with spaces after every separator."""
    import json

    writer, shaper, columns = any_writer
    native = 0
    for line in realistic_lines(800):
        obj = orjson.loads(line)
        for variant in (json.dumps(obj, ensure_ascii=True).encode(),
                        json.dumps(obj, ensure_ascii=False, indent=1).encode().replace(b"\n", b" ")):
            got = native_row(writer, variant)
            assert got is None or got == python_row(shaper, variant), variant
            native += got is not None
    assert native > (1400 if columns == "plain" else 300)
