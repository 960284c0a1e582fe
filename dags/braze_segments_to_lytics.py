"""
### Braze segments -> Lytics (CSV over SFTP)

For each segment in the pipeline configuration (`$BRAZE_LYTICS_CONFIG`, default
`include/config/braze_lytics.yaml`), one mapped task group, labelled with the segment's name:

1. **start_export** - check the SFTP target (host key, login, writable directory), then
   `POST /users/export/segment` (source `api`: a download link, or a bucket export when the
   workspace exports to its own bucket), or locate the landing folder of a dashboard export
   (source `drop`).
2. **wait_for_export** - sensor in reschedule mode: no worker slot is held while Braze works
   (link probed with a ranged GET; bucket export complete once its folder is quiet).
3. **transfer** - download -> PGP-decrypt (if encrypted) -> shape to Lytics CSV (quarantining
   rejected rows) -> gzip/zip -> PGP-encrypt (optional) -> atomic SFTP delivery to
   `<remote_dir>/<file_root>_<YYYYMMDD>.csv[.gz|.zip][.pgp]` with a `.sha256` manifest.

**summarize** reports rows, bytes and paths for the whole run (log, XCom, asset event).

Every task is safe to clear: the same logical date delivers the same file under the same name.
Trigger manually with `segments` to run a subset. Connections: `braze_default`, `lytics_sftp`
(and PGP key connections if configured) - see the README.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import Asset, Param, dag, get_current_context, task, task_group

from braze_lytics.dag_defaults import default_args
from braze_lytics.sensors.braze_export import BrazeExportSensor
from braze_lytics.tasks import segments_to_lytics as segment_tasks
from include.common import settings

LYTICS_FILES = Asset("braze_lytics://lytics/segment_files")


@dag(
    dag_id="braze_segments_to_lytics",
    schedule=settings.segments_schedule(),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,  # Braze runs one export per segment at a time
    doc_md=__doc__,
    tags=["braze", "lytics", "export"],
    default_args=default_args(),
    params={
        "segments": Param([], type="array", items={"type": "string"},
                          description="Segment names to run (empty: every configured segment)"),
    },
)
def braze_segments_to_lytics():
    @task
    def plan_segments(params=None) -> list[dict]:
        return segment_tasks.plan_segments(params["segments"])

    @task_group(group_id="segment")
    def per_segment(segment: dict):
        @task(map_index_template="{{ segment_label }}")
        def start_export(segment: dict) -> dict:
            return segment_tasks.start_export(segment, get_current_context())

        @task(map_index_template="{{ segment_label }}", execution_timeout=timedelta(hours=6))
        def transfer(segment: dict, export: dict) -> dict:
            return segment_tasks.transfer(segment, export, get_current_context())

        export = start_export(segment)
        ready = BrazeExportSensor(task_id="wait_for_export", export=export, map_index_template="{{ segment_label }}")
        report = transfer(segment, export)
        ready >> report
        return report

    @task(trigger_rule="all_done", retries=0, outlets=[LYTICS_FILES])
    def summarize(reports, segments: list[dict]) -> dict:
        summary = segment_tasks.summarize(reports, segments)
        get_current_context()["outlet_events"][LYTICS_FILES].extra = summary
        return summary

    segments = plan_segments()
    summarize(per_segment.expand(segment=segments), segments)


braze_segments_to_lytics()
