"""The configuration file and the environment variables: every bad value is a `ConfigError` naming the file
and key path (or the variable), what is wrong and what is expected; a bad variable read at parse time is
the DAG file's import error, saying why, never a DAG that silently vanishes."""

from __future__ import annotations

from pathlib import Path

import pytest

from include.audiences_to_braze.config import load_audience_config
from include.common import settings
from include.common.errors import ConfigError
from include.segments_to_lytics.config import load_config
from tests.badinput.cases_config import AUDIENCE_CASES, SEGMENT_CASES, ConfigCase
from tests.badinput.cases_env import CASES as ENV_CASES
from tests.badinput.cases_env import EnvCase
from tests.badinput.conftest import check_error

REPO = Path(__file__).resolve().parents[2]
CONFIG_CASES = SEGMENT_CASES + AUDIENCE_CASES


@pytest.mark.parametrize("case", CONFIG_CASES, ids=[c.id for c in CONFIG_CASES])
def test_bad_configuration_names_file_key_and_fix(case: ConfigCase, tmp_path, monkeypatch):
    path = tmp_path / "pipeline.yaml"
    if case.text == b"<directory>":
        path.mkdir()
    elif isinstance(case.text, bytes):
        path.write_bytes(case.text)
    elif case.text is not None:
        path.write_text(case.text, encoding="utf-8")
    monkeypatch.setenv(settings.CONFIG, str(path))  # read through the variable, as the DAGs do
    load = load_config if case.section == "segments" else load_audience_config
    with pytest.raises(Exception) as err:
        load()
    check_error(err.value, ConfigError, (r"pipeline\.yaml", *case.says))


# ------------------------------------------------------------------------------------------------ environment
def _value(case: EnvCase, tmp_path: Path) -> str:
    if case.value == "<file>":
        file = tmp_path / "not-a-directory"
        file.write_text("x")
        return str(file)
    return case.value


@pytest.mark.parametrize("case", ENV_CASES, ids=[c.id for c in ENV_CASES])
def test_bad_environment_variable_names_itself(case: EnvCase, tmp_path, monkeypatch):
    value = _value(case, tmp_path)
    monkeypatch.setenv(case.variable, value)
    with pytest.raises(Exception) as err:
        getattr(settings, case.reader)()
    check_error(err.value, ConfigError, (rf"environment variable {case.variable}=", repr(value).replace("*", r"\*"),
                                         r"is not valid: expected ", case.expected, r"fix or unset it"))


@pytest.mark.parametrize("value", ["@quarterly", "@once", "@continuous", "@daily", "none", "0 3 * * 1-5", "*/15 * * * *"])
def test_every_schedule_airflow_takes_is_still_accepted(value, monkeypatch):
    monkeypatch.setenv(settings.SEGMENTS_SCHEDULE, value)
    assert settings.segments_schedule() == (None if value == "none" else value)


PARSE_CASES = [c for c in ENV_CASES if c.at_parse]


@pytest.mark.airflow
@pytest.mark.parametrize("case", PARSE_CASES, ids=[f"dagbag-{c.id}" for c in PARSE_CASES])
def test_bad_variable_is_the_dag_files_import_error(case: EnvCase, tmp_path, monkeypatch):
    from airflow.dag_processing.dagbag import DagBag

    monkeypatch.setenv(case.variable, _value(case, tmp_path))
    bag = DagBag(dag_folder=str(REPO / "dags"))
    errors = {Path(k).name: v for k, v in bag.import_errors.items()}
    assert sorted(errors) == sorted(case.at_parse), errors
    for text in errors.values():
        assert "ConfigError" in text and f"environment variable {case.variable}=" in text and "fix or unset it" in text
    others = {Path(dag.fileloc).name for dag in bag.dags.values()}
    assert not others & set(case.at_parse)
    assert others == {f for f in {"braze_segments_to_lytics.py", "lytics_audiences_to_braze.py",
                                  "lytics_audiences_drift_check.py", "lytics_webhook_kit.py"} if f not in case.at_parse}


@pytest.mark.airflow
def test_a_missing_pipeline_file_keeps_the_dags_and_the_form_says_why(tmp_path, monkeypatch):
    """BRAZE_LYTICS_CONFIG pointing nowhere: the DAGs still load (nothing vanishes), the trigger form says why,
    and the run's first task fails with the ConfigError naming the variable (test above)."""
    from airflow.dag_processing.dagbag import DagBag

    monkeypatch.setenv(settings.CONFIG, str(tmp_path / "nowhere.yaml"))
    bag = DagBag(dag_folder=str(REPO / "dags"))
    assert bag.import_errors == {}
    form = bag.dags["braze_segments_to_lytics"].params.get_param("segments")
    assert "could not be read" in form.description and "nowhere.yaml" in form.description
