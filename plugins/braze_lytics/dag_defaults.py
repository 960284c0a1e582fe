"""Settings every DAG of this project shares (read at parse time, from include.common.settings)."""

from __future__ import annotations

from datetime import timedelta

from braze_lytics.notifiers import WebhookFailureNotifier
from include.common import settings

# A ceiling for tasks that set no execution_timeout of their own: above the longest legitimate
# run of any of them (a multi-million-member Lytics audience scan takes hours), so it only stops a
# task that hangs. Tasks known to be long set their own (transfer 6 h, deliver_chunk 4 h,
# check_drift 3 h). It bounds each try, not a sensor's total wait or an approval's wait for an
# answer (those have `export_timeout_minutes` / `approval_timeout_hours`).
DEFAULT_EXECUTION_TIMEOUT = timedelta(hours=6)


def default_args() -> dict:
    """Retries with exponential backoff for transient failures (permanent ones fail fast anyway),
    a per-try execution timeout, and a failure notification to the `braze_lytics_alerts` webhook
    (sent only when that connection exists: docs/notifications.md)."""
    return {
        "retries": settings.task_retries(),
        "retry_delay": timedelta(seconds=settings.retry_delay_seconds()),
        "retry_exponential_backoff": True,
        "max_retry_delay": timedelta(minutes=30),
        "execution_timeout": DEFAULT_EXECUTION_TIMEOUT,
        "on_failure_callback": WebhookFailureNotifier(),
    }
