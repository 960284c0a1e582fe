"""Atomic SFTP delivery against a real OpenSSH sshd: auth, host-key pinning, atomic replace."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from dataclasses import replace

import pytest

from include.clients.sftp import PARTIAL_SUFFIX, SftpSettings, deliver, open_sftp
from include.common.errors import AuthError, ConfigError, NotFoundError
from include.common.retry import RetryPolicy

pytestmark = pytest.mark.sshd
ONE_TRY = RetryPolicy(attempts=1)


def pw_settings(server) -> SftpSettings:
    return SftpSettings(host=server.host, port=server.port, username=server.password_user,
                        password=server.password, host_key=server.host_key_line, name="lytics_sftp")


def key_settings(server) -> SftpSettings:
    return SftpSettings(host=server.host, port=server.port, username=server.key_user,
                        private_key=server.private_key_pem, host_key=server.host_key_line, name="lytics_sftp")


@pytest.mark.parametrize("settings_for", [pw_settings, key_settings], ids=["password", "key"])
def test_delivers_file_and_manifest(sftp_upload_dir, tmp_path, settings_for):
    server = sftp_upload_dir
    local = tmp_path / "braze_users_20261123.csv"
    local.write_bytes(b"user_id,ts\r\nu1,2026-11-23T00:00:00Z\r\n" * 1000)
    result = deliver(settings_for(server), local, "/upload/braze_users_20261123.csv", policy=ONE_TRY)
    landed = server.chroot / "upload" / "braze_users_20261123.csv"
    assert landed.read_bytes() == local.read_bytes()
    digest = hashlib.sha256(local.read_bytes()).hexdigest()
    assert result.sha256 == digest and result.bytes == local.stat().st_size
    manifest = (server.chroot / "upload" / "braze_users_20261123.csv.sha256").read_text()
    assert manifest == f"{digest}  braze_users_20261123.csv\n"
    assert sorted(os.listdir(server.chroot / "upload")) == ["braze_users_20261123.csv", "braze_users_20261123.csv.sha256"]


def test_rerun_replaces_the_file_atomically_and_never_shows_it_half_written(sftp_upload_dir, tmp_path):
    server = sftp_upload_dir
    landed = server.chroot / "upload" / "users_20261123.csv"
    old = tmp_path / "old.csv"
    old.write_bytes(b"A" * 1_000_000)
    deliver(pw_settings(server), old, "/upload/users_20261123.csv", policy=ONE_TRY)
    new = tmp_path / "new.csv"
    new.write_bytes(b"B" * 40_000_000)

    seen_sizes, stop = set(), threading.Event()

    def watch():
        while not stop.is_set():
            try:
                data = landed.read_bytes()
            except FileNotFoundError:
                seen_sizes.add("missing")
                continue
            seen_sizes.add(len(data))
            assert data in (b"A" * 1_000_000, b"B" * 40_000_000), "a half-written file was visible"

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        deliver(pw_settings(server), new, "/upload/users_20261123.csv", policy=ONE_TRY)
        time.sleep(0.05)
    finally:
        stop.set()
        watcher.join()
    assert seen_sizes <= {1_000_000, 40_000_000}  # never missing, never partial
    assert landed.read_bytes() == new.read_bytes()
    assert not [n for n in os.listdir(landed.parent) if n.endswith(PARTIAL_SUFFIX)]


def test_leftover_partial_from_a_killed_attempt_is_cleaned_up(sftp_upload_dir, tmp_path):
    server = sftp_upload_dir
    stale = server.chroot / "upload" / f".users_20261123.csv.deadbeef{PARTIAL_SUFFIX}"
    stale.write_bytes(b"half")
    unrelated = server.chroot / "upload" / "other_20261123.csv"
    unrelated.write_bytes(b"keep me")
    local = tmp_path / "f.csv"
    local.write_bytes(b"x")
    deliver(pw_settings(server), local, "/upload/users_20261123.csv", manifest=False, policy=ONE_TRY)
    assert not stale.exists() and unrelated.exists()


def test_changed_host_key_is_refused_with_both_fingerprints(sftp_upload_dir, tmp_path):
    wrong = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
    settings = replace(pw_settings(sftp_upload_dir), host_key=wrong)
    local = tmp_path / "f.csv"
    local.write_bytes(b"x")
    with pytest.raises(AuthError, match=r"host key .* CHANGED: it presents SHA256:.* but SHA256:.* is pinned"):
        deliver(settings, local, "/upload/f.csv", policy=ONE_TRY)
    assert not (sftp_upload_dir.chroot / "upload" / "f.csv").exists()


def test_unpinned_host_is_refused_unless_check_is_explicitly_off(sftp_upload_dir, tmp_path):
    local = tmp_path / "f.csv"
    local.write_bytes(b"x")
    unpinned = replace(pw_settings(sftp_upload_dir), host_key=None)
    with pytest.raises(AuthError, match="no host key is pinned .*ssh-keyscan"):
        deliver(unpinned, local, "/upload/f.csv", policy=ONE_TRY)
    deliver(replace(unpinned, no_host_key_check=True), local, "/upload/f.csv", policy=ONE_TRY)
    assert (sftp_upload_dir.chroot / "upload" / "f.csv").read_bytes() == b"x"


def test_bare_base64_host_key_is_accepted(sftp_upload_dir):
    bare = sftp_upload_dir.host_key_line.split()[1]
    with open_sftp(replace(pw_settings(sftp_upload_dir), host_key=bare)) as sftp:
        assert "upload" in sftp.listdir("/")


def test_wrong_password_and_bad_key_text_fail_clearly(sftp_upload_dir):
    with pytest.raises(AuthError, match="refused our credentials"):
        with open_sftp(replace(pw_settings(sftp_upload_dir), password="wrong")):
            pass
    with pytest.raises(ConfigError, match="private key could not be read"):
        with open_sftp(replace(key_settings(sftp_upload_dir), private_key="not a key")):
            pass


def test_missing_remote_directory_is_a_config_problem(sftp_upload_dir, tmp_path):
    local = tmp_path / "f.csv"
    local.write_bytes(b"x")
    with pytest.raises(NotFoundError, match="remote directory '/nope' does not exist .* fix remote_dir"):
        deliver(pw_settings(sftp_upload_dir), local, "/nope/f.csv", policy=ONE_TRY)


def test_unwritable_directory_is_reported_as_permissions(sftp_upload_dir, tmp_path):
    local = tmp_path / "f.csv"
    local.write_bytes(b"x")
    with pytest.raises(AuthError, match="may not write to '/f.csv'"):
        deliver(pw_settings(sftp_upload_dir), local, "/f.csv", manifest=False, policy=ONE_TRY)


def test_unreachable_server_is_transient_and_retried(tmp_path):
    from include.common.errors import TransientError

    settings = SftpSettings(host="127.0.0.1", port=1, username="x", password="y", host_key=None,
                            no_host_key_check=True, timeout=2)
    local = tmp_path / "f.csv"
    local.write_bytes(b"x")
    started = time.monotonic()
    with pytest.raises(TransientError, match="still failing after 2 tries: .*cannot reach 127.0.0.1:1"):
        deliver(settings, local, "/upload/f.csv", policy=RetryPolicy(attempts=2, base_delay=0.2))
    assert time.monotonic() - started >= 0.1  # waited before the retry
