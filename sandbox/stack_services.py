"""The processes of the local stack and how to tell each is ready.

* PostgreSQL (Debian's packages, a private cluster under ``<state>/postgres``; as root it runs as
  the ``postgres`` user, like the distribution's own clusters) - Airflow's metadata DB.
* moto's S3 server - the audience state store (``state_url: s3://...``).
* the Braze and Lytics sandboxes (their own CLIs), the SFTP server Lytics reads from
  (``sandbox/sftp_server.py``: asyncssh, password login, a persistent ed25519 host key that the
  ``lytics_sftp`` connection pins; it needs no root, unlike the tests' OpenSSH fixture).
* Airflow 3: api-server, scheduler (LocalExecutor), dag-processor, triggerer
  (:mod:`sandbox.stack_airflow`).

Every process runs from the venv (``sys.executable``'s directory is put first on PATH: Airflow
starts ``airflow`` sub-commands by name).
"""

from __future__ import annotations

import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import requests

from sandbox import stack_procs
from sandbox.stack_procs import Proc

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent  # not resolved: .venv/bin, whatever python it links to
PYTHON = str(Path(sys.executable))

ADMIN_USER = "admin"
ADMIN_PASSWORD = "admin"  # noqa: S105 - the documented local login of a loopback-only dev stack
S3_REGION = "us-east-1"
S3_BUCKET = "braze-lytics-stack"
SFTP_USER = "lytics"
AIRFLOW_PROCS = ("airflow-api-server", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer")
SANDBOX_PROCS = ("braze-sandbox", "lytics-sandbox", "sftp-server", "s3-moto")
DB_PROCS = ("postgres",)
ALL_PROCS = DB_PROCS + SANDBOX_PROCS + AIRFLOW_PROCS  # start order; stop goes the other way


class StackError(RuntimeError):
    """Something the person running the stack must fix; the message says what."""


@dataclass
class Layout:
    """Where everything lives under the state directory."""

    root: Path

    def __post_init__(self) -> None:
        self.root = self.root.resolve()

    logs = property(lambda self: self.root / "logs")
    pids = property(lambda self: self.root / "pids")
    secrets_file = property(lambda self: self.root / "secrets.json")
    stack_file = property(lambda self: self.root / "stack.json")
    env_file = property(lambda self: self.root / "env.sh")
    pipeline_file = property(lambda self: self.root / "pipeline.yaml")
    airflow_home = property(lambda self: self.root / "airflow")
    postgres = property(lambda self: self.root / "postgres")
    sftp_root = property(lambda self: self.root / "sftp")
    sftp_host_key = property(lambda self: self.root / "sftp_host_key")
    braze_data = property(lambda self: self.root / "braze")

    def log(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    def pid_file(self, name: str) -> Path:
        return self.pids / f"{name}.pid"


def log_tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join("      " + line for line in text[-lines:])


def wait_until(what: str, check: Callable[[], bool], *, timeout: float, proc: Proc | None = None,
               log: Path | None = None, interval: float = 0.5) -> None:
    """Poll ``check`` until it is true; fail early (with the log's tail) if ``proc`` died."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except Exception:  # not ready yet  # noqa: BLE001
            pass
        if proc is not None and not proc.alive:
            tail = f"; last lines of {log}:\n{log_tail(log)}" if log else ""
            raise StackError(f"{proc.name} exited while starting ({what}){tail}")
        if time.monotonic() > deadline:
            tail = f"; last lines of {log}:\n{log_tail(log)}" if log else ""
            raise StackError(f"{what}: not ready after {timeout:.0f}s{tail}")
        time.sleep(interval)


# ----------------------------------------------------------------------------------- secrets
def load_secrets(layout: Layout) -> dict[str, str]:
    """Generated once per state directory (0600) and reused, so Airflow's DB stays readable."""
    from cryptography.fernet import Fernet

    try:
        data = json.loads(layout.secrets_file.read_text())
    except (OSError, ValueError):
        data = {}
    wanted = {
        "fernet_key": lambda: Fernet.generate_key().decode(),
        "jwt_secret": lambda: secrets.token_urlsafe(32),
        "api_secret_key": lambda: secrets.token_urlsafe(32),
        "postgres_password": lambda: secrets.token_urlsafe(18),
        "braze_api_key": lambda: secrets.token_urlsafe(24),
        "lytics_token": lambda: secrets.token_urlsafe(24),
        "sftp_password": lambda: secrets.token_urlsafe(18),
        "s3_access_key": lambda: "AKIASTACK" + secrets.token_hex(6).upper(),
        "s3_secret_key": lambda: secrets.token_urlsafe(30),
    }
    changed = False
    for key, make in wanted.items():
        if not data.get(key):
            data[key] = make()
            changed = True
    if changed:
        write_private(layout.secrets_file, json.dumps(data, indent=2) + "\n")
    return data


def write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(path, 0o600)


# ---------------------------------------------------------------------------------- postgres
def postgres_bin() -> Path | None:
    """Directory of Debian's newest installed PostgreSQL server binaries."""
    found = []
    for d in Path("/usr/lib/postgresql").glob("*/bin"):
        if (d / "postgres").is_file() and (d / "initdb").is_file():
            try:
                found.append((int(d.parent.name), d))
            except ValueError:
                continue
    return max(found)[1] if found else None


def _pg_user() -> str | None:
    """Who runs postgres: as root, Debian's ``postgres`` user (postgres refuses to run as root)."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        raise StackError("running as root needs the 'postgres' system user (apt-get install postgresql)") from None
    return "postgres"


def _check_traversable(path: Path, user: str) -> None:
    """Postgres, running as ``user``, must reach its data directory through every parent."""
    entry = pwd.getpwnam(user)
    for parent in [path, *path.parents]:
        st = parent.stat()
        if st.st_uid == entry.pw_uid:
            continue
        if not st.st_mode & 0o001:
            raise StackError(
                f"PostgreSQL runs as '{user}' and cannot enter {parent} (mode {oct(st.st_mode & 0o777)}): "
                f"choose a state directory it can reach (--state-dir), or chmod o+x {parent}"
            )


def prepare_postgres(layout: Layout, password: str, log=print) -> None:
    """Create the cluster on first use (initdb; password login on loopback only)."""
    bin_dir = postgres_bin()
    if bin_dir is None:
        raise StackError("PostgreSQL is not installed: run scripts/up.sh (it apt-installs postgresql)")
    data = layout.postgres / "data"
    run_dir = layout.postgres / "run"
    user = _pg_user()
    layout.postgres.mkdir(parents=True, exist_ok=True)
    run_dir.mkdir(exist_ok=True)
    if user:
        entry = pwd.getpwnam(user)
        _check_traversable(layout.postgres, user)
        for p in (layout.postgres, run_dir):
            os.chown(p, entry.pw_uid, entry.pw_gid)
    if (data / "PG_VERSION").exists():
        return
    log(f"    initdb {data} ({bin_dir.parent.name})")
    shutil.rmtree(data, ignore_errors=True)
    pwfile = layout.postgres / "initdb.pw"
    write_private(pwfile, password + "\n")
    if user:
        os.chown(pwfile, entry.pw_uid, entry.pw_gid)
    try:
        proc = subprocess.run(
            [str(bin_dir / "initdb"), "-D", str(data), "-U", "airflow", f"--pwfile={pwfile}",
             "--auth=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8"],
            capture_output=True, text=True, user=user, cwd=layout.postgres, timeout=300,
        )
    finally:
        pwfile.unlink(missing_ok=True)
    with open(layout.log("postgres-initdb"), "w") as fh:
        fh.write(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        shutil.rmtree(data, ignore_errors=True)
        raise StackError(f"initdb failed (exit {proc.returncode}): {proc.stderr.strip()[-1500:]}")


def start_postgres(layout: Layout, port: int, password: str, env: dict[str, str]) -> Proc:
    bin_dir = postgres_bin()
    assert bin_dir is not None
    argv = [str(bin_dir / "postgres"), "-D", str(layout.postgres / "data"), "-p", str(port),
            "-k", str(layout.postgres / "run"), "-c", "listen_addresses=127.0.0.1",
            "-c", "synchronous_commit=off", "-c", "max_connections=200"]
    # SIGINT: "fast" shutdown (the postmaster ends its backends itself).
    proc = stack_procs.start("postgres", argv, state_dir=layout.root, env=env, cwd=layout.postgres,
                             stop_signal=signal.SIGINT, user=_pg_user())

    def ready() -> bool:
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=port, user="airflow", password=password,
                             dbname="postgres", connect_timeout=3, autocommit=True) as conn:
            if not conn.execute("SELECT 1 FROM pg_database WHERE datname = 'airflow'").fetchone():
                conn.execute("CREATE DATABASE airflow")
        return True

    wait_until("postgres accepts connections", ready, timeout=90, proc=proc, log=layout.log("postgres"))
    return proc


def postgres_url(port: int, password: str) -> str:
    from urllib.parse import quote

    return f"postgresql+psycopg://airflow:{quote(password, safe='')}@127.0.0.1:{port}/airflow"


# --------------------------------------------------------------------------------- sandboxes
@dataclass
class Sandboxes:
    ports: dict[str, int]
    secrets: dict[str, str]
    host_key_line: str = ""
    procs: list[Proc] = field(default_factory=list)

    def placeholders(self) -> dict[str, str]:
        return {
            "BRAZE_URL": f"http://127.0.0.1:{self.ports['braze']}",
            "BRAZE_API_KEY": self.secrets["braze_api_key"],
            "LYTICS_URL": f"http://127.0.0.1:{self.ports['lytics']}",
            "LYTICS_TOKEN": self.secrets["lytics_token"],
            "SFTP_HOST": "127.0.0.1",
            "SFTP_PORT": str(self.ports["sftp"]),
            "SFTP_USER": SFTP_USER,
            "SFTP_PASSWORD": self.secrets["sftp_password"],
            "SFTP_HOST_KEY": self.host_key_line,
            "S3_ENDPOINT": f"http://127.0.0.1:{self.ports['s3']}",
            "S3_ACCESS_KEY": self.secrets["s3_access_key"],
            "S3_SECRET_KEY": self.secrets["s3_secret_key"],
            "S3_REGION": S3_REGION,
            "S3_BUCKET": S3_BUCKET,
        }


def _http_up(url: str) -> bool:
    requests.get(url, timeout=3)
    return True


def _ssh_banner(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
        s.settimeout(3)
        return s.recv(64).startswith(b"SSH-2.0-")


def start_sandboxes(layout: Layout, sandbox_cfg: dict, secrets_: dict[str, str], ports: dict[str, int],
                    env: dict[str, str]) -> Sandboxes:
    """Start S3, Braze, Lytics and SFTP together, then wait for each."""
    sb = Sandboxes(ports, secrets_)
    base_env = {**env, "PYTHONUNBUFFERED": "1"}
    layout.braze_data.mkdir(parents=True, exist_ok=True)
    (layout.sftp_root / "upload").mkdir(parents=True, exist_ok=True)

    argv_s3 = [PYTHON, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(ports["s3"])]
    argv_braze = [PYTHON, "-m", "sandbox.braze_cli", "--host", "127.0.0.1", "--port", str(ports["braze"]),
                  "--delay", str(sandbox_cfg.get("export_delay_seconds", 3)), "--data-dir", str(layout.braze_data),
                  "-q"]
    for spec in sandbox_cfg.get("braze_segments") or []:
        argv_braze += ["--segment", str(spec)]
    churn_minutes = float(sandbox_cfg.get("lytics_churn_every_minutes") or 0)
    argv_lytics = [PYTHON, "-m", "sandbox.lytics_server", "--host", "127.0.0.1", "--port", str(ports["lytics"]),
                   "--churn-every", str(churn_minutes * 60), "--churn-share",
                   str(sandbox_cfg.get("lytics_churn_share", 0.005)), "-q"]
    for spec in sandbox_cfg.get("lytics_audiences") or []:
        argv_lytics += ["--audience", str(spec)]
    argv_sftp = [PYTHON, "-m", "sandbox.sftp_server", "--root", str(layout.sftp_root), "--host", "127.0.0.1",
                 "--port", str(ports["sftp"]), "--username", SFTP_USER, "--host-key-file", str(layout.sftp_host_key)]

    # Secrets go through the environment (a command line is world-readable in /proc).
    starts = [
        ("s3-moto", argv_s3, {"AWS_DEFAULT_REGION": S3_REGION}),
        ("braze-sandbox", argv_braze, {"BRAZE_SANDBOX_API_KEY": secrets_["braze_api_key"]}),
        ("lytics-sandbox", argv_lytics, {"LYTICS_SANDBOX_TOKEN": secrets_["lytics_token"]}),
        ("sftp-server", argv_sftp, {"DEMO_SFTP_PASSWORD": secrets_["sftp_password"]}),
    ]
    procs = {}
    for name, argv, extra in starts:
        procs[name] = stack_procs.start(name, argv, state_dir=layout.root, env={**base_env, **extra}, cwd=REPO)
        sb.procs.append(procs[name])
    wait_until("S3 server (moto)", lambda: _http_up(f"http://127.0.0.1:{ports['s3']}/moto-api/data.json"),
               timeout=120, proc=procs["s3-moto"], log=layout.log("s3-moto"))
    wait_until("Braze sandbox", lambda: _http_up(f"http://127.0.0.1:{ports['braze']}/"), timeout=120,
               proc=procs["braze-sandbox"], log=layout.log("braze-sandbox"))
    wait_until("Lytics sandbox", lambda: _http_up(f"http://127.0.0.1:{ports['lytics']}/"), timeout=120,
               proc=procs["lytics-sandbox"], log=layout.log("lytics-sandbox"))
    wait_until("SFTP server", lambda: _ssh_banner(ports["sftp"]), timeout=120, proc=procs["sftp-server"],
               log=layout.log("sftp-server"))

    import asyncssh

    key = asyncssh.read_private_key(str(layout.sftp_host_key))
    sb.host_key_line = " ".join(key.export_public_key("openssh").decode().split()[:2])
    _create_bucket(sb)
    return sb


def _create_bucket(sb: Sandboxes) -> None:
    import boto3
    from botocore.config import Config

    v = sb.placeholders()
    client = boto3.session.Session().client(
        "s3", endpoint_url=v["S3_ENDPOINT"], aws_access_key_id=v["S3_ACCESS_KEY"],
        aws_secret_access_key=v["S3_SECRET_KEY"], region_name=S3_REGION,
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 5}),
    )
    existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
    if S3_BUCKET not in existing:
        client.create_bucket(Bucket=S3_BUCKET)
