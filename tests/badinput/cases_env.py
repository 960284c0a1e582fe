"""Case table: environment variables with bad values (include/common/settings.py reads every one).

Each must fail with `ConfigError` naming the variable, its value and what it should look like. The ones
read while a DAG file is parsed (`at_parse`) must also show up as that DAG file's import error in the
DagBag - saying why - instead of making the DAG vanish.
"""

from __future__ import annotations

from dataclasses import dataclass

from include.common import settings


@dataclass(frozen=True)
class EnvCase:
    id: str
    variable: str
    value: str  # "<file>": an existing regular file's path
    reader: str  # the settings function that reads it
    expected: str  # what the message says it should be
    at_parse: tuple[str, ...] = ()  # DAG files whose parse reads it


ALL_DAGS = ("braze_segments_to_lytics.py", "lytics_audiences_to_braze.py", "lytics_audiences_drift_check.py",
            "lytics_webhook_kit.py")

CASES: list[EnvCase] = [
    EnvCase("env-task-retries-word", settings.TASK_RETRIES, "three", "task_retries", r"a whole number from 0 to 100",
            ALL_DAGS),
    EnvCase("env-task-retries-negative", settings.TASK_RETRIES, "-1", "task_retries", r"a whole number from 0 to 100"),
    EnvCase("env-task-retries-huge", settings.TASK_RETRIES, "99999999999999999999", "task_retries",
            r"a whole number from 0 to 100", ALL_DAGS),
    EnvCase("env-retry-delay-zero", settings.RETRY_DELAY_SECONDS, "0", "retry_delay_seconds", r"a number of seconds > 0"),
    EnvCase("env-retry-delay-nan", settings.RETRY_DELAY_SECONDS, "nan", "retry_delay_seconds", r"a number of seconds > 0"),
    EnvCase("env-retry-delay-overflows-timedelta", settings.RETRY_DELAY_SECONDS, "1e300", "retry_delay_seconds",
            r"at most 86400", ALL_DAGS),
    EnvCase("env-segments-schedule-prose", settings.SEGMENTS_SCHEDULE, "every day at 3", "segments_schedule",
            r"a cron expression \(e\.g\. '0 3 \* \* \*'\), a preset like @daily, or none", ("braze_segments_to_lytics.py",)),
    EnvCase("env-segments-schedule-out-of-range", settings.SEGMENTS_SCHEDULE, "61 * * * *", "segments_schedule",
            r"a cron expression", ("braze_segments_to_lytics.py",)),
    EnvCase("env-audiences-schedule-unknown-preset", settings.AUDIENCES_SCHEDULE, "@every-hour", "audiences_schedule",
            r"a preset like @hourly, or none", ("lytics_audiences_to_braze.py",)),
    EnvCase("env-audiences-schedule-four-fields", settings.AUDIENCES_SCHEDULE, "0 * * *", "audiences_schedule",
            r"a cron expression"),
    EnvCase("env-shape-workers-word", settings.SHAPE_WORKERS, "two", "shape_workers", r"a whole number >= 1"),
    EnvCase("env-shape-workers-zero", settings.SHAPE_WORKERS, "0", "shape_workers", r"a whole number >= 1"),
    EnvCase("env-work-dir-relative", settings.WORK_DIR, "scratch", "work_dir", r"an absolute directory path"),
    EnvCase("env-work-dir-is-a-file", settings.WORK_DIR, "<file>", "work_dir", r"an absolute directory path \(not a file\)"),
    EnvCase("env-quarantine-dir-is-a-file", settings.QUARANTINE_DIR, "<file>", "quarantine_dir",
            r"an absolute directory path \(not a file\)"),
    EnvCase("env-quarantine-dir-relative", settings.QUARANTINE_DIR, "./quarantine", "quarantine_dir",
            r"an absolute directory path"),
    EnvCase("env-state-url-unknown-protocol", settings.STATE_URL, "s4://bucket/state", "default_state_url",
            r"an fsspec URL such as s3://bucket/prefix \(a protocol fsspec knows"),
    EnvCase("env-quarantine-url-unknown-protocol", settings.QUARANTINE_URL, "s4://bucket/q", "quarantine_url",
            r"an fsspec URL such as s3://<conn_id>@bucket/quarantine \(a protocol fsspec knows"),
]
