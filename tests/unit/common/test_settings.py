"""include.common.settings: every environment variable, its default, and the error for a bad value."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from include.common import settings
from include.common.errors import ConfigError

REPO = Path(__file__).resolve().parents[3]


def test_defaults_when_unset_or_blank(monkeypatch, tmp_path):
    for name in (settings.CONFIG, settings.QUARANTINE_DIR, settings.STATE_URL, settings.SHAPE_WORKERS,
                 settings.TASK_RETRIES, settings.RETRY_DELAY_SECONDS, settings.SEGMENTS_SCHEDULE,
                 settings.AUDIENCES_SCHEDULE):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(settings.WORK_DIR, "  ")  # blank counts as unset
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path))
    assert settings.config_path() == REPO / "include" / "config" / "braze_lytics.yaml"
    assert settings.config_path().is_file()
    assert settings.quarantine_dir() == tmp_path / "braze_lytics" / "quarantine"
    assert settings.default_state_url() == str(tmp_path / "braze_lytics" / "state")
    assert 1 <= settings.shape_workers() <= 2
    assert (settings.task_retries(), settings.retry_delay_seconds()) == (3, 120.0)
    assert (settings.segments_schedule(), settings.audiences_schedule()) == ("@daily", "@hourly")


def test_values_are_read_when_asked(monkeypatch, tmp_path):
    monkeypatch.setenv(settings.WORK_DIR, str(tmp_path / "w"))
    monkeypatch.setenv(settings.SHAPE_WORKERS, "4")
    monkeypatch.setenv(settings.TASK_RETRIES, "0")
    monkeypatch.setenv(settings.STATE_URL, "s3://bucket/prefix")
    assert settings.work_dir() == tmp_path / "w"
    assert settings.shape_workers() == 4
    assert settings.task_retries() == 0  # "never retry" is a valid choice
    assert settings.default_state_url() == "s3://bucket/prefix"


@pytest.mark.parametrize(("name", "value", "reader"), [
    (settings.SHAPE_WORKERS, "two", settings.shape_workers),
    (settings.SHAPE_WORKERS, "0", settings.shape_workers),
    (settings.TASK_RETRIES, "-1", settings.task_retries),
    (settings.TASK_RETRIES, "3.5", settings.task_retries),
    (settings.RETRY_DELAY_SECONDS, "0", settings.retry_delay_seconds),
    (settings.RETRY_DELAY_SECONDS, "soon", settings.retry_delay_seconds),
    (settings.RETRY_DELAY_SECONDS, "inf", settings.retry_delay_seconds),
])
def test_a_bad_value_names_the_variable_its_value_and_the_expected_form(monkeypatch, name, value, reader):
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as err:
        reader()
    message = str(err.value)
    assert name in message and repr(value) in message and "expected" in message


def test_nothing_else_reads_the_environment():
    """One module reads every environment variable (the issue's `grep -rn os.environ` check)."""
    offenders = [f"{p.relative_to(REPO)}:{n}" for folder in ("include", "plugins", "dags")
                 for p in (REPO / folder).rglob("*.py") if p.name != "settings.py"
                 for n, line in enumerate(p.read_text().splitlines(), 1) if "os.environ" in line or "getenv" in line]
    assert offenders == []


def test_a_bad_variable_shows_as_the_dags_import_error(tmp_path):
    """A bad env var must not make the DAGs vanish silently: the import error names the variable."""
    code = ("from airflow.dag_processing.dagbag import DagBag\n"
            f"bag = DagBag(dag_folder={str(REPO / 'dags')!r})\n"
            "print(sorted(bag.dags)); print(' | '.join(bag.import_errors.values()).replace(chr(10), ' '))\n")
    env = {"PATH": "/usr/bin:/bin", "AIRFLOW_HOME": str(tmp_path), settings.TASK_RETRIES: "many"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    dags, errors = out.stdout.strip().splitlines()[-2:]
    assert dags == "[]"
    assert "BRAZE_LYTICS_TASK_RETRIES='many'" in errors and "whole number" in errors


def test_a_schedule_of_none_means_manual_runs_only(monkeypatch):
    monkeypatch.setenv(settings.AUDIENCES_SCHEDULE, "none")
    monkeypatch.setenv(settings.SEGMENTS_SCHEDULE, " Manual ")
    assert settings.audiences_schedule() is None and settings.segments_schedule() is None
    monkeypatch.setenv(settings.AUDIENCES_SCHEDULE, "*/15 * * * *")
    assert settings.audiences_schedule() == "*/15 * * * *"


def test_a_manual_only_dag_parses_with_no_schedule(monkeypatch):
    from airflow.dag_processing.dagbag import DagBag

    monkeypatch.setenv(settings.AUDIENCES_SCHEDULE, "none")
    bag = DagBag(dag_folder="dags")
    assert bag.import_errors == {}
    assert type(bag.dags["lytics_audiences_to_braze"].timetable).__name__ == "NullTimetable"  # no scheduled runs
