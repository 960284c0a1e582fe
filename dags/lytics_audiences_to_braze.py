"""
### Lytics audiences -> Braze (`lytics_segments` add/remove)

**plan_audiences** reads the `lytics_to_braze:` section of the pipeline configuration once; every
later task of the run (a cleared one too) uses that frozen copy. Then, for each audience:

1. **snapshot_audience** (one mapped task per audience) - scan its members
   (`GET /api/segment/{id}/scan`, `_next` paging) into a Parquet snapshot in the state store.
2. **plan_changes** - diff each snapshot against the last *committed* one (entered -> add,
   left -> remove), merge per user across audiences, add users Braze rejected last time, and
   split into a bounded number of chunks.
3. **deliver_chunk** (mapped per chunk, pool `braze_api`) - `POST /users/track` in batches of
   <= 75, paced by a client-side rate limiter that also obeys Braze's headers; checkpointed, so a
   cleared or killed task resumes.
4. **commit** - only when every chunk is delivered (or dead-lettered) do the new snapshots
   become the committed ones.
5. **report** - members, adds, removes, skipped, requests, retries, dead-lettered, data points.

Params: `audiences` (subset), `dry_run` (plan and write payloads to a file, send and commit
nothing), `full_resync` (re-send current membership, remove users who left).
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

    @task(pool="braze_api", map_index_template="{{ chunk_label }}", execution_timeout=timedelta(hours=4))
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
    delivered = deliver_chunk.partial(config=config).expand(chunk=plan_changes(scans, config))
    delivered >> commit(config) >> report(config)

lytics_audiences_to_braze()
