"""Project files that cannot run here (no Docker engine) are checked for structure instead."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def pinned(name: str) -> str:
    for line in (REPO / "requirements.txt").read_text().splitlines():
        if line.lower().startswith(name.lower() + "=="):
            return line.split("==", 1)[1]
    raise AssertionError(f"{name} is not pinned")


def test_every_requirement_is_pinned_exactly():
    lines = [ln for ln in (REPO / "requirements.txt").read_text().splitlines() if ln and not ln.startswith("#")]
    assert lines and all(re.fullmatch(r"[A-Za-z0-9_.\-\[\]]+==[^=\s]+", ln) for ln in lines), \
        [ln for ln in lines if "==" not in ln]
    assert pinned("apache-airflow") == "3.3.2"


def test_compose_file_is_valid_and_mounts_what_exists():
    compose = yaml.safe_load((REPO / "docker-compose.yaml").read_text())
    service = compose["services"]["airflow"]
    assert service["build"] == "." and (REPO / "Dockerfile").exists()
    for volume in service["volumes"]:
        source = volume.split(":", 1)[0]
        if source.startswith("./"):
            assert (REPO / source).is_dir(), f"{source} is mounted but does not exist"
        else:
            assert source in compose["volumes"], f"named volume {source} is not declared"
    env = service["environment"]
    assert "PYTHONPATH" not in env  # dags/, plugins/, include/ side by side under AIRFLOW_HOME
    mounts = {v.split(":")[0]: v.split(":")[1] for v in service["volumes"]}
    assert [mounts[f"./{d}"] for d in ("dags", "plugins", "include")] == [
        "/opt/airflow/dags", "/opt/airflow/plugins", "/opt/airflow/include"]
    assert env["BRAZE_LYTICS_CONFIG"] == "/opt/airflow/include/config/braze_lytics.yaml"
    assert "8080:8080" in service["ports"]


def test_image_uses_the_pinned_airflow_and_python():
    first = (REPO / "Dockerfile").read_text().split("FROM ", 1)[1].split()[0]
    assert first == f"apache/airflow:{pinned('apache-airflow')}-python3.11"


def test_ci_runs_exactly_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    assert "scripts/test.sh" in ci
    assert "scripts/test.sh" in readme and "scripts/demo.sh" in readme
