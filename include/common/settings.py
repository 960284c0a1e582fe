"""Every environment variable the project reads, with its default, in one place.

Nothing else in `include/`, `plugins/` or `dags/` looks at `os.environ`: they ask here. Values
are read when asked (not at import), so a test or a task can change the environment first. A
value that does not parse raises :class:`~include.common.errors.ConfigError` naming the variable,
its value and what it should look like - at DAG parse time that shows as the DAG's import error
in the UI, so a DAG never vanishes without saying why.

==================================  =======================================  ============================
variable                            default                                  meaning
==================================  =======================================  ============================
BRAZE_LYTICS_CONFIG                 include/config/braze_lytics.yaml         the pipeline configuration
BRAZE_LYTICS_WORK_DIR               the system temp directory                scratch files (0700 dirs)
BRAZE_LYTICS_QUARANTINE_DIR         $AIRFLOW_HOME/braze_lytics/quarantine    rejected rows, for review
BRAZE_LYTICS_QUARANTINE_URL         (unset: the directory above)             rejected rows in an object
                                                                             store shared by all workers
BRAZE_LYTICS_STATE_URL              $AIRFLOW_HOME/braze_lytics/state         audience state (when the
                                                                             config has no state_url);
                                                                             export-callback records
BRAZE_LYTICS_SHAPE_WORKERS          min(2, CPUs)                             processes shaping one export
BRAZE_LYTICS_NATIVE_SHAPING         1                                        0: shape in Python only, not
                                                                             with the native row writer
BRAZE_LYTICS_TASK_RETRIES           3                                        Airflow retries per task
BRAZE_LYTICS_RETRY_DELAY_SECONDS    120                                      first retry delay (doubles)
BRAZE_SEGMENTS_TO_LYTICS_SCHEDULE   @daily                                   schedule of that DAG
LYTICS_AUDIENCES_TO_BRAZE_SCHEDULE  @hourly                                  schedule of that DAG
==================================  =======================================  ============================
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from include.common.errors import ConfigError

T = TypeVar("T")

CONFIG = "BRAZE_LYTICS_CONFIG"
WORK_DIR = "BRAZE_LYTICS_WORK_DIR"
QUARANTINE_DIR = "BRAZE_LYTICS_QUARANTINE_DIR"
QUARANTINE_URL = "BRAZE_LYTICS_QUARANTINE_URL"
STATE_URL = "BRAZE_LYTICS_STATE_URL"
SHAPE_WORKERS = "BRAZE_LYTICS_SHAPE_WORKERS"
NATIVE_SHAPING = "BRAZE_LYTICS_NATIVE_SHAPING"
TASK_RETRIES = "BRAZE_LYTICS_TASK_RETRIES"
RETRY_DELAY_SECONDS = "BRAZE_LYTICS_RETRY_DELAY_SECONDS"
SEGMENTS_SCHEDULE = "BRAZE_SEGMENTS_TO_LYTICS_SCHEDULE"
AUDIENCES_SCHEDULE = "LYTICS_AUDIENCES_TO_BRAZE_SCHEDULE"
LYTICS_API_TOKEN = "LYTICS_API_TOKEN"  # only the webhook kit's command, outside Airflow (a secret: never echoed)

DEFAULT_CONFIG_PATH = Path(__file__).resolve().parents[1] / "config" / "braze_lytics.yaml"


def _read(name: str, default: T, parse: Callable[[str], T], expected: str) -> T:
    """The variable parsed, or `default` when it is unset or blank; a clear error when it does not parse."""
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        return parse(raw.strip())
    except (TypeError, ValueError):
        raise ConfigError(
            f"environment variable {name}={raw!r} is not valid: expected {expected}; "
            f"fix or unset it (unset means {default!r})"
        ) from None


def _int_at_least(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(text)
        if value < low:
            raise ValueError(text)
        return value

    return parse


def _int_between(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(text)
        if not low <= value <= high:
            raise ValueError(text)
        return value

    return parse


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0 or value == float("inf"):
        raise ValueError(text)
    return value


def _seconds_up_to_a_day(text: str) -> float:
    value = _positive_float(text)
    if value > 86_400:  # timedelta and the scheduler overflow far above; a day between retries is plenty
        raise ValueError(text)
    return value


def _absolute_dir(text: str) -> Path:
    """An absolute path that is a directory or does not exist yet (a relative one would depend on the worker's
    current directory; an existing file cannot hold files)."""
    path = Path(text)
    if not path.is_absolute() or (path.exists() and not path.is_dir()):
        raise ValueError(text)
    return path


def _state_url(text: str) -> str:
    """A directory, or an fsspec URL whose protocol fsspec knows (and whose package is installed)."""
    if "://" in text:
        import fsspec

        try:
            fsspec.get_filesystem_class(text.split("://", 1)[0])
        except ImportError as exc:  # e.g. s3fs not installed
            raise ValueError(str(exc)) from None
    return text


def airflow_home() -> Path:
    """$AIRFLOW_HOME as Airflow itself defaults it (~/airflow)."""
    return Path(os.environ.get("AIRFLOW_HOME") or Path.home() / "airflow")


def config_path() -> Path:
    """The pipeline configuration file in force."""
    return _read(CONFIG, DEFAULT_CONFIG_PATH, Path, "the path of the YAML configuration file")


def work_dir() -> Path:
    """Base directory of the private scratch directories (give it ~3x the largest export)."""
    return _read(WORK_DIR, Path(tempfile.gettempdir()), _absolute_dir, "an absolute directory path (not a file)")


def quarantine_dir() -> Path:
    """Where rejected rows are kept for review."""
    return _read(QUARANTINE_DIR, airflow_home() / "braze_lytics" / "quarantine", _absolute_dir,
                 "an absolute directory path (not a file)")


def quarantine_url() -> str | None:
    """Where rejected rows are kept when they must be shared by workers on several hosts (e.g.
    ``s3://<conn_id>@bucket/quarantine``); None: in :func:`quarantine_dir` on the worker."""
    return _read(QUARANTINE_URL, None, _state_url,
                 "a directory path or an fsspec URL such as s3://<conn_id>@bucket/quarantine (a protocol fsspec "
                 "knows, with its package installed)")


def default_state_url() -> str:
    """The audience pipeline's state store when the configuration names no `state_url`."""
    return _read(STATE_URL, str(airflow_home() / "braze_lytics" / "state"), _state_url,
                 "a directory path or an fsspec URL such as s3://bucket/prefix (a protocol fsspec knows, "
                 "with its package installed)")


def shape_workers() -> int:
    """Processes shaping one export (zip members are split between them)."""
    return _read(SHAPE_WORKERS, min(2, os.cpu_count() or 1), _int_at_least(1), "a whole number >= 1")


def native_shaping() -> bool:
    """Whether NDJSON records may be shaped by the native row writer (when it is built); 0 turns it
    off (the Python path writes the same bytes, ~3x slower)."""
    return _read(NATIVE_SHAPING, True, _switch, "1 (on) or 0 (off)")


def _switch(text: str) -> bool:
    if text.strip() not in ("0", "1"):
        raise ValueError(text)
    return text.strip() == "1"


def task_retries() -> int:
    """Airflow retries of every task (transient failures; permanent ones fail at once)."""
    return _read(TASK_RETRIES, 3, _int_between(0, 100), "a whole number from 0 to 100")


def retry_delay_seconds() -> float:
    """Delay before a task's first retry; later retries back off exponentially."""
    return _read(RETRY_DELAY_SECONDS, 120.0, _seconds_up_to_a_day, "a number of seconds > 0 (at most 86400)")


def _schedule(text: str) -> str | None:
    """A cron expression or preset; `none` (or `manual`) = no schedule: manual and backfill runs only.

    Checked here, as Airflow checks it (croniter), so a typo fails naming the variable, not as a bare
    "AirflowTimetableInvalid" in the DAG's import error.
    """
    text = text.strip()
    if not text:
        raise ValueError("empty")
    if text.lower() in ("none", "manual"):
        return None
    if text in ("@once", "@continuous", "@hourly", "@daily", "@weekly", "@monthly", "@quarterly", "@yearly"):
        return text  # Airflow's presets (croniter does not know @quarterly)
    try:
        from croniter import croniter
    except ImportError:  # pragma: no cover - Airflow depends on croniter
        return text
    try:
        croniter(text)
    except Exception as exc:  # CroniterBadCronError and friends: not a schedule Airflow can use
        raise ValueError(str(exc)) from None
    return text


def segments_schedule() -> str | None:
    """Schedule of `braze_segments_to_lytics` (cron expression or preset; `none`: manual runs only)."""
    return _read(SEGMENTS_SCHEDULE, "@daily", _schedule,
                 "a cron expression (e.g. '0 3 * * *'), a preset like @daily, or none")


def audiences_schedule() -> str | None:
    """Schedule of `lytics_audiences_to_braze` (cron expression or preset; `none`: manual runs only)."""
    return _read(AUDIENCES_SCHEDULE, "@hourly", _schedule,
                 "a cron expression (e.g. '*/30 * * * *'), a preset like @hourly, or none")


def lytics_api_token() -> str | None:
    """The Lytics API token of the webhook kit's command run outside Airflow (never a command-line argument)."""
    raw = os.environ.get(LYTICS_API_TOKEN)
    return raw.strip() if raw and raw.strip() else None
