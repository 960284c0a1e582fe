"""Shared pytest fixtures. Keep each group in its own clearly marked section.

Layout: ``unit/<package>/test_<module>.py`` mirrors ``include/`` (no server, no Airflow);
``integration/<package>/`` runs the core against real servers (marker ``sandbox``: the Braze/Lytics
sandboxes over HTTP; ``sshd``: a real OpenSSH server); ``sandbox/`` tests the sandboxes themselves;
``plugins/`` and ``dags/`` run Airflow (marker ``airflow``). ``pytest -m "not sshd"`` etc. select.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.sshd_server import OpenSshServer, SshdUnavailable, check_available

# ==================================================================================================
# Airflow: a throwaway AIRFLOW_HOME with a SQLite metadata DB. Airflow reads its configuration when
# first imported, so this must run before any test module imports it.
# ==================================================================================================
REPO = Path(__file__).resolve().parents[1]
_AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="bl-airflow-"))
os.environ.update({
    "AIRFLOW_HOME": str(_AIRFLOW_HOME),
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{_AIRFLOW_HOME}/airflow.db",
    "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
    "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
    "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
    "BRAZE_LYTICS_TASK_RETRIES": "1",
    "BRAZE_LYTICS_RETRY_DELAY_SECONDS": "1",
    "BRAZE_LYTICS_WORK_DIR": str(_AIRFLOW_HOME / "work"),
    "BRAZE_LYTICS_QUARANTINE_DIR": str(_AIRFLOW_HOME / "quarantine"),
})


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """Create the metadata DB once per session (`airflow db migrate`, ~4 s)."""
    import subprocess
    import sys

    subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], check=True, capture_output=True, timeout=300)
    return _AIRFLOW_HOME


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
# S3 API server (tests/s3_server.py): moto's server mode on a loopback port, over real HTTP.
# ==================================================================================================


@pytest.fixture(scope="session")
def s3_server():
    """A started :class:`tests.s3_server.S3Server` shared by the whole session.

    Without moto[server] installed: skipped locally, but a failure under CI (``$CI`` set).
    """
    from tests.s3_server import S3Server, S3Unavailable, check_available

    try:
        check_available()
    except S3Unavailable as e:
        if os.environ.get("CI"):
            pytest.fail(f"CI is set but the S3 tests cannot run: {e}", pytrace=False)
        pytest.skip(str(e))
    server = S3Server().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_bucket(s3_server):
    """A fresh, empty bucket on the session's S3 server: a :class:`tests.s3_server.S3Bucket` with
    ``endpoint_url``, ``name`` (also ``bucket``), ``access_key``, ``secret_key``, ``region``, plus
    ``client()``, ``keys(prefix)`` and ``get(key)``."""
    return s3_server.new_bucket()
