"""Typed errors of the core, split by what the on-call person should do about them.

`TransientError` means "try again later" (Airflow retries the task with backoff);
`PermanentError` means "a retry will fail the same way: fix something first", so the
Airflow glue turns it into a fail-fast task failure. Every message says what failed, where,
and how to fix it.
"""


class BrazeLyticsError(Exception):
    """Base class of every error this project raises on purpose."""


class TransientError(BrazeLyticsError):
    """A failure that may pass on its own: 429, 5xx, timeouts, dropped connections."""


class PermanentError(BrazeLyticsError):
    """A failure that a retry cannot fix: bad credentials, unknown ids, bad config, bad data."""


class ConfigError(PermanentError):
    """The pipeline configuration file (or a Connection) is invalid."""


class AuthError(PermanentError):
    """The remote side refused our credentials (401/403) or host key."""


class NotFoundError(PermanentError):
    """The remote side says the thing we asked for does not exist (404, unknown segment)."""


class RejectedRowsError(PermanentError):
    """Too many input rows were rejected; the output was not delivered."""


class StorageError(PermanentError):
    """A place the project writes to cannot take the write (read-only filesystem, full disk or quota, no
    permission); the message names the setting that points there (e.g. BRAZE_LYTICS_QUARANTINE_DIR)."""


class RetryAfterError(TransientError):
    """A transient failure for which the server said how long to wait (seconds)."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after
