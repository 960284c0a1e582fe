"""The manual-trigger forms: configured names to pick from, titles and help on every param, and
no DAG that vanishes when the pipeline file cannot be read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.airflow

REPO = Path(__file__).resolve().parents[2]
CONFIG = {
    "segments": [
        {"name": "vip_users", "segment_id": "seg-1", "file_root": "vip", "columns": {"email": "email"}},
        {"name": "lapsed", "segment_id": "seg-2", "file_root": "lapsed", "columns": {"email": "email"}},
    ],
    "lytics_to_braze": {"audiences": ["high_value", {"slug": "churn_risk", "id": "a2"}]},
}


def dags(monkeypatch, tmp_path, text: str):
    from airflow.dag_processing.dagbag import DagBag

    path = tmp_path / "pipeline.yaml"
    path.write_text(text)
    monkeypatch.setenv("BRAZE_LYTICS_CONFIG", str(path))
    bag = DagBag(dag_folder=str(REPO / "dags"))
    assert bag.import_errors == {}
    return bag.dags


def test_names_come_from_the_pipeline_file_and_others_are_refused(monkeypatch, tmp_path):
    import copy

    from airflow.sdk.exceptions import ParamValidationError

    found = dags(monkeypatch, tmp_path, json.dumps(CONFIG))
    segments = found["braze_segments_to_lytics"].params.get_param("segments")
    assert segments.schema["items"]["enum"] == ["vip_users", "lapsed"]
    assert segments.schema["examples"] == ["vip_users", "lapsed"]  # Airflow's form: a multi-select
    audiences = found["lytics_audiences_to_braze"].params.get_param("audiences")
    assert audiences.schema["items"]["enum"] == ["high_value", "churn_risk"]
    assert found["lytics_audiences_drift_check"].params.get_param("audiences").schema["items"]["enum"] == [
        "high_value", "churn_risk"]

    def validate(**conf):
        params = copy.deepcopy(found["lytics_audiences_to_braze"].params)
        for key, value in conf.items():
            params[key] = value
        return params.validate()

    assert validate(audiences=["churn_risk"])["audiences"] == ["churn_risk"]
    with pytest.raises(ParamValidationError):
        validate(audiences=["churn_risk", "typo_audience"])
    with pytest.raises(ParamValidationError):
        validate(dry_run="yes")
    with pytest.raises(ParamValidationError):
        validate(retire=["../etc"])


def test_every_param_has_a_title_and_help_and_every_dag_starts_paused(monkeypatch, tmp_path):
    for dag_id, dag in dags(monkeypatch, tmp_path, json.dumps(CONFIG)).items():
        assert dag.is_paused_upon_creation is True, dag_id
        for name in dag.params:
            schema = dag.params.get_param(name).schema
            assert schema.get("title") and dag.params.get_param(name).description, f"{dag_id}.{name}"
    form = dags(monkeypatch, tmp_path, json.dumps(CONFIG))["lytics_audiences_to_braze"].params.get_param("audiences")
    assert "set to `none`" in form.description  # the one-off note is in the form itself


def test_an_unreadable_pipeline_file_keeps_the_dags_and_says_why_in_the_form(monkeypatch, tmp_path):
    found = dags(monkeypatch, tmp_path, "segments: [unclosed")
    assert {"braze_segments_to_lytics", "lytics_audiences_to_braze"} <= set(found)
    segments = found["braze_segments_to_lytics"].params.get_param("segments")
    assert "enum" not in segments.schema["items"]
    assert "could not be read" in segments.description and "pipeline.yaml" in segments.description
