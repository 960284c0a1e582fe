"""BrazeHook: the `braze_default` Connection -> a ready Braze client."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseHook

if TYPE_CHECKING:
    from include.clients.braze.export import BrazeExportClient
    from include.clients.braze.export_ids import BrazeExportIdsClient
    from include.clients.braze.track import BrazeTrackClient
    from include.common.rate_limit import RateLimiter


INSECURE_HTTP_EXTRA = "allow_insecure_http"


def allows_insecure_http(conn: Any) -> bool:
    """The connection's extra ``allow_insecure_http`` is explicitly true (default: false)."""
    extra = conn.extra_dejson if isinstance(getattr(conn, "extra_dejson", None), dict) else {}
    value = extra.get(INSECURE_HTTP_EXTRA, False)
    return value is True or str(value).strip().lower() in ("true", "1", "yes", "on")


def checked_endpoint(conn: Any, conn_id: str, service: str, default_host: str | None = None) -> str:
    """The connection's endpoint URL, refused (ConfigError naming the connection) when it is plain
    http:// to another machine and the connection does not set ``allow_insecure_http: true``."""
    from include.common.http import require_tls

    url = braze_base_url(conn.host or default_host, conn.schema, conn.port)
    return require_tls(url, what=f"the {service} endpoint of connection {conn_id!r}",
                       allow_insecure_http=allows_insecure_http(conn))


def braze_base_url(host: str | None, schema: str | None, port: int | None) -> str:
    """The REST endpoint from the Connection: a full URL in `host`, or schema + host + port."""
    host = (host or "").strip().rstrip("/")
    if "://" in host:
        return host
    base = f"{schema or 'https'}://{host}"
    return f"{base}:{port}" if port else base


class BrazeHook(BaseHook):
    """Braze REST API access from an Airflow Connection.

    Connection (type ``http``): ``host`` = the REST endpoint of your Braze instance, e.g.
    ``https://rest.iad-01.braze.com`` (see Braze's "API and SDK endpoints" page);
    ``password`` = a REST API key with ``users.export.segment`` (and ``users.track`` for the
    audience pipeline, ``users.export.ids`` for its drift check). Plain ``http://`` is refused
    unless the host is this machine or the extra sets ``"allow_insecure_http": true``.

    Example::

        AIRFLOW_CONN_BRAZE_DEFAULT='{"conn_type": "http", "host": "https://rest.iad-01.braze.com", "password": "<key>"}'
    """

    conn_name_attr = "braze_conn_id"
    default_conn_name = "braze_default"
    conn_type = "http"
    hook_name = "Braze"

    def __init__(self, braze_conn_id: str = default_conn_name, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.braze_conn_id = braze_conn_id

    def _endpoint_and_key(self) -> tuple[str, str]:
        from include.common.errors import ConfigError

        conn = self.get_connection(self.braze_conn_id)
        if not conn.host:
            raise ConfigError(
                f"connection {self.braze_conn_id!r} has no host; set it to your Braze REST endpoint, "
                f"e.g. https://rest.iad-01.braze.com"
            )
        if not conn.password:
            raise ConfigError(f"connection {self.braze_conn_id!r} has no password; put the Braze REST API key there")
        self._allow_insecure_http = allows_insecure_http(conn)
        return checked_endpoint(conn, self.braze_conn_id, "Braze REST"), conn.password

    def get_conn(self) -> BrazeExportClient:
        from include.clients.braze.export import BrazeExportClient

        endpoint, key = self._endpoint_and_key()
        return BrazeExportClient(endpoint, key, allow_insecure_http=self._allow_insecure_http)

    def get_track_client(self, limiter: RateLimiter, batch_limit: int = 75) -> BrazeTrackClient:
        """The /users/track client, paced by `limiter`."""
        from include.clients.braze.track import BrazeTrackClient

        return BrazeTrackClient(*self._endpoint_and_key(), limiter=limiter, batch_limit=batch_limit)

    def get_export_ids_client(self, rate_limit_per_minute: int = 250) -> BrazeExportIdsClient:
        """The /users/export/ids client (profiles read back by external id), paced at its own limit."""
        from include.clients.braze.export_ids import BrazeExportIdsClient

        return BrazeExportIdsClient(*self._endpoint_and_key(), rate_limit_per_minute=rate_limit_per_minute)
