"""
### Braze segments -> Lytics (CSV over SFTP) - runbook

One mapped task group per configured segment (`$BRAZE_LYTICS_CONFIG`, default
`include/config/braze_lytics.yaml`); the map index shows the segment's name. One file per segment
and logical date: `<remote_dir>/<file_root>_<YYYYMMDD>.csv[.gz|.zip][.pgp]` plus a `.sha256`.

| task | what it does | a failure means | safe to clear? |
|---|---|---|---|
| **plan_segments** | reads the pipeline file once; the run uses that copy | the file is invalid: the log lists every problem | yes |
| **segment.start_export** | checks the SFTP target (host key, login, writable dir), then asks Braze for the export (`api`: link or bucket export; `drop`: finds the dashboard CSV) | bad key / unknown segment / host key changed / target not writable: read the last log line | yes: asks Braze for a **new** export |
| **segment.wait_for_export** | sensor (reschedule mode, no slot held) until the file is ready | not ready within `export_timeout_minutes`, or the link expired | yes; if the link expired clear from `start_export` |
| **segment.transfer** | download -> decrypt -> shape to Lytics CSV (rejected rows quarantined) -> compress -> encrypt -> atomic SFTP upload | see the message: too many rejected rows (nothing delivered), damaged file, SFTP error | yes: the same date replaces the same remote file atomically; nothing half-written is ever visible |
| **summarize** | rows, bytes, paths, sha256 of the run (log, XCom, asset event, **Run report** tab) | a segment did not deliver | yes (reporting only) |

**Clearing re-sends** the segment's file for that date (same name, replaced atomically): harmless for
Lytics, which imports the newest file. A failed run can also simply be left: the next day's run is
independent.

**Files**: quarantined rows `<BRAZE_LYTICS_QUARANTINE_DIR>/<segment>/<file_root>_<YYYYMMDD>.quarantine.csv`
(each row with its reason, replaced on re-run); scratch under `BRAZE_LYTICS_WORK_DIR`, removed after
every try.

**Backfill** (one file per day, each with its own date): UI -> this DAG -> *Backfill*, or
`airflow backfill create --dag-id braze_segments_to_lytics --from-date 2026-11-01 --to-date 2026-11-03`.
Braze exports the segment's *current* users: a backfilled day holds today's users under that day's date.

**Manual runs**: pick segments in the form (empty = all). A run only runs while the
DAG is unpaused, and unpausing starts the daily schedule too: for one-off runs only (e.g. a first dry
run), set the schedule to `none` (see the README) before unpausing.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import Asset, dag, get_current_context, task, task_group

from braze_lytics.dag_defaults import default_args
from braze_lytics.sensors.braze_export import BrazeExportSensor
from braze_lytics.tasks import segments_to_lytics as segment_tasks
from braze_lytics.trigger_forms import ONE_OFF_NOTE, names_param
from include.common import settings

LYTICS_FILES = Asset("braze_lytics://lytics/segment_files")


@dag(
    dag_id="braze_segments_to_lytics",
    schedule=settings.segments_schedule(),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,  # Braze runs one export per segment at a time
    is_paused_upon_creation=True,  # a manual run must not switch the schedule on
    doc_md=__doc__,
    description="Braze segment exports -> Lytics CSV over SFTP. " + ONE_OFF_NOTE,
    tags=["braze", "lytics", "export"],
    default_args=default_args(),
    params={
        "segments": names_param("segments", title="Segments", what="Braze segments (by the pipeline file's names)"),
    },
)
def braze_segments_to_lytics():
    @task(execution_timeout=timedelta(minutes=30))
    def plan_segments(params=None) -> list[dict]:
        return segment_tasks.plan_segments(params["segments"], get_current_context())

    @task_group(group_id="segment")
    def per_segment(segment: dict):
        @task(map_index_template="{{ segment_label }}", execution_timeout=timedelta(minutes=30))
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

    @task(trigger_rule="all_done", outlets=[LYTICS_FILES], execution_timeout=timedelta(minutes=30))
    def summarize(reports, segments: list[dict]) -> dict:
        summary = segment_tasks.summarize(reports, segments)
        get_current_context()["outlet_events"][LYTICS_FILES].extra = summary
        return summary

    segments = plan_segments()
    summarize(per_segment.expand(segment=segments), segments)


braze_segments_to_lytics()
