"""Real runs of both DAGs for the security tests: the Braze and Lytics sandboxes, a real sshd, real gpg,
connections only as ``AIRFLOW_CONN_*`` environment variables, and private directories per test.

:class:`Pipeline` wires one test: its sandboxes, its connections (with distinctive secret values),
its pipeline file, its work/quarantine/state directories; ``run_segments()`` and
``run_audiences()`` are full ``dag.test()`` runs.
"""

from __future__ import annotations

import csv
import io
import json
import secrets
import zipfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest

from sandbox.braze_server import BrazeSandbox
from sandbox.braze_users import SegmentSpec, expected_users
from sandbox.lytics_members import Audience
from sandbox.lytics_server import LyticsSandbox

LOGICAL_DATE = datetime(2026, 11, 23, tzinfo=UTC)
COLUMNS = {"user_id": "external_id", "email": "email", "tier": "custom_attributes.tier"}
AUDIENCES = [
    Audience("s1", "sec_vip", "Security VIP", 300, seed=31, universe=900),
    Audience("s2", "sec_churn", "Security churn", 200, seed=32, universe=900),
]


def distinct(label: str) -> str:
    """A secret value nobody else uses: easy to grep for, impossible to find by chance."""
    return f"{label}-SECRET-{secrets.token_hex(10)}"


def dashboard_zip(path: Path, spec: SegmentSpec) -> None:
    """A dashboard-style "Export CSV user data" zip of the users of `spec`."""
    buf = io.StringIO(newline="")
    writer = csv.writer(buf)
    writer.writerow(["user_id", "email", "first_name"])
    for user in expected_users(spec, None):
        writer.writerow([user.get("external_id", ""), user.get("email", ""), user["first_name"]])
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("users.csv", buf.getvalue().encode("utf-8"))


@dataclass
class Pipeline:
    """One test's world. Directories are fresh (under pytest's tmp_path) so what they hold is this test's."""

    tmp: Path
    monkeypatch: pytest.MonkeyPatch
    braze: BrazeSandbox
    lytics: LyticsSandbox
    sshd: object
    airflow_home: Path
    braze_key: str = field(default_factory=lambda: distinct("brz"), repr=False)
    lytics_token: str = field(default_factory=lambda: distinct("lyt"), repr=False)
    segments: list[dict] = field(default_factory=list)
    audience_settings: dict = field(default_factory=dict)

    # -- directories -------------------------------------------------------------------------------
    @property
    def work_dir(self) -> Path:
        return self.tmp / "private" / "work"

    @property
    def quarantine_dir(self) -> Path:
        return self.tmp / "private" / "quarantine"

    @property
    def state_dir(self) -> Path:
        return self.tmp / "private" / "state"

    @property
    def landing(self) -> Path:
        return self.tmp / "landing"

    @property
    def upload_dir(self) -> Path:
        return self.sshd.chroot / "upload"

    @property
    def db(self) -> Path:
        return self.airflow_home / "airflow.db"

    # -- wiring ------------------------------------------------------------------------------------
    def setenv_conn(self, conn_id: str, conn: dict | str) -> None:
        self.monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", conn if isinstance(conn, str) else json.dumps(conn))

    def wire(self) -> None:
        """Connections (environment only: never in the DB), directories and the pipeline file."""
        mp = self.monkeypatch
        mp.setenv("BRAZE_LYTICS_WORK_DIR", str(self.work_dir))
        mp.setenv("BRAZE_LYTICS_QUARANTINE_DIR", str(self.quarantine_dir))
        mp.setenv("BRAZE_LYTICS_SHAPE_WORKERS", "2")
        self.setenv_conn("braze_default", {"conn_type": "http", "host": self.braze.url, "password": self.braze_key})
        self.setenv_conn("lytics_default", {"conn_type": "http", "host": self.lytics.url, "password": self.lytics_token})
        self.setenv_conn("lytics_sftp", self.sshd.conn_json(self.sshd.key_user, auth="key"))
        self.setenv_conn("lytics_sftp_pw", self.sshd.conn_json(self.sshd.password_user, auth="password"))
        self.write_config()
        from airflow.models.pool import Pool

        Pool.create_or_update_pool("braze_api", slots=4, description="Braze REST API", include_deferred=False)

    def write_config(self) -> None:
        section = {"state_url": str(self.state_dir), "max_chunks": 2, "min_chunk_users": 100,
                   "rate_limit_requests": 400, "rate_limit_seconds": 1.0, "delivery_concurrency": 1,
                   **self.audience_settings,
                   "audiences": [{"slug": a.slug, "id": a.id} for a in AUDIENCES]}
        config = {"defaults": {"poll_interval_seconds": 1, "export_timeout_minutes": 2, "remote_dir": "/upload"},
                  "segments": self.segments or [{"name": "unused", "segment_id": "unused", "columns": COLUMNS}],
                  "lytics_to_braze": section}
        path = self.tmp / "pipeline.yaml"
        path.write_text(json.dumps(config, indent=1))  # JSON is YAML
        self.monkeypatch.setenv("BRAZE_LYTICS_CONFIG", str(path))

    def set_segments(self, segments: list[dict]) -> None:
        self.segments = segments
        self.write_config()

    # -- runs --------------------------------------------------------------------------------------
    def run_segments(self, logical_date: datetime = LOGICAL_DATE):
        from airflow.dag_processing.dagbag import DagBag

        dag = DagBag(dag_folder="dags").get_dag("braze_segments_to_lytics")
        return dag.test(logical_date=logical_date)

    def run_audiences(self, hour: int, **conf):
        from airflow.dag_processing.dagbag import DagBag

        dag = DagBag(dag_folder="dags").get_dag("lytics_audiences_to_braze")
        return dag.test(logical_date=datetime(2026, 11, 23, hour, tzinfo=UTC), run_conf=conf or None)


def states(dag_run) -> dict[str, str]:
    return {f"{ti.task_id}[{ti.map_index}]": ti.state for ti in dag_run.get_task_instances()}
