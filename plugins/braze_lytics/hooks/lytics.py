"""LyticsHook: the `lytics_default` Connection -> a ready Lytics API client."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseHook

from braze_lytics.hooks.braze import checked_endpoint

if TYPE_CHECKING:
    from include.clients.lytics.scan import LyticsClient


class LyticsHook(BaseHook):
    """Lytics API access from an Airflow Connection.

    Connection (type ``http``): ``host`` = API base URL (``https://api.lytics.io``), ``password`` =
    an API token (sent as the raw ``Authorization`` header, as Lytics expects). Plain ``http://``
    is refused unless the host is this machine or the extra sets ``"allow_insecure_http": true``.

    Example::

        AIRFLOW_CONN_LYTICS_DEFAULT='{"conn_type": "http", "host": "https://api.lytics.io", "password": "<token>"}'
    """

    conn_name_attr = "lytics_conn_id"
    default_conn_name = "lytics_default"
    conn_type = "http"
    hook_name = "Lytics"

    def __init__(self, lytics_conn_id: str = default_conn_name, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.lytics_conn_id = lytics_conn_id

    def get_conn(self) -> LyticsClient:
        from include.clients.lytics.scan import LyticsClient
        from include.common.errors import ConfigError

        conn = self.get_connection(self.lytics_conn_id)
        if not conn.password:
            raise ConfigError(f"connection {self.lytics_conn_id!r} has no password; put the Lytics API token there")
        endpoint = checked_endpoint(conn, self.lytics_conn_id, "Lytics API", default_host="https://api.lytics.io")
        return LyticsClient(endpoint, conn.password)
