"""One segment's transfer as plain Python: plaintext never outlives the call, even on failure."""

from __future__ import annotations

import zipfile
from datetime import UTC, datetime

import pytest

from include.clients.sftp import SftpSettings
from include.common.errors import ConfigError, NotFoundError
from include.segments_to_lytics.config import parse_config
from include.segments_to_lytics.transfer import TransferJob, looks_encrypted, transfer_segment

pytestmark = pytest.mark.sshd


def segment(**overrides):
    raw = {"segments": [{"name": "t", "segment_id": "s", "columns": {"user_id": "external_id"}, **overrides}]}
    return parse_config(raw, path="test.yaml").segments[0]


def job(sshd, tmp_path, **kw) -> TransferJob:
    settings = SftpSettings(host=sshd.host, port=sshd.port, username=sshd.password_user, password=sshd.password,
                            host_key=sshd.host_key_line)
    return TransferJob(segment=kw.pop("seg", segment()), logical_date=datetime(2026, 11, 23, tzinfo=UTC),
                       sftp=settings, quarantine_dir=tmp_path / "q", **kw)


def export_fetcher(lines: bytes):
    def fetch(work):
        path = work / "export.zip"
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("a/0.json", lines)
        return path
    return fetch


def scratch_dirs(root):
    return sorted(p.name for p in root.glob("braze-lytics-*"))


def test_scratch_is_removed_when_delivery_fails(sftp_upload_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("BRAZE_LYTICS_WORK_DIR", str(tmp_path / "work"))
    bad_dir = job(sftp_upload_dir, tmp_path, seg=segment(remote_dir="/missing"))
    with pytest.raises(NotFoundError, match="remote directory '/missing' does not exist"):
        transfer_segment(bad_dir, export_fetcher(b'{"external_id": "u1"}\n'))
    assert scratch_dirs(tmp_path / "work") == []


def test_scratch_is_removed_when_fetch_fails(sftp_upload_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("BRAZE_LYTICS_WORK_DIR", str(tmp_path / "work"))

    def broken_fetch(work):
        (work / "export.zip").write_bytes(b"partial plaintext")
        raise ConnectionError("dropped")

    with pytest.raises(ConnectionError):
        transfer_segment(job(sftp_upload_dir, tmp_path), broken_fetch)
    assert scratch_dirs(tmp_path / "work") == []


def test_encrypted_input_without_a_decryption_key_is_a_config_error(sftp_upload_dir, tmp_path):
    def fetch(work):
        path = work / "users.zip.pgp"
        path.write_bytes(b"\x85\x01\x0c" + b"\x00" * 20)
        return path

    with pytest.raises(ConfigError, match="is PGP-encrypted but the segment has no pgp.decrypt_conn_id"):
        transfer_segment(job(sftp_upload_dir, tmp_path), fetch)
    assert list((sftp_upload_dir.chroot / "upload").iterdir()) == []


def test_report_counts_and_paths(sftp_upload_dir, tmp_path):
    report = transfer_segment(job(sftp_upload_dir, tmp_path, seg=segment(max_rejected_share=0.5)),
                              export_fetcher(b'{"external_id": "u1"}\n{"email": "x"}\n{"external_id": "u1"}\n'))
    assert {k: report[k] for k in ("rows_read", "rows_written", "rows_rejected", "rows_duplicate", "remote_path")} == \
        {"rows_read": 3, "rows_written": 1, "rows_rejected": 1, "rows_duplicate": 1, "remote_path": "/upload/t_20261123.csv"}
    assert report["quarantine_file"].endswith("q/t/t_20261123.quarantine.csv")
    assert (sftp_upload_dir.chroot / "upload" / "t_20261123.csv").read_bytes() == \
        b"user_id,exported_at\r\nu1,2026-11-23T00:00:00Z\r\n"


@pytest.mark.parametrize(("name", "head", "expected"), [
    ("x.csv.pgp", b"user_id", True),
    ("x.bin", b"-----BEGIN PGP MESSAGE-----", True),
    ("x.bin", b"\x85\x01\x0c", True),
    ("x.zip", b"PK\x03\x04", False),
    ("x.gz", b"\x1f\x8b\x08", False),
    ("x.json", b'{"a": 1}', False),
])
def test_encryption_is_recognised_by_name_or_content(tmp_path, name, head, expected):
    path = tmp_path / name
    path.write_bytes(head)
    assert looks_encrypted(path) is expected


def test_job_dates_come_from_the_logical_date(tmp_path):
    j = TransferJob(segment=segment(), logical_date=datetime(2026, 1, 2, 23, 30, tzinfo=UTC),
                    sftp=None, quarantine_dir=tmp_path)
    assert (j.ds_nodash, j.timestamp_value) == ("20260102", "2026-01-02T23:30:00Z")
