"""
### Lytics audiences -> Braze (`lytics_segments` add/remove)

**plan_audiences** reads the `lytics_to_braze:` section of the pipeline configuration once; every
later task of the run (a cleared one too) uses that frozen copy. Then, for each audience:

1. **snapshot_audience** (one mapped task per audience) - scan its members
   (`GET /api/segment/{id}/scan`, `_next` paging) into a Parquet snapshot in the state store.
   A scan that disagrees with Lytics' own `total` fails here; nothing is written.
2. **plan_changes** - diff each snapshot against the last *committed* one (entered -> add,
   left -> remove), merge per user across audiences, add users Braze rejected last time, and
   split into a bounded number of chunks. The **guard** checks every audience: too many removes
   (`max_remove_share`), a scan short of its total, too many members without the id field
   (`max_missing_id_share`); its verdict and numbers go into the plan.
3. **approve_changes** - only when the guard tripped: waits (state `awaiting_input`, no slot
   held) for the on-call person under **Required actions**. Approve: deliver. Reject, or no
   answer within `approval_timeout_hours`: the run fails, nothing sent, nothing committed.
   Skipped when the guard did not trip (or on a dry run, or with `allow_large_change`).
4. **deliver_chunk** (mapped per chunk, pool `braze_api`) - `POST /users/track` in batches of
   <= 75, paced by a client-side rate limiter that also obeys Braze's headers; checkpointed, so a
   cleared or killed task resumes.
5. **commit** - only when every chunk is delivered (or dead-lettered) do the new snapshots
   become the committed ones.
6. **report** - members, adds, removes, skipped, requests, retries, dead-lettered, data points,
   the guard's verdict.

Audiences that were synced and then taken out of the configuration keep their slug on every
Braze profile; planning names them in a warning. List them under `retire:` (or trigger a run with
the `retire` param) to remove the slug from their members (through the guard) and delete their
state. Users Braze rejects are re-sent by the next runs, then *parked* after `park_after_runs`
runs (reported, no longer sent). Ids Braze can never accept (empty, > 255 characters, control
characters) are left out when scanned and reported as "invalid ids". Files of old runs are
deleted after `prune_after_days` (never a committed snapshot).

Params: `audiences` (subset), `retire`, `dry_run` (plan and write payloads to a file, send and commit
nothing), `full_resync` (re-send current membership, remove users who left),
`allow_large_change` (a tripped guard is recorded but the run does not wait for approval).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import Asset, Param, dag, get_current_context, task

from braze_lytics.dag_defaults import default_args
from braze_lytics.tasks import audiences_to_braze as audience_tasks
from include.common import settings

BRAZE_PROFILES = Asset("braze_lytics://braze/lytics_segments")


@dag(
    dag_id="lytics_audiences_to_braze",
    schedule=settings.audiences_schedule(),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,  # runs diff against each other's commits: one at a time
    doc_md=__doc__,
    tags=["lytics", "braze", "audiences"],
    default_args=default_args(),
    params={
        "audiences": Param([], type="array", items={"type": "string"},
                           description="Audience slugs to sync (empty: every configured audience)"),
        "dry_run": Param(False, type="boolean", description="Plan only: write the payloads to a file, send nothing"),
        "full_resync": Param(False, type="boolean",
                             description="Re-send current membership as adds; remove users who left"),
        "retire": Param([], type="array", items={"type": "string"},
                        description="Audiences no longer configured whose slug is removed from every Braze profile "
                                    "it was delivered to (their state is then deleted); goes through the guard"),
        "allow_large_change": Param(False, type="boolean",
                                    description="A known large change: do not wait for approval when the guard "
                                                "trips (its verdict is still recorded and logged)"),
    },
)
def lytics_audiences_to_braze():
    @task
    def plan_audiences(params=None) -> list[dict]:
        return audience_tasks.plan_audiences(params, get_current_context())

    @task(map_index_template="{{ audience_label }}")
    def snapshot_audience(audience: dict, config: dict) -> dict:
        return audience_tasks.snapshot_audience(audience, config, get_current_context())

    @task
    def plan_changes(scans, config: dict) -> list[int]:
        return audience_tasks.plan_changes(scans, config, get_current_context())

    # Runs after approve_changes succeeded (approved) or was skipped (no approval needed); a rejected
    # or timed-out approval fails approve_changes, which leaves every delivery and the commit unrun.
    @task(pool="braze_api", map_index_template="{{ chunk_label }}", execution_timeout=timedelta(hours=4),
          trigger_rule="none_failed")
    def deliver_chunk(chunk: int, config: dict) -> dict:
        return audience_tasks.deliver_chunk(chunk, config, get_current_context())

    @task(trigger_rule="none_failed")
    def commit(config: dict) -> dict | None:
        return audience_tasks.commit(config, get_current_context())

    @task(trigger_rule="all_done", retries=0, outlets=[BRAZE_PROFILES])
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
