"""Fixtures of the security tests (the world they run in: tests/security/world.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from sandbox.braze_server import BrazeSandbox
from sandbox.lytics_server import LyticsSandbox
from tests.security.world import AUDIENCES, Pipeline, distinct


@pytest.fixture
def pipeline(tmp_path, monkeypatch, sftp_upload_dir, airflow_db) -> Iterator[Pipeline]:
    braze_key, lytics_token = distinct("brz"), distinct("lyt")
    with BrazeSandbox(braze_key, export_delay=1.0, users_per_file=400) as braze, \
            LyticsSandbox(lytics_token, AUDIENCES) as lytics:
        world = Pipeline(tmp=tmp_path, monkeypatch=monkeypatch, braze=braze, lytics=lytics, sshd=sftp_upload_dir,
                         airflow_home=airflow_db, braze_key=braze_key, lytics_token=lytics_token)
        world.wire()
        yield world
