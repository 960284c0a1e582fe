"""Atomic SFTP delivery against a real OpenSSH sshd: auth, host-key pinning, atomic replace, typed failures.

Full disks and read-only filesystems are real (a small tmpfs mounted inside the chroot); broken sessions are
real (the server's per-connection processes are SIGKILLed mid-upload).
"""

from __future__ import annotations

import hashlib
import os
import signal
import threading
import time
from dataclasses import replace

import pytest

from include.clients.sftp import (
    PARTIAL_SUFFIX,
    RemoteStorageFullError,
    RemoteWriteDeniedError,
    SftpSettings,
    check_target,
    deliver,
    open_sftp,
    upload_atomic,
)
from include.common.errors import AuthError, ConfigError, NotFoundError, PermanentError, TransientError
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
    settings = SftpSettings(host="127.0.0.1", port=1, username="x", password="y", host_key=None,
                            no_host_key_check=True, timeout=2)
    local = tmp_path / "f.csv"
    local.write_bytes(b"x")
    started = time.monotonic()
    with pytest.raises(TransientError, match="still failing after 2 tries: .*cannot reach 127.0.0.1:1"):
        deliver(settings, local, "/upload/f.csv", policy=RetryPolicy(attempts=2, base_delay=0.2))
    assert time.monotonic() - started >= 0.1  # waited before the retry


# -- a full, read-only or unwritable target ---------------------------------------------------------
def _tmpfs(server, name, **kw):
    from tests.sshd_dirs import MountUnavailable

    try:
        return server.tmpfs_dir(name, **kw)
    except MountUnavailable as exc:  # pragma: no cover - only where mounting is not permitted
        pytest.skip(str(exc))


def _never_appears(path):
    """Start watching `path`; the returned stop() says whether it ever existed meanwhile."""
    seen, stop = [], threading.Event()

    def watch():
        while not stop.is_set():
            if path.exists():
                seen.append(True)
            time.sleep(0.001)

    watcher = threading.Thread(target=watch)
    watcher.start()

    def finish() -> bool:
        stop.set()
        watcher.join()
        return not seen

    return finish


def test_full_server_disk_is_permanent_and_leaves_no_partial(sftp_upload_dir, tmp_path, caplog):
    local = tmp_path / "users.csv"
    local.write_bytes(os.urandom(5 << 20))
    with _tmpfs(sftp_upload_dir, "full", size="2m") as full:
        never = _never_appears(full / "users.csv")
        try:
            with pytest.raises(RemoteStorageFullError) as err:
                deliver(pw_settings(sftp_upload_dir), local, "/full/users.csv",
                        policy=RetryPolicy(attempts=3, base_delay=0.01))
        finally:
            assert never(), "the final name appeared"
        assert os.listdir(full) == []  # the partial was removed
    assert isinstance(err.value, PermanentError)
    message = str(err.value)
    for part in ("'lytics_sftp'", "127.0.0.1", "'/full/users.csv'", "5,242,880 bytes",
                 "disk or the account's quota is full", "2,097,152 bytes (2.0 MiB) free",
                 "Free space on the server", "clear the task", "final name was not touched"):
        assert part in message, (part, message)
    assert sftp_upload_dir.password not in message
    assert "retrying" not in caplog.text  # permanent: not retried


def test_full_disk_for_the_manifest_says_the_file_itself_was_delivered(sftp_upload_dir, tmp_path):
    local = tmp_path / "users.csv"
    local.write_bytes(os.urandom(2 << 20))  # fills the 2 MiB tmpfs exactly: the manifest does not fit
    with _tmpfs(sftp_upload_dir, "full", size="2m") as full:
        with pytest.raises(RemoteStorageFullError, match=r"could not store '/full/users.csv.sha256' \(76 bytes\)"
                           r".* users.csv itself was delivered, but without its .sha256 manifest"):
            deliver(pw_settings(sftp_upload_dir), local, "/full/users.csv", policy=ONE_TRY)
        assert os.listdir(full) == ["users.csv"]
        assert (full / "users.csv").read_bytes() == local.read_bytes()


def test_read_only_filesystem_is_a_write_permission_error(sftp_upload_dir, tmp_path):
    local = tmp_path / "f.csv"
    local.write_bytes(b"x")
    with _tmpfs(sftp_upload_dir, "ro", read_only=True):
        with pytest.raises(RemoteWriteDeniedError, match="'/ro' is on a read-only filesystem on the server"):
            deliver(pw_settings(sftp_upload_dir), local, "/ro/f.csv", policy=ONE_TRY)
        with pytest.raises(RemoteWriteDeniedError, match="'/ro' is on a read-only filesystem"):
            deliver(pw_settings(sftp_upload_dir), local, "/ro/f.csv", manifest=False, policy=ONE_TRY)


def test_rename_over_a_file_we_may_not_replace_is_a_permission_error(sftp_upload_dir, tmp_path):
    local = tmp_path / "f.csv"
    local.write_bytes(b"new")
    with sftp_upload_dir.extra_dir("sticky", mode=0o1777) as sticky:  # others' files cannot be replaced
        (sticky / "f.csv").write_bytes(b"old, owned by root")
        with open_sftp(pw_settings(sftp_upload_dir)) as sftp:
            with pytest.raises(RemoteWriteDeniedError,
                               match=r"bltest_pw may not write to '/sticky/f.csv' \(permission denied while "
                                     r"renaming into place\).* final name was not touched"):
                upload_atomic(sftp, local, "/sticky/f.csv", settings=pw_settings(sftp_upload_dir), manifest=False)
        assert os.listdir(sticky) == ["f.csv"] and (sticky / "f.csv").read_bytes() == b"old, owned by root"


# -- the session breaks mid-upload ------------------------------------------------------------------
def _kill_mid_upload(server, what: str):
    """SIGKILL the test user's session processes once, as soon as a partial upload passes 4 MiB."""
    upload, killed, stop = server.chroot / "upload", [], threading.Event()

    def watch():
        while not stop.is_set() and not killed:
            for name in os.listdir(upload):
                try:
                    if name.endswith(PARTIAL_SUFFIX) and (upload / name).stat().st_size > 4 << 20:
                        killed.extend(server.signal_sessions(server.password_user, what=what, sig=signal.SIGKILL))
                        return
                except FileNotFoundError:
                    pass
            time.sleep(0.001)

    watcher = threading.Thread(target=watch)
    watcher.start()

    def finish() -> list[int]:
        stop.set()
        watcher.join()
        return killed

    return finish


@pytest.mark.parametrize("what", ["internal-sftp", "@notty"], ids=["sftp-subsystem", "whole-connection"])
def test_session_that_broke_while_idle_is_transient(sftp_upload_dir, tmp_path, what):
    """The next request on a closed channel raises paramiko's OSError("Socket is closed"): that is transient."""
    local = tmp_path / "f.csv"
    local.write_bytes(b"x")
    settings = pw_settings(sftp_upload_dir)
    with pytest.raises(TransientError, match=r"'lytics_sftp'.*127.0.0.1:\d+.*broke.*Socket is closed"):
        with open_sftp(settings) as sftp:
            assert sftp_upload_dir.signal_sessions(sftp_upload_dir.password_user, what=what)
            deadline = time.monotonic() + 10
            while not sftp.get_channel().closed and time.monotonic() < deadline:
                time.sleep(0.01)
            upload_atomic(sftp, local, "/upload/f.csv", settings=settings)


@pytest.mark.parametrize("what", ["internal-sftp", "@notty"], ids=["sftp-subsystem", "whole-connection"])
def test_session_killed_mid_upload_is_retried_and_completes(sftp_upload_dir, tmp_path, caplog, what):
    local = tmp_path / "users.csv"
    local.write_bytes(os.urandom(48 << 20))
    killer = _kill_mid_upload(sftp_upload_dir, what)
    try:
        result = deliver(pw_settings(sftp_upload_dir), local, "/upload/users.csv",
                         policy=RetryPolicy(attempts=3, base_delay=0.05))
    finally:
        assert killer(), "the session was never killed (upload too fast?)"
    assert "failed (try 1 of 3)" in caplog.text and "SFTP session broke while uploading" in caplog.text
    upload = sftp_upload_dir.chroot / "upload"
    digest = hashlib.sha256(local.read_bytes()).hexdigest()
    assert hashlib.sha256((upload / "users.csv").read_bytes()).hexdigest() == digest == result.sha256
    assert (upload / "users.csv.sha256").read_text() == f"{digest}  users.csv\n"
    assert sorted(os.listdir(upload)) == ["users.csv", "users.csv.sha256"]  # no partial left


def test_session_killed_on_the_last_try_is_transient_and_the_partial_is_swept(sftp_upload_dir, tmp_path):
    local = tmp_path / "users.csv"
    local.write_bytes(os.urandom(48 << 20))
    killer = _kill_mid_upload(sftp_upload_dir, "internal-sftp")
    try:
        with pytest.raises(TransientError, match=r"still failing after 1 tries: connection 'lytics_sftp': "
                                                 r"127.0.0.1:\d+: the SFTP session broke while uploading "
                                                 r"'/upload/users.csv' \((OSError\('Socket is closed'\)|EOFError\(\)|"
                                                 r"SSHException\('Server connection dropped: '\))\)"):
            deliver(pw_settings(sftp_upload_dir), local, "/upload/users.csv", policy=ONE_TRY)
    finally:
        assert killer()
    assert os.listdir(sftp_upload_dir.chroot / "upload") == []


# -- check_target: fail in seconds, before the export -----------------------------------------------
def test_check_target_passes_for_a_good_target_and_leaves_no_file(sftp_upload_dir):
    check_target(pw_settings(sftp_upload_dir), "/upload")
    check_target(key_settings(sftp_upload_dir), "/upload/")
    assert os.listdir(sftp_upload_dir.chroot / "upload") == []


@pytest.mark.parametrize(
    ("change", "remote_dir", "error", "message"),
    [
        ({"host_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"},
         "/upload", AuthError, r"host key of 127.0.0.1:\d+ CHANGED: it presents SHA256:.* but SHA256:.* is pinned"),
        ({"password": "wrong"}, "/upload", AuthError, r"bltest_pw@127.0.0.1:\d+ refused our credentials"),
        ({}, "/nope", NotFoundError, "remote directory '/nope' does not exist on 127.0.0.1; fix remote_dir"),
        ({}, "/", RemoteWriteDeniedError,
         r"bltest_pw may not write to '/' \(permission denied while uploading\).*test write before the export"),
        ({}, "/upload/file.csv", PermanentError, "'/upload/file.csv' on 127.0.0.1 exists but is not a directory"),
    ],
    ids=["changed-host-key", "wrong-password", "missing-dir", "read-only-dir", "not-a-dir"],
)
def test_check_target_fails_fast_with_a_typed_error(sftp_upload_dir, change, remote_dir, error, message):
    (sftp_upload_dir.chroot / "upload" / "file.csv").write_bytes(b"x")
    started = time.monotonic()
    with pytest.raises(error, match=message) as err:
        check_target(replace(pw_settings(sftp_upload_dir), **change), remote_dir)
    assert time.monotonic() - started < 10  # no retries for permanent errors
    assert isinstance(err.value, PermanentError) and "'lytics_sftp'" in str(err.value)
    assert sorted(os.listdir(sftp_upload_dir.chroot / "upload")) == ["file.csv"]


def test_check_target_on_a_full_or_read_only_filesystem(sftp_upload_dir):
    with _tmpfs(sftp_upload_dir, "ro", read_only=True):
        with pytest.raises(RemoteWriteDeniedError, match="'/ro' is on a read-only filesystem"):
            check_target(pw_settings(sftp_upload_dir), "/ro")
    with _tmpfs(sftp_upload_dir, "full", size="4k") as full:
        (full / "filler").write_bytes(b"\0" * 4096)
        with pytest.raises(RemoteStorageFullError, match=r"0 bytes free .*test write before the export"):
            check_target(pw_settings(sftp_upload_dir), "/full")
        assert os.listdir(full) == ["filler"]


def test_check_target_unreachable_server_is_transient(tmp_path):
    settings = SftpSettings(host="127.0.0.1", port=1, username="x", password="y", no_host_key_check=True, timeout=2)
    with pytest.raises(TransientError, match="checking SFTP target /upload: still failing after 2 tries"):
        check_target(settings, "/upload", policy=RetryPolicy(attempts=2, base_delay=0.01))
