"""Settings every DAG of this project shares (read at parse time, from include.common.settings)."""

from __future__ import annotations

from datetime import timedelta

from include.common import settings


def default_args() -> dict:
    """Retries with exponential backoff for transient failures (permanent ones fail fast anyway)."""
    return {
        "retries": settings.task_retries(),
        "retry_delay": timedelta(seconds=settings.retry_delay_seconds()),
        "retry_exponential_backoff": True,
        "max_retry_delay": timedelta(minutes=30),
    }
