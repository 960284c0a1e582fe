"""Reading dashboard CSV exports: bounded records, rows refused one by one, header checks."""

from __future__ import annotations

import pytest

from include.segments_to_lytics.export_files import (
    ExportFormatError,
    RejectedRecord,
    detect_kind,
    iter_records,
)
from tests.unit.segments_to_lytics.test_export_files import assert_permanent, make_zip, records


def test_csv_record_over_the_limit_is_rejected_and_the_next_rows_are_intact(tmp_path):
    big = "y" * 3000
    text = (f"user_id,note\r\nu1,short\r\nu2,{big}\r\nu3,\"multi\nline {big}\nstill, inside\"\r\n"
            f"u4,\"quoted \"\" ok\"\r\nu5,last")
    export = tmp_path / "d.csv"
    export.write_text(text, encoding="utf-8")
    got = records(export, "csv", max_record_bytes=1000)
    assert [n for _s, n, _p in got] == [2, 3, 6, 7, 8]
    assert got[0][2] == {"user_id": "u1", "note": "short"}
    assert isinstance(got[1][2], RejectedRecord) and got[1][2].reason == "record longer than 1,000 bytes (3,003 bytes)"
    assert got[1][2].excerpt == f"u2,{big}"[:200]
    assert isinstance(got[2][2], RejectedRecord) and got[2][2].excerpt.startswith('u3,"multi\\x0aline yyy') and len(got[2][2].excerpt) == 200
    assert got[3][2] == {"user_id": "u4", "note": 'quoted " ok'}
    assert got[4][2] == {"user_id": "u5", "note": "last"}


def test_csv_multiline_records_within_the_limit_are_kept_and_excerpts_start_at_the_record(tmp_path):
    text = ('user_id,note\nu1,"two\nlines"\nu2,"' + "\n".join(["z" * 90] * 20) + '"\nu3,"a ""b""\nc"\n')
    export = tmp_path / "d.csv"
    export.write_text(text, encoding="utf-8")
    got = records(export, "csv", max_record_bytes=1000)
    assert [(n, p) for _s, n, p in got if not isinstance(p, RejectedRecord)] == [
        (3, {"user_id": "u1", "note": "two\nlines"}), (25, {"user_id": "u3", "note": 'a "b"\nc'})]
    assert got[1][1] == 23 and got[1][2].reason == "record longer than 1,000 bytes (1,824 bytes)"
    assert got[1][2].excerpt.startswith('u2,"zzz') and len(got[1][2].excerpt) == 200


def test_csv_rows_the_csv_module_refuses_are_rejected_one_by_one(tmp_path):
    import csv

    export = tmp_path / "d.csv"
    export.write_text("user_id,note\nu1,short\nu2," + "n" * 50 + "\nu3,ok\n", encoding="utf-8")
    it = iter_records(export, "csv")
    previous = csv.field_size_limit()
    try:
        assert next(it)[2] == {"user_id": "u1", "note": "short"}
        csv.field_size_limit(20)  # someone else in the process lowered the global limit
        rejected = next(it)
        assert rejected[1] == 3 and rejected[2] == RejectedRecord(
            "unreadable CSV row: field larger than field limit (20)", "u2," + "n" * 50)
        assert next(it)[1:] == (4, {"user_id": "u3", "note": "ok"})
    finally:
        csv.field_size_limit(previous)


@pytest.mark.parametrize(("text", "why"), [("\nu1,a\n", "the header, is empty"),
                                           ("h" * 2000 + "\nu1\n", "record longer than 1,000 bytes")])
def test_unreadable_csv_header_is_an_error(tmp_path, text, why):
    export = tmp_path / "d.csv"
    export.write_text(text, encoding="utf-8")
    with pytest.raises(ExportFormatError, match=f"^d\\.csv: .*{why}"):
        records(export, "csv", max_record_bytes=1000)


def test_csv_field_over_the_csv_modules_default_limit_is_read(tmp_path):
    """Regression: a field over 128 KiB (csv's default field_size_limit) raised a raw `_csv.Error`."""
    devices = "d" * (200 << 10)
    export = make_zip(tmp_path / "d.zip", {"users.csv": f"user_id,devices\nu1,{devices}\nu2,x\n".encode()})
    assert [p for *_, p in records(export, "csv")] == [{"user_id": "u1", "devices": devices},
                                                       {"user_id": "u2", "devices": "x"}]


def test_csv_not_in_utf8_names_the_line(tmp_path):
    export = make_zip(tmp_path / "d.zip", {"users.csv": "user_id,city\nu1,Zürich\nu2,Köln\n".encode("latin-1")})
    it = iter_records(export, "csv")
    with pytest.raises(ExportFormatError, match=r"^d\.zip!users\.csv line 2: not UTF-8 text .*re-export the CSV as UTF-8"):
        list(it)


def test_csv_basics_are_kept(tmp_path):
    text = "\ufeffuser_id,email\r\nu1,a@x\r\n\r\nu2\r\nu3,\"c,d\"\r\n"
    export = make_zip(tmp_path / "d.zip", {"users.csv": text.encode()})
    assert detect_kind(export) == "csv"
    assert records(export, "csv") == [("d.zip!users.csv", 2, {"user_id": "u1", "email": "a@x"}),
                                      ("d.zip!users.csv", 4, "u2"),
                                      ("d.zip!users.csv", 5, {"user_id": "u3", "email": "c,d"})]


def test_csv_header_missing_a_required_field_names_close_matches(tmp_path):
    """Regression: `Email` in the header vs `email` in the mapping gave a blank column, silently."""
    export = make_zip(tmp_path / "d.zip", {"users.csv": b"user_id,Email,first_nme\nu1,a@x,Ann\n"})
    with pytest.raises(ExportFormatError) as err:
        records(export, "csv", required_fields=["user_id", "email", "first_name", "tier"])
    msg = str(err.value)
    assert msg.startswith("d.zip!users.csv: the CSV header has no column 'email', 'first_name', 'tier'")
    assert "'email': found 'Email'" in msg and "'first_name': found 'first_nme'" in msg
    assert "header found: ['user_id', 'Email', 'first_nme']" in msg and "`columns` mapping" in msg
    assert_permanent(err.value)
    assert records(export, "csv", required_fields=["user_id", "Email"])[0][2]["Email"] == "a@x"


def test_every_csv_member_header_is_checked(tmp_path):
    export = make_zip(tmp_path / "d.zip", {"users-1.csv": b"user_id,email\nu1,a@x\n",
                                           "users-2.csv": b"user_id,mail\nu2,b@x\n"})
    with pytest.raises(ExportFormatError, match=r"^d\.zip!users-2\.csv: the CSV header has no column 'email'"):
        records(export, "csv", required_fields=["user_id", "email"])
