"""
### Lytics audiences -> Braze: drift check (runbook)

**What it does.** Once a day it checks that Braze still holds what `lytics_audiences_to_braze`
last delivered. Per configured audience it samples up to `drift_sample_size` users of the last
*committed* snapshot (they must have the slug in `lytics_segments`) and up to
`drift_removed_sample_size` users removed by the recent commits (they must not), reads their
profiles with `POST /users/export/ids` (50 per request, `drift_rate_limit_per_minute`, default
250/min) and compares. It reads the same pipeline file and state store as the sync; it never
writes to Braze.

1. **plan_check** - reads the `lytics_to_braze:` section once (audiences, whether to repair).
2. **check_drift** - samples, reads Braze, compares; logs a table per audience (sampled, checked,
   not in Braze, drifted = missing slug + unexpected slug, drift rate) with up to 10 examples
   each ("expected high_value present, Braze holds ['churn_risk']"); the report is its XCom.

**Reading the report.**
* *Drift rate ~0%* - all is well. A handful of drifted users can be users Braze rejected
  (dead letters: re-sent by every sync run until accepted) or users changed by a sync run that is
  still delivering.
* *High drift rate on one audience* - something else writes `lytics_segments` (a CSV import,
  another integration or Canvas, a person in the dashboard) or an update was lost. "missing slug"
  for many members: the slug was removed behind the sync's back; "unexpected slug" for removed
  users: something added it back. Find the other writer first; repair only puts the sampled users
  back in step.
* *High drift on every audience* - the attribute was overwritten wholesale (a plain list sent to
  it) or `attribute` in the pipeline file does not name the attribute Braze holds. Fix the cause,
  then run `lytics_audiences_to_braze` with `full_resync` to re-send every member.
* *Many "not in Braze"* - profiles deleted or external ids changed in Braze. Never repaired
  (a repair would re-create deleted profiles); look into them.
* *"never delivered"* - the audience has no committed snapshot yet: nothing to check.

**Repair** (config `drift_repair`, or the `repair` param of a manual run): the drifted users are
written to `repairs/pending/<run>.parquet` in the state store; the next sync run sends them with
its own changes (its own decision wins) and deletes the file when it commits. Skipped for an
audience while a sync run has planned changes for it that are not committed yet (the report says
so): repair after that run commits.

**Safe to clear and re-run.** The check only reads Braze; a re-run of the same run samples the
same users and rewrites (or deletes) its own repair file. A failure with "users.export.ids" means
the REST API key lacks that permission.

Params: `audiences` (subset of slugs; empty = all), `repair` (true/false overrides `drift_repair`
for this run; empty = the configuration's).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import Param, dag, get_current_context, task

from braze_lytics.dag_defaults import default_args
from braze_lytics.tasks import drift as drift_tasks
from braze_lytics.trigger_forms import names_param


@dag(
    dag_id="lytics_audiences_drift_check",
    schedule="@daily",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    is_paused_upon_creation=True,
    doc_md=__doc__,
    tags=["lytics", "braze", "audiences", "drift"],
    default_args=default_args(),
    params={
        "audiences": names_param("audiences", title="Audiences", what="Lytics audiences (by slug) to check"),
        "repair": Param(None, type=["null", "boolean"], title="Repair",
                        description="Queue drifted users for the next sync run (empty: the configuration's "
                                    "drift_repair)"),
    },
)
def lytics_audiences_drift_check():
    @task
    def plan_check(params=None) -> dict:
        return drift_tasks.plan_check(params, get_current_context())

    # Reads Braze at drift_rate_limit_per_minute: 500 audiences x 1,200 users take ~50 minutes at 250/min.
    @task(execution_timeout=timedelta(hours=3))
    def check_drift(plan: dict) -> dict:
        return drift_tasks.check_drift(plan, get_current_context())

    check_drift(plan_check())


lytics_audiences_drift_check()
