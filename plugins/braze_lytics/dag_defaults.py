"""Settings every DAG of this project shares (read at parse time from the environment only)."""

from __future__ import annotations

import os
from datetime import timedelta


def default_args() -> dict:
    """Retries with exponential backoff for transient failures (permanent ones fail fast anyway)."""
    return {
        "retries": int(os.environ.get("BRAZE_LYTICS_TASK_RETRIES", "3")),
        "retry_delay": timedelta(seconds=float(os.environ.get("BRAZE_LYTICS_RETRY_DELAY_SECONDS", "120"))),
        "retry_exponential_backoff": True,
        "max_retry_delay": timedelta(minutes=30),
    }
