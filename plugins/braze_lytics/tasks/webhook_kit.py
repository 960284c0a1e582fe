"""Task body of `lytics_webhook_kit`, and the connection lookup the command's --conn-id uses.

    kit_settings  -> the Lytics Connection (host, password = token, extra account_id) -> KitSettings
    webhook_kit   -> include.webhook_kit.kit: render (key masked) + optional test event (PASS/FAIL)

Nothing heavy is imported at module level: the DAG file imports this module at parse time.
"""

from __future__ import annotations

import logging

from braze_lytics.failures import fail_fast_on_permanent_errors

log = logging.getLogger(__name__)

LYTICS_CONN_ID = "lytics_default"
ACCOUNT_EXTRA = "account_id"


def kit_settings(conn_id: str = LYTICS_CONN_ID, *, stream: str | None = None):
    """:class:`~include.webhook_kit.kit.KitSettings` from an Airflow connection (ConfigError when unusable).

    Connection (type ``http``, as for ``LyticsHook``): ``host`` = API base URL (default
    https://api.lytics.io), ``password`` = API token, extra ``{"account_id": "<ACCOUNT-NUMBER>"}``
    (Lytics' account number from Account Settings, the ``/c/<ACCOUNT-NUMBER>/`` of the webhook URL).
    """
    from airflow.sdk import BaseHook
    from airflow.sdk.exceptions import AirflowNotFoundException

    from braze_lytics.hooks.braze import checked_endpoint
    from include.clients.lytics.collect import BRAZE_USERS_STREAM, DEFAULT_BASE_URL
    from include.common.errors import ConfigError
    from include.webhook_kit.kit import KitSettings

    try:
        conn = BaseHook.get_connection(conn_id)
    except AirflowNotFoundException:
        raise ConfigError(f"Airflow has no connection {conn_id!r}; create it (type http): host = Lytics API base URL, "
                          f"password = API token, extra {{\"{ACCOUNT_EXTRA}\": \"<ACCOUNT-NUMBER>\"}}") from None
    where = f"connection {conn_id!r}"
    if not conn.password:
        raise ConfigError(f"{where} has no password; put the Lytics API token there")
    extra = conn.extra_dejson if isinstance(conn.extra_dejson, dict) else {}
    account = extra.get(ACCOUNT_EXTRA)
    if account in (None, ""):
        raise ConfigError(f"{where} has no extra {ACCOUNT_EXTRA!r}; add {{\"{ACCOUNT_EXTRA}\": \"<ACCOUNT-NUMBER>\"}} "
                          f"(Lytics: Account Settings, the number in /c/<ACCOUNT-NUMBER>/)")
    base = checked_endpoint(conn, conn_id, "Lytics API", default_host=DEFAULT_BASE_URL)  # no token over plain http
    try:
        return KitSettings(base, str(account), conn.password, stream or BRAZE_USERS_STREAM,
                           source=f"Airflow {where}")
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def webhook_kit(params: dict, context) -> dict:
    """Log the Braze webhook set-up (key masked), send the test event when asked; the summary (XCom).

    A failed test event fails the task at once (no retry: the reason says what to fix).
    """
    from airflow.sdk.exceptions import AirflowFailException

    from braze_lytics.trigger_forms import refuse_unknown_conf
    from include.webhook_kit import template
    from include.webhook_kit.kit import render, send_test_event

    with fail_fast_on_permanent_errors():
        refuse_unknown_conf(context)
        settings = kit_settings(LYTICS_CONN_ID)
    outcome = send_test_event(settings) if params.get("send_test_event") else None
    log.info("Braze webhook set-up for Lytics:\n%s", render(settings, show_key=False, outcome=outcome))
    if outcome is not None and not outcome.passed:
        raise AirflowFailException(f"Test event {outcome.line()}  [not retried: fix the cause, then trigger again]")
    if outcome is not None:
        log.info("Test event %s", outcome.line())
    return {
        "webhook_url": settings.masked_url(),  # the key masked: XCom is readable by every UI user
        "http_method": template.HTTP_METHOD,
        "headers": dict(template.HEADERS),
        "body_template": template.body_template(),
        "test_event": outcome.to_dict() if outcome is not None else None,
    }
