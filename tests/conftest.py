"""Shared pytest fixtures. Keep each group in its own clearly marked section."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.sshd_server import OpenSshServer, SshdUnavailable, check_available

# ==================================================================================================
# Real OpenSSH sshd (tests/sshd_server.py) — needs root + openssh-server; `.ci/run` provides both.
# ==================================================================================================


@pytest.fixture(scope="session")
def sshd() -> Iterator[OpenSshServer]:
    """A started :class:`OpenSshServer` shared by the whole session (own host key, own port).

    Without root/sshd: skipped locally, but a failure under CI (``$CI`` set) — CI must run these.
    """
    try:
        check_available()
        missing = None
    except SshdUnavailable as e:
        missing = str(e)
    if missing is not None:
        if os.environ.get("CI"):
            pytest.fail(f"CI is set but the real-sshd tests cannot run: {missing}", pytrace=False)
        pytest.skip(missing)
    server = OpenSshServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def sftp_upload_dir(sshd: OpenSshServer) -> OpenSshServer:
    """The session's sshd with ``<chroot>/upload`` and ``<chroot>/inbound`` emptied before the test."""
    sshd.empty_shared_dirs()
    return sshd


# ==================================================================================================
# (other fixture sections below)
# ==================================================================================================
