"""Map the core's typed errors onto Airflow's retry semantics.

A `PermanentError` (bad key, unknown segment, bad config, too many rejected rows) becomes
`AirflowFailException`: the task fails at once with the message, instead of burning its
retries on something only a person can fix. Everything else propagates, and the task's
`retries` with exponential backoff handle it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from airflow.sdk.exceptions import AirflowFailException


@contextlib.contextmanager
def fail_fast_on_permanent_errors() -> Iterator[None]:
    from include.common.errors import PermanentError

    try:
        yield
    except PermanentError as exc:
        raise AirflowFailException(f"{exc}  [not retried: a retry would fail the same way]") from exc
