"""WebhookFailureNotifier: a task failure -> one Slack-compatible JSON POST, when a connection says where.

The connection (default id ``braze_lytics_alerts``, type ``http``) gives the webhook:

* ``password`` = the whole webhook URL (``https://hooks.slack.com/services/T…/B…/…``): for Slack
  and every webhook whose URL *is* the secret. The password field is masked everywhere in Airflow.
* otherwise ``host`` (a full URL, or a host name with ``schema`` = http/https and ``port``) plus
  the extra ``path``; then ``login`` + ``password`` are sent as basic auth, a ``password`` alone
  as ``Authorization: Bearer <password>``.
* extra ``timeout``: seconds per attempt (default 10, at most 30).

Sent with the standard library (``urllib.request``): no dependency, nothing logged on the way.

Never in the way of the pipeline: no connection -> one info line, nothing sent; a webhook that
fails (connection error, timeout, 4xx/5xx) -> a warning in the task log, never an exception out of
the callback. At most one retry (connection refused/reset, 429, 5xx; not a read timeout, which may
have been delivered), so a dead receiver costs at most ~2 x timeout + 5 s. The URL is registered
with Airflow's secrets masker and never logged (the log names the scheme and host only).
See docs/notifications.md.
"""

from __future__ import annotations

import base64
import json
import time
import urllib.request
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from airflow.sdk.bases.notifier import BaseNotifier

DEFAULT_CONN_ID = "braze_lytics_alerts"
DEFAULT_TIMEOUT_SECONDS = 10.0
MAX_TIMEOUT_SECONDS = 30.0
MAX_RETRY_WAIT_SECONDS = 5.0


class WebhookConfigError(ValueError):
    """The connection exists but does not name a usable webhook (the message never holds the URL)."""


@dataclass(frozen=True)
class Webhook:
    url: str = field(repr=False)  # secret: never printed
    headers: dict = field(default_factory=dict, repr=False)
    auth: tuple[str, str] | None = field(default=None, repr=False)
    timeout: float = DEFAULT_TIMEOUT_SECONDS

    @property
    def where(self) -> str:
        """What the log may say about the destination: scheme and host, nothing of the path."""
        parts = urlsplit(self.url)
        return f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}/…"


def webhook_from_connection(conn: Any) -> Webhook:
    """The webhook a connection describes (see the module docstring)."""
    extra = _extra(conn)
    timeout = _timeout(extra.get("timeout"))
    password = (conn.password or "").strip()
    if "://" in password:
        url, headers, auth = password, {}, None
    else:
        host = (conn.host or "").strip()
        if not host:
            raise WebhookConfigError(
                f"connection {conn.conn_id!r} has neither a webhook URL in its password nor a host")
        if "://" in host:
            url = host
        else:
            url = f"{conn.schema or 'https'}://{host}{f':{conn.port}' if conn.port else ''}"
        path = str(extra.get("path") or "").strip()
        if path:
            url = url.rstrip("/") + "/" + path.lstrip("/")
        headers, auth = {}, None
        if password and conn.login:
            auth = (conn.login, password)
        elif password:
            headers = {"Authorization": f"Bearer {password}"}
    try:
        parts = urlsplit(url)
        usable = parts.scheme in ("http", "https") and bool(parts.hostname) and (parts.port or 0) >= 0
    except ValueError:  # e.g. a port that is not a number; its message would quote part of the URL
        usable = False
    if not usable:
        raise WebhookConfigError(f"connection {conn.conn_id!r} does not hold a valid http(s) webhook URL")
    return Webhook(url=url, headers=headers, auth=auth, timeout=timeout)


def _extra(conn: Any) -> dict:
    try:
        extra = conn.extra_dejson
    except Exception:
        return {}
    return extra if isinstance(extra, dict) else {}


def _timeout(value: Any) -> float:
    try:
        seconds = float(value) if value not in (None, "") else DEFAULT_TIMEOUT_SECONDS
    except (TypeError, ValueError):
        return DEFAULT_TIMEOUT_SECONDS
    return min(MAX_TIMEOUT_SECONDS, seconds) if seconds > 0 else DEFAULT_TIMEOUT_SECONDS


def mask_webhook(hook: Webhook) -> None:
    """Register the URL (and its path, which is the token of a Slack URL) with the secrets masker."""
    from airflow.sdk.log import mask_secret

    mask_secret(hook.url)
    parts = urlsplit(hook.url)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    if len(path.strip("/")) >= 8:
        mask_secret(path)


@dataclass(frozen=True)
class Outcome:
    delivered: bool
    attempts: int
    detail: str  # safe to log: status code / exception type, never the URL


def post(hook: Webhook, payload: dict, *, sleep=time.sleep) -> Outcome:
    """POST `payload` as JSON; one retry for a refused/reset connection, 429 or 5xx. Never raises.

    Plain `urllib.request` on purpose: nothing is logged on the way (urllib3 logs every request
    line, path included, at DEBUG - and the path of a Slack URL is its secret), no redirect is
    followed, and the environment's HTTP(S)_PROXY / NO_PROXY are honoured.
    """
    import urllib.error

    body = json.dumps(payload).encode()
    headers = {"Content-Type": "application/json; charset=utf-8", "User-Agent": "braze-lytics-airflow-notifier",
               **hook.headers}
    if hook.auth:
        headers["Authorization"] = "Basic " + base64.b64encode(":".join(hook.auth).encode()).decode()
    opener = urllib.request.build_opener(_NoRedirect())
    detail = "not attempted"
    for attempt in (1, 2):
        wait = 1.0
        request = urllib.request.Request(hook.url, data=body, headers=headers, method="POST")
        try:
            with opener.open(request, timeout=hook.timeout) as resp:
                resp.read(64 * 1024)
                return Outcome(True, attempt, f"HTTP {resp.status}")
        except urllib.error.HTTPError as err:  # any non-2xx answer (redirects are not followed)
            code = err.code
            detail = f"HTTP {code}{_body_excerpt(err)}"
            if not (code == 429 or code >= 500):
                return Outcome(False, attempt, detail)  # 3xx/4xx: a wrong or revoked URL; retrying won't help
            wait = _retry_after(err.headers)
        except urllib.error.URLError as err:  # refused, reset, DNS, connect timeout: never got through
            detail = f"ConnectionError ({type(err.reason).__name__}: could not connect)"
        except TimeoutError:
            # Sent, and no answer in time: the receiver may have delivered it, so no retry.
            return Outcome(False, attempt, f"no answer within {hook.timeout:g} s (read timeout)")
        except OSError as err:  # reset while reading the answer, etc.
            detail = f"ConnectionError ({type(err).__name__}: the connection dropped)"
        except Exception as err:  # anything else: its text may quote the URL, so only the type
            return Outcome(False, attempt, type(err).__name__)
        if attempt == 1:
            sleep(wait)
    return Outcome(False, 2, detail)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):  # a redirected webhook is a misconfigured one
        return None


def _retry_after(headers: Any) -> float:
    try:
        return max(0.0, min(MAX_RETRY_WAIT_SECONDS, float((headers or {}).get("Retry-After") or 1.0)))
    except (TypeError, ValueError):
        return 1.0


def _body_excerpt(err: Any) -> str:
    from airflow.sdk.log import redact

    try:
        text = " ".join(err.read(2048).decode("utf-8", "replace").split())[:200]
    except Exception:
        return ""
    return f" ({redact(text)})" if text else ""


class WebhookFailureNotifier(BaseNotifier):
    """`on_failure_callback` posting the failure to a webhook (Slack-compatible JSON).

    :param conn_id: the connection naming the webhook; when it does not exist nothing is sent.
    :param base_url: the Airflow UI's URL for the log link; default ``[api] base_url``.

    Example::

        default_args = {"on_failure_callback": WebhookFailureNotifier()}
    """

    template_fields = ()  # nothing rendered: one instance serves every task of a DAG

    def __init__(self, conn_id: str = DEFAULT_CONN_ID, *, base_url: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.conn_id = conn_id
        self.base_url = base_url

    def notify(self, context: Any) -> None:
        try:
            self._notify(context)
        except Exception as exc:  # a notification must never turn into a second failure
            from airflow.sdk.log import redact

            self.log.warning("Failure notification not sent (%s: %s)", type(exc).__name__, redact(str(exc)))

    def _notify(self, context: Any) -> None:
        from braze_lytics.notifiers.message import failed_task_from_context, log_url, slack_payload

        conn = self._connection()
        if conn is None:
            return
        try:
            hook = webhook_from_connection(conn)
        except WebhookConfigError as exc:
            self.log.warning("Failure notification not sent: %s (see docs/notifications.md)", exc)
            return
        mask_webhook(hook)
        task = failed_task_from_context(context)
        payload = slack_payload(task, log_url(self._base_url(), task))
        outcome = post(hook, payload)
        if outcome.delivered:
            self.log.info("Failure notification sent to %s via connection %r (%s, attempt %d)",
                          hook.where, self.conn_id, outcome.detail, outcome.attempts)
        else:
            self.log.warning("Failure notification to %s via connection %r not delivered after %d attempt(s): %s",
                             hook.where, self.conn_id, outcome.attempts, outcome.detail)

    def _connection(self) -> Any | None:
        from airflow.sdk import BaseHook
        from airflow.sdk.exceptions import AirflowNotFoundException

        try:
            return BaseHook.get_connection(self.conn_id)
        except AirflowNotFoundException:
            self.log.info("Failure notification skipped: no connection %r is configured (see docs/notifications.md)",
                          self.conn_id)
            return None

    def _base_url(self) -> str | None:
        if self.base_url:
            return self.base_url
        from airflow.sdk.configuration import conf

        return conf.get("api", "base_url", fallback=None)


def send_test_notification(conn_id: str = DEFAULT_CONN_ID) -> None:
    """Post a made-up failure through `conn_id`, to check a new connection (the log line says how it went)::

        python -c "from braze_lytics.notifiers import send_test_notification; send_test_notification()"
    """
    from types import SimpleNamespace

    ti = SimpleNamespace(dag_id="braze_lytics_notification_check", task_id="test_message", run_id="manual",
                         map_index=-1, rendered_map_index=None, try_number=1)
    error = RuntimeError("This is a test of the failure notification: nothing failed.")
    WebhookFailureNotifier(conn_id)({"ti": ti, "exception": error})
