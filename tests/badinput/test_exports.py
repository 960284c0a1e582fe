"""Export files through the whole transfer (fetch -> shape -> deliver to the real sshd): every bad file
ends in its typed error and nothing reaches the SFTP server. Plus the behaviours deliberately accepted
(the CSV-injection decision, an empty segment, a BOM), pinned so they do not change unnoticed."""

from __future__ import annotations

import csv
import io
import tracemalloc
from datetime import UTC, datetime
from pathlib import Path

import pytest

from include.clients.sftp import SftpSettings
from include.segments_to_lytics.config import parse_config
from include.segments_to_lytics.export_files import iter_records
from include.segments_to_lytics.transfer import TransferJob, transfer_segment
from tests.badinput.cases_exports import CASES, DROP, GOOD, ExportCase, csv_bytes, line, zipped
from tests.badinput.conftest import check_error

pytestmark = pytest.mark.sshd

DAY = datetime(2026, 11, 23, tzinfo=UTC)
FINAL = "vip_20261123.csv"


def segment(**overrides):
    entry = {"name": "vip", "segment_id": "seg_vip", "columns": {"user_id": "external_id", "email": "email"},
             "max_rejected_share": 0.01, **overrides}
    return parse_config({"segments": [entry]}, path=Path("pipeline.yaml")).segments[0]


def job(sshd, tmp_path: Path, seg) -> TransferJob:
    settings = SftpSettings(host=sshd.host, port=sshd.port, username=sshd.password_user, password=sshd.password,
                            host_key=sshd.host_key_line, name="lytics_sftp")
    return TransferJob(segment=seg, logical_date=DAY, sftp=settings, quarantine_dir=tmp_path / "quarantine")


def fetcher(name: str, data: bytes):
    def fetch(work: Path) -> Path:
        path = work / name
        path.write_bytes(data)
        return path
    return fetch


def upload_dir(sshd) -> list[str]:
    return sorted(p.name for p in (sshd.chroot / "upload").iterdir())


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_export_file_is_refused_and_nothing_is_delivered(case: ExportCase, sftp_upload_dir, tmp_path):
    seg = segment(**case.seg)
    the_job = job(sftp_upload_dir, tmp_path, seg)
    with pytest.raises(Exception) as err:
        transfer_segment(the_job, fetcher(case.name, case.build()))
    check_error(err.value, case.error, case.says)
    assert upload_dir(sftp_upload_dir) == [], "something reached the SFTP server"
    quarantine = the_job.quarantine_path
    if case.quarantined is not None:  # the rejected rows are there to be fixed, each with its reason
        rows = list(csv.DictReader(io.StringIO(quarantine.read_text(encoding="utf-8"))))
        assert any(case.quarantined in r["reason"] for r in rows), [r["reason"] for r in rows]
        assert str(quarantine) in str(err.value)


# ------------------------------------------------------------------------------------------------------
# Pinned behaviours: inputs that look odd but are delivered on purpose (docs/bad-input.md says why)
# ------------------------------------------------------------------------------------------------------
FORMULAS = ["=cmd|' /C calc'!A0", "+4915112345678", "-12", "@SUM(A1:A9)", "=HYPERLINK(\"http://x\",\"y\")"]


def test_csv_injection_cells_are_delivered_unchanged(sftp_upload_dir, tmp_path):
    """Decision: Lytics imports data, it is not a spreadsheet. Cells starting with = + - @ are delivered
    byte for byte (RFC 4180 quoting only): escaping them would corrupt phone numbers (+49...), negative
    numbers and names, and Lytics would store the escape character."""
    lines = b"".join(line(external_id=f"u{i}", email=v) for i, v in enumerate(FORMULAS))
    report = transfer_segment(job(sftp_upload_dir, tmp_path, segment()), fetcher("export.zip",
                                                                                    zipped({"seg-0.json": lines})))
    delivered = (sftp_upload_dir.chroot / "upload" / FINAL).read_text(encoding="utf-8")
    rows = list(csv.reader(io.StringIO(delivered)))
    assert [r[1] for r in rows[1:]] == FORMULAS
    assert report["rows_written"] == len(FORMULAS)


def test_csv_injection_in_a_dashboard_csv_id_column_is_kept_too(sftp_upload_dir, tmp_path):
    text = "user_id,email\n" + "".join(f"{v},e{i}@example.com\n" for i, v in enumerate(FORMULAS[:4]))
    transfer_segment(job(sftp_upload_dir, tmp_path, segment(**DROP)), fetcher("users.csv", csv_bytes(text)))
    rows = list(csv.reader(io.StringIO((sftp_upload_dir.chroot / "upload" / FINAL).read_text())))
    assert [r[0] for r in rows[1:]] == FORMULAS[:4]


def test_an_empty_segment_delivers_a_header_only_file(sftp_upload_dir, tmp_path):
    """An empty zip is what Braze exports for a segment without users: a header-only file is right."""
    transfer_segment(job(sftp_upload_dir, tmp_path, segment()), fetcher("export.zip", zipped({})))
    assert (sftp_upload_dir.chroot / "upload" / FINAL).read_bytes() == b"user_id,email,exported_at\r\n"


def test_a_header_only_dashboard_csv_delivers_a_header_only_file(sftp_upload_dir, tmp_path):
    transfer_segment(job(sftp_upload_dir, tmp_path, segment(**DROP)), fetcher("users.csv", b"user_id,email\r\n"))
    assert (sftp_upload_dir.chroot / "upload" / FINAL).read_bytes() == b"user_id,email,exported_at\r\n"


def test_a_dashboard_csv_saved_by_excel_with_a_utf8_bom_is_read(sftp_upload_dir, tmp_path):
    """Excel's "CSV UTF-8" starts with EF BB BF (high bit set): it must not be taken for PGP."""
    report = transfer_segment(job(sftp_upload_dir, tmp_path, segment(**DROP)),
                              fetcher("users.csv", b"\xef\xbb\xbf" + csv_bytes("user_id,email\nu1,a@example.com\n")))
    assert (report["rows_written"], report["rows_rejected"]) == (1, 0)


def test_a_utf8_bom_before_ndjson_is_not_part_of_the_first_record(sftp_upload_dir, tmp_path):
    report = transfer_segment(job(sftp_upload_dir, tmp_path, segment()),
                              fetcher("export.json", b"\xef\xbb\xbf" + GOOD))
    assert (report["rows_written"], report["rows_rejected"]) == (2, 0)


def test_trailing_bytes_after_a_complete_zip_are_ignored(sftp_upload_dir, tmp_path):
    """Every member is CRC-checked; bytes after the zip's end record are not data."""
    report = transfer_segment(job(sftp_upload_dir, tmp_path, segment()),
                              fetcher("export.zip", zipped({"seg-0.json": GOOD}) + b"\x00garbage" * 10))
    assert report["rows_written"] == 2


def test_integer_ids_are_accepted_and_written_as_digits(sftp_upload_dir, tmp_path):
    transfer_segment(job(sftp_upload_dir, tmp_path, segment()), fetcher("export.json", line(external_id=12345)))
    assert (sftp_upload_dir.chroot / "upload" / FINAL).read_text().splitlines()[1].startswith("12345,")


def test_a_few_bad_rows_under_the_share_are_quarantined_and_the_rest_delivered(sftp_upload_dir, tmp_path):
    lines = b"".join(line(external_id=f"u{i}") for i in range(200)) + b"{broken\n"
    the_job = job(sftp_upload_dir, tmp_path, segment())
    report = transfer_segment(the_job, fetcher("export.json", lines))
    assert (report["rows_written"], report["rows_rejected"]) == (200, 1)
    assert "invalid JSON" in the_job.quarantine_path.read_text()


def test_a_huge_line_is_skipped_in_bounded_memory(tmp_path):
    """A 24 MiB line under a 1 MiB record limit is read past in 1 MiB chunks, never held whole."""
    path = tmp_path / "export.json"
    with open(path, "wb") as fh:
        fh.write(b'{"external_id": "u1", "email": "')
        for _ in range(24):
            fh.write(b"x" * (1 << 20))
        fh.write(b'"}\n' + GOOD)
    tracemalloc.start()
    try:
        records = [(src, n, type(p).__name__) for src, n, p in iter_records(path, "ndjson", max_record_bytes=1 << 20)]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert records == [("export.json", 1, "RejectedRecord"), ("export.json", 2, "bytes"), ("export.json", 3, "bytes")]
    assert peak < 8 << 20, f"peak {peak:,} bytes"
