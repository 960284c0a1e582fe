"""SFTP server answers, against the real OpenSSH sshd: each ends in its typed error naming the connection,
the host and the path, and the file never appears under its final name (no partial left either)."""

from __future__ import annotations

import contextlib
import os
import stat
from types import SimpleNamespace

import pytest

from include.clients.sftp import check_target, deliver
from tests.badinput.cases_sftp import CASES, SftpCase
from tests.badinput.conftest import ONE_TRY, check_error
from tests.sshd_dirs import MountUnavailable

pytestmark = pytest.mark.sshd

NAME = "vip_20261123.csv"


@contextlib.contextmanager
def remote_dir(server, target: str | None):
    """(remote directory, local path of it) prepared as the case wants."""
    upload = server.chroot / "upload"
    if target is None:
        yield "/upload", upload
    elif target == "missing":
        yield "/missing", server.chroot / "missing"
    elif target == "file":
        (upload / "notadir").write_bytes(b"a file, not a directory")
        yield "/upload/notadir", upload / "notadir"
    elif target == "dir-at-final-name":
        (upload / NAME).mkdir()
        yield "/upload", upload
    elif target == "root-owned":
        with server.extra_dir("locked") as path:
            yield "/locked", path
    else:
        name, options = {"tmpfs-ro": ("ro", {"read_only": True}), "tmpfs-full": ("full", {"size": "64k"})}[target]
        try:
            with server.tmpfs_dir(name, **options) as path:
                yield f"/{name}", path
        except MountUnavailable as exc:
            pytest.skip(str(exc))


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_sftp_answer_is_typed_and_nothing_is_delivered(case: SftpCase, sftp_upload_dir, odd_http, tmp_path):
    server = sftp_upload_dir
    settings = case.settings(server, SimpleNamespace(odd_http=odd_http))
    local = tmp_path / NAME
    local.write_bytes(os.urandom(256 << 10))
    with remote_dir(server, case.target) as (directory, local_dir):
        with pytest.raises(Exception) as err:
            if case.via == "check_target":
                check_target(settings, directory, policy=ONE_TRY)
            else:
                deliver(settings, local, f"{directory}/{NAME}", policy=ONE_TRY)
        check_error(err.value, case.error, case.says, secrets=(server.password, "not-the-password"))
        if local_dir.is_dir():
            final = local_dir / NAME
            assert not final.exists() or stat.S_ISDIR(final.stat().st_mode), "the file appeared under its final name"
            left = [n for n in os.listdir(local_dir) if n.endswith((".partial", ".sha256"))]
            assert left == [], f"left behind: {left}"
