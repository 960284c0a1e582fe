"""PgpKeyHook: a Connection holding a PGP key -> core PgpKey.

Connection (any type, e.g. ``generic``): extra ``public_key`` (ASCII-armored; Lytics' key,
for encrypting deliveries) or extra ``private_key`` (ASCII-armored; for decrypting Braze
drops) with its passphrase in ``password``. Airflow masks both extras in logs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseHook

if TYPE_CHECKING:
    from include.clients.pgp.files import PgpKey


class PgpKeyHook(BaseHook):
    conn_name_attr = "pgp_conn_id"
    default_conn_name = "lytics_pgp"
    conn_type = "generic"
    hook_name = "PGP key"

    def __init__(self, pgp_conn_id: str = default_conn_name, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.pgp_conn_id = pgp_conn_id

    def _key(self, extra_name: str) -> PgpKey:
        from include.clients.pgp.files import PgpKey
        from include.common.errors import ConfigError

        conn = self.get_connection(self.pgp_conn_id)
        key = conn.extra_dejson.get(extra_name)
        if not key or "BEGIN PGP" not in key:
            raise ConfigError(
                f"connection {self.pgp_conn_id!r} has no ASCII-armored extra {extra_name!r} "
                f"('-----BEGIN PGP ...' text); export it with `gpg --armor --export{'-secret-keys' if extra_name == 'private_key' else ''} KEYID`"
            )
        return PgpKey(key=key, passphrase=conn.password or None, source=f"connection {self.pgp_conn_id!r}")

    def get_public_key(self) -> PgpKey:
        return self._key("public_key")

    def get_private_key(self) -> PgpKey:
        return self._key("private_key")
