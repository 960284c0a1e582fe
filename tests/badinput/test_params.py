"""Manual-trigger params: unknown segment/audience names and wrong types are refused by the DAG's params
validation (the trigger form and the REST API both run it), naming the param, the value and the allowed
ones; when the form could not list the names (free text), the run's first task refuses unknown names with
a ConfigError naming the configured ones."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from include.audiences_to_braze.config import parse_audience_config
from include.common.errors import ConfigError
from include.segments_to_lytics.config import parse_config
from tests.badinput.conftest import check_error

pytestmark = pytest.mark.airflow

REPO = Path(__file__).resolve().parents[2]
CONFIG = {
    "segments": [{"name": "vip_users", "segment_id": "seg-1", "columns": {"user_id": "external_id"}},
                 {"name": "lapsed", "segment_id": "seg-2", "columns": {"user_id": "external_id"}}],
    "lytics_to_braze": {"audiences": ["high_value", {"slug": "churn_risk", "id": "a2"}]},
}
B2L, L2B, DRIFT = "braze_segments_to_lytics", "lytics_audiences_to_braze", "lytics_audiences_drift_check"


@dataclass(frozen=True)
class ParamCase:
    id: str
    dag_id: str
    conf: dict
    says: tuple[str, ...]


CASES = [
    ParamCase("param-segments-unknown-name", B2L, {"segments": ["vip"]},
              (r"param segments", r"'vip' is not one of \['vip_users', 'lapsed'\]")),
    ParamCase("param-segments-a-string", B2L, {"segments": "vip_users"}, (r"param segments", r"is not of type 'array'")),
    ParamCase("param-segments-a-number", B2L, {"segments": [3]}, (r"param segments", r"3 is not of type 'string'")),
    ParamCase("param-segments-twice", B2L, {"segments": ["lapsed", "lapsed"]}, (r"param segments", r"non-unique")),
    ParamCase("param-audiences-unknown-name", L2B, {"audiences": ["high-value"]},
              (r"param audiences", r"'high-value' is not one of \['high_value', 'churn_risk'\]")),
    ParamCase("param-audiences-an-object", L2B, {"audiences": {"high_value": True}},
              (r"param audiences", r"is not of type 'array'")),
    ParamCase("param-dry-run-a-string", L2B, {"dry_run": "yes"}, (r"param dry_run", r"'yes' is not of type 'boolean'")),
    ParamCase("param-full-resync-a-number", L2B, {"full_resync": 1}, (r"param full_resync", r"is not of type 'boolean'")),
    ParamCase("param-allow-large-change-null", L2B, {"allow_large_change": None},
              (r"param allow_large_change", r"None is not of type 'boolean'")),
    ParamCase("param-retire-a-string", L2B, {"retire": "churn_risk"}, (r"param retire", r"is not of type 'array'")),
    ParamCase("param-retire-path", L2B, {"retire": ["../state"]}, (r"param retire", r"does not match")),
    ParamCase("param-retire-too-long", L2B, {"retire": ["a" * 129]}, (r"param retire", r"does not match")),
    ParamCase("param-drift-audiences-unknown", DRIFT, {"audiences": ["nope"]}, (r"param audiences", r"is not one of")),
    ParamCase("param-drift-repair-a-string", DRIFT, {"repair": "true"}, (r"param repair", r"is not of type")),
]


@pytest.fixture(scope="module")
def dags(tmp_path_factory):
    from airflow.dag_processing.dagbag import DagBag

    path = tmp_path_factory.mktemp("params") / "pipeline.yaml"
    path.write_text(json.dumps(CONFIG))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BRAZE_LYTICS_CONFIG", str(path))
        bag = DagBag(dag_folder=str(REPO / "dags"))
    assert bag.import_errors == {}
    return bag.dags


def validate(dags, dag_id: str, conf: dict) -> dict:
    params = copy.deepcopy(dags[dag_id].params)
    for key, value in conf.items():
        params[key] = value
    return params.validate()


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_trigger_params_are_refused_naming_the_param(case: ParamCase, dags):
    import re

    from airflow.sdk.exceptions import ParamValidationError

    with pytest.raises(Exception) as err:
        validate(dags, case.dag_id, case.conf)
    assert type(err.value) is ParamValidationError, repr(err.value)
    for fragment in case.says:
        assert re.search(fragment, str(err.value)), (fragment, str(err.value))


@pytest.mark.parametrize(("dag_id", "conf", "says"), [
    (L2B, {"dryrun": True}, (r"'dryrun' \(did you mean 'dry_run'\?\)", r"lytics_audiences_to_braze", r"known params")),
    (B2L, {"segment": ["vip_users"]}, (r"'segment' \(did you mean 'segments'\?\)",)),
    (DRIFT, {"repiar": True, "zzz": 1}, (r"keys", r"'repiar' \(did you mean 'repair'\?\)", r"'zzz'")),
])
def test_a_misspelt_param_name_fails_the_first_task_naming_the_close_match(dags, dag_id, conf, says):
    """Airflow's params validation accepts unknown conf keys (and ignores them), so a run meant to be
    dry would send; the first task of every DAG refuses them before anything is done."""
    from types import SimpleNamespace

    from braze_lytics.trigger_forms import refuse_unknown_conf

    validate(dags, dag_id, conf)  # Airflow lets it through ...
    with pytest.raises(Exception) as err:  # ... the first task does not
        refuse_unknown_conf({"dag": dags[dag_id], "dag_run": SimpleNamespace(conf=conf)})
    check_error(err.value, ConfigError, (*says, r"trigger the run again"))
    refuse_unknown_conf({"dag": dags[dag_id], "dag_run": SimpleNamespace(conf={"dry_run": True} if dag_id == L2B
                                                                            else {})})


# When the trigger form could not read the names (free text), the first task checks them.
def test_unknown_segment_names_reach_plan_segments_as_a_config_error():
    config = parse_config(CONFIG, path=Path("pipeline.yaml"))
    with pytest.raises(Exception) as err:
        config.select(["vip_users", "vip"])
    check_error(err.value, ConfigError, (r"pipeline\.yaml", r"unknown segment name\(s\) \['vip'\]",
                                         r"the run's 'segments' param", r"configured: \['lapsed', 'vip_users'\]"))


def test_unknown_audience_slugs_reach_plan_audiences_as_a_config_error():
    config = parse_audience_config(CONFIG["lytics_to_braze"], Path("pipeline.yaml"))
    with pytest.raises(Exception) as err:
        config.select(["high-value"])
    check_error(err.value, ConfigError, (r"pipeline\.yaml", r"unknown audience\(s\) \['high-value'\]",
                                         r"the run's 'audiences' param", r"configured: \['churn_risk', 'high_value'\]"))
