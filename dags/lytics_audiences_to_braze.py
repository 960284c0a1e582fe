"""
### Lytics audiences -> Braze (`lytics_segments` add/remove) - runbook

Keeps a Braze array attribute (default `lytics_segments`) equal to each user's Lytics audiences,
sending only what changed since the last **committed** run. One run at a time.

| task | what it does | a failure means | safe to clear? (what it re-sends) |
|---|---|---|---|
| **plan_audiences** | reads the pipeline file once (the run's frozen copy); names audiences no longer configured | invalid file: the log lists every problem | yes (nothing sent) |
| **snapshot_audience** (per audience) | scans the members into a snapshot; a scan that disagrees with Lytics' `total` fails here and is never used | Lytics token/network, or an inconsistent scan (not retried: the next run scans again) | yes (nothing sent) |
| **plan_changes** | diffs against the committed snapshot, adds Braze's earlier rejections and drift repairs, splits into chunks; **the guard** checks every audience | state store unreadable/unwritable | yes (a finished plan is reused, not recomputed) |
| **approve_changes** | only when the guard tripped: waits under **Browse -> Required actions** (state `awaiting_input`, no slot held) | *Reject* or no answer within `approval_timeout_hours`: nothing sent, nothing committed | yes: asks again |
| **deliver_chunk** (per chunk, pool `braze_api`) | `POST /users/track`, <= 75 users per request, paced under the workspace limit, checkpointed | Braze kept failing (5xx/429 past the retries) or refused the key | yes: resumes after its last checkpoint (re-sends < 36 requests; Braze treats add/remove as sets, so re-sending is harmless) |
| **commit** | makes the new snapshots the committed ones, parks users Braze rejected `park_after_runs` runs in a row, deletes retired audiences' state | a chunk was not delivered | yes |
| **report** | the run's numbers (log, XCom, asset event, **Run report** tab); deletes old runs' leftovers | the run did not commit (see the other tasks) | yes (reporting only) |

**When the guard stops a run** (too many removes, a short scan, many members without the id
field): open *Required actions*, read the table (members before/after, adds, removes, sample ids).
*Approve* if the change is real (an audience redefined on purpose), *Reject* if Lytics is wrong
(e.g. `id_field` renamed: fix the pipeline file). A manual run with `allow_large_change` does not wait.

**Skipping a failed run is safe**: nothing is committed until every chunk is delivered, so the
next run diffs against the same state and re-sends what is missing.

**Files** (state store, `state_url`): `runs/<run>/plan.json` (plan and guard verdict),
`runs/<run>/planned_payloads.jsonl` (dry runs), `dead_letter/pending/` (rejected users, retried),
`dead_letter/parked/` (given up after `park_after_runs`), `audiences/<slug>/committed.json` (the
commit pointer). Old runs' files go after `prune_after_days`.

**Retire** an audience taken out of the file: list it under `retire:` or trigger with the `retire`
param; its slug is removed from every member in Braze (through the guard) and its state deleted.

**Backfills** do not apply: a run syncs *current* membership whatever its logical date.

**Manual runs**: pick audiences in the form (empty = all). A run only runs while the
DAG is unpaused, and unpausing starts the hourly schedule too: for one-off runs only (e.g. a first dry
run), set the schedule to `none` (see the README) before unpausing.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import Asset, Param, dag, get_current_context, task

from braze_lytics.dag_defaults import default_args
from braze_lytics.tasks import audiences_to_braze as audience_tasks
from braze_lytics.trigger_forms import ONE_OFF_NOTE, flag, names_param
from include.common import settings

BRAZE_PROFILES = Asset("braze_lytics://braze/lytics_segments")


@dag(
    dag_id="lytics_audiences_to_braze",
    schedule=settings.audiences_schedule(),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,  # runs diff against each other's commits: one at a time
    is_paused_upon_creation=True,  # a manual (dry) run must not switch the hourly sync on
    doc_md=__doc__,
    description="Lytics audience membership -> Braze lytics_segments (deltas only). " + ONE_OFF_NOTE,
    tags=["lytics", "braze", "audiences"],
    default_args=default_args(),
    params={
        "audiences": names_param("audiences", title="Audiences", what="Lytics audiences (by slug)"),
        "dry_run": flag("Dry run", "Plan only: write the request bodies to runs/<run>/planned_payloads.jsonl in the "
                        "state store and show the numbers; send and commit nothing."),
        "full_resync": flag("Full resync", "Re-send every current member as an add (and remove users who left), "
                            "e.g. after the attribute was wiped in Braze. Re-delivers everything."),
        "allow_large_change": flag("Allow a large change", "A change known to be large (an audience redefined on "
                                   "purpose): the guard's verdict is recorded, but the run does not wait for approval."),
        "retire": Param([], type="array", items={"type": "string", "pattern": r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"},
                        title="Retire audiences",
                        description="Slugs of audiences no longer in the pipeline file: their slug is removed from "
                                    "every Braze profile it was delivered to (through the guard), then their state "
                                    "is deleted."),
    },
)
def lytics_audiences_to_braze():
    @task(execution_timeout=timedelta(minutes=30))
    def plan_audiences(params=None) -> list[dict]:
        return audience_tasks.plan_audiences(params, get_current_context())

    @task(map_index_template="{{ audience_label }}")
    def snapshot_audience(audience: dict, config: dict) -> dict:
        return audience_tasks.snapshot_audience(audience, config, get_current_context())

    @task(execution_timeout=timedelta(hours=2))
    def plan_changes(scans, config: dict) -> list[int]:
        return audience_tasks.plan_changes(scans, config, get_current_context())

    # Runs after approve_changes succeeded (approved) or was skipped (no approval needed); a rejected
    # or timed-out approval fails approve_changes, which leaves every delivery and the commit unrun.
    @task(pool="braze_api", map_index_template="{{ chunk_label }}", execution_timeout=timedelta(hours=4),
          trigger_rule="none_failed")
    def deliver_chunk(chunk: int, config: dict) -> dict:
        return audience_tasks.deliver_chunk(chunk, config, get_current_context())

    @task(trigger_rule="none_failed", execution_timeout=timedelta(minutes=30))
    def commit(config: dict) -> dict | None:
        return audience_tasks.commit(config, get_current_context())

    @task(trigger_rule="all_done", outlets=[BRAZE_PROFILES], execution_timeout=timedelta(minutes=30))
    def report(config: dict | None) -> dict:
        summary = audience_tasks.report(config, get_current_context())
        get_current_context()["outlet_events"][BRAZE_PROFILES].extra = {
            k: v for k, v in summary.items() if k != "audiences"}
        return summary

    # The configuration is read once, by plan_audiences (XCom key "config"); later tasks get that copy.
    audiences = plan_audiences()
    config = audiences["config"]
    scans = snapshot_audience.partial(config=config).expand(audience=audiences)
    chunks = plan_changes(scans, config)
    approval = audience_tasks.GuardApprovalOperator(task_id=audience_tasks.APPROVAL_TASK_ID)
    delivered = deliver_chunk.partial(config=config).expand(chunk=chunks)
    committed = commit(config)
    chunks >> approval >> delivered >> committed >> report(config)
    approval >> committed  # a failed approval stops the commit even when there is nothing to deliver

lytics_audiences_to_braze()
