"""The audience pipeline's state store, with object-store credentials from an Airflow Connection.

A `state_url` (or `BRAZE_LYTICS_STATE_URL`) may name a connection the way Airflow's object storage
does: ``s3://<conn_id>@bucket/prefix`` (``gs://``/``abfs://`` likewise, with their providers).
``ObjectStoragePath`` then turns the connection (type ``aws``: ``login`` = access key id,
``password`` = secret key, extra ``endpoint_url`` for S3-compatible servers) into the filesystem,
so every worker reaches the shared state with the deployment's credentials and nothing is read
from ``AWS_*`` variables. A URL without ``<conn_id>@`` (a local directory, ``s3://bucket/prefix``)
is opened as before, with credentials from the environment (instance role, ``AWS_*``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from include.clients.state_store import StateStore


def connection_of(url: str) -> str | None:
    """The connection id in ``scheme://<conn_id>@bucket/...``, else None."""
    if "://" not in url:
        return None
    netloc = url.split("://", 1)[1].split("/", 1)[0]
    return netloc.rsplit("@", 1)[0] or None if "@" in netloc else None


def open_state_store(url: str, **options) -> StateStore:
    """`options` go to StateStore (e.g. `setting`: the variable named in its messages)."""
    from include.clients.state_store import StateStore
    from include.common.errors import ConfigError

    conn_id = connection_of(url)
    if conn_id is None:
        return StateStore(url, **options)
    from airflow.sdk import BaseHook, ObjectStoragePath
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        BaseHook.get_connection(conn_id)  # the providers' filesystems fall back to anonymous access without it
        path = ObjectStoragePath(url)
        filesystem = path.fs
    except AirflowNotFoundException:
        raise ConfigError(f"the state store {url!r} names the Airflow connection {conn_id!r}, which is not defined: "
                          "create it (Admin > Connections; for S3 type 'aws' with the access key id as login, the "
                          "secret as password and, for S3-compatible servers, extra endpoint_url) or fix "
                          f"{options.get('setting') or 'state_url / BRAZE_LYTICS_STATE_URL'}") from None
    except (ImportError, ValueError) as exc:
        raise ConfigError(f"the state store {url!r} cannot be opened through connection {conn_id!r}: {exc}") from None
    return StateStore(url, filesystem=filesystem, root=path.path, **options)
