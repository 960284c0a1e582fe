"""The local stack (scripts/up.sh) for tests/stack: started once per module on free ports in a
temporary state directory, always stopped afterwards, whatever happened.

Everything runs as separate processes exactly as `scripts/up.sh` starts them; the fixture kills
any process it can still find by pid (pid files, the up command's own process group) if
`scripts/stop.sh` did not end it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from sandbox import stack_procs
from sandbox.stack_services import ALL_PROCS, REPO

UP_TIMEOUT = 900  # a cold machine: set-up, initdb, migrate, Airflow start-up on 2 busy cores
STOP_TIMEOUT = 300


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "stack: starts the whole local stack (scripts/up.sh) as separate processes")


@dataclass
class Stack:
    state_dir: Path
    port: int
    up_output: str
    info: dict = field(default_factory=dict)
    _token: str | None = None

    @property
    def url(self) -> str:
        return self.info["url"]

    def token(self) -> str:
        if self._token is None:
            resp = requests.post(f"{self.url}/auth/token", json={"username": "admin", "password": "admin"},
                                 timeout=60)
            resp.raise_for_status()
            self._token = resp.json()["access_token"]
        return self._token

    def api(self, method: str, path: str, **kw) -> requests.Response:
        headers = {"Authorization": f"Bearer {self.token()}"}
        return requests.request(method, f"{self.url}/api/v2{path}", headers=headers, timeout=60, **kw)

    def pid_files(self) -> list[stack_procs.Proc]:
        procs = [stack_procs.read_pid_file(self.state_dir / "pids" / f"{n}.pid") for n in ALL_PROCS]
        return [p for p in procs if p is not None]

    def script(self, name: str, *args: str, timeout: float = UP_TIMEOUT) -> subprocess.CompletedProcess:
        return run_script(name, "--state-dir", str(self.state_dir), *args, timeout=timeout)


def run_script(name: str, *args: str, timeout: float) -> subprocess.CompletedProcess:
    """Run scripts/<name> in a session of its own; on a timeout its whole group is killed."""
    proc = subprocess.Popen(["bash", str(REPO / "scripts" / name), *args], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)  # `up` stops what it started on SIGTERM
        try:
            out, _ = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
        pytest.fail(f"scripts/{name} {' '.join(args)} did not finish within {timeout}s; output:\n{out}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, "")


@contextlib.contextmanager
def started_stack(prefix: str, up_args=lambda state_dir: (), env: dict[str, str] | None = None) -> Iterator[Stack]:
    """scripts/up.sh in a fresh state directory (`up_args(state_dir)` added to its arguments, `env` set
    for it and so for every process it starts); always stopped afterwards."""
    # Not under pytest's tmp_path: its 0700 directories keep the 'postgres' user out.
    state_dir = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    os.chmod(state_dir, 0o755)
    port = stack_procs.free_port()
    st = Stack(state_dir, port, "")
    saved = {name: os.environ.get(name) for name in env or {}}
    try:
        t0 = time.monotonic()
        os.environ.update(env or {})
        try:
            result = st.script("up.sh", "--port", str(port), "--no-schedule", *up_args(state_dir))
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
        st.up_output = result.stdout
        print(f"\nscripts/up.sh took {time.monotonic() - t0:.0f}s")
        assert result.returncode == 0, f"scripts/up.sh failed (exit {result.returncode}):\n{result.stdout}"
        st.info = json.loads((state_dir / "stack.json").read_text())
        yield st
    finally:
        _teardown(st)


@pytest.fixture(scope="module")
def stack():
    with started_stack("bl-stack-") as st:
        yield st


def _teardown(st: Stack) -> None:
    procs = st.pid_files()
    try:
        st.script("stop.sh", timeout=STOP_TIMEOUT)
    finally:
        # Whatever stop.sh did not end (or could not, if it failed) goes now, by pid.
        leftovers = [p for p in procs if p.alive]
        if leftovers:
            stack_procs.stop_all(leftovers, grace=5)
        shutil.rmtree(st.state_dir, ignore_errors=True)
