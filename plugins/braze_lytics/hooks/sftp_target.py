"""SftpTargetHook: an SFTP Connection (e.g. `lytics_sftp`) -> core SftpSettings.

Host keys are pinned, never learned: the extra ``host_key`` ("ssh-ed25519 AAAA...", as
printed by ``ssh-keyscan``) must match, and an unknown or changed key is refused unless the
Connection explicitly sets ``"no_host_key_check": true``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseHook

if TYPE_CHECKING:
    from include.clients.sftp import SftpSettings

_TRUE = {"true", "1", "yes", "on"}


def _flag(value: Any) -> bool:
    return value is True or str(value).strip().lower() in _TRUE


class SftpTargetHook(BaseHook):
    """SFTP access (Lytics' import server, or an inbound drop folder) from an Airflow Connection.

    Connection (type ``sftp``): ``host``, ``port`` (default 22), ``login``, and ``password``
    or extra ``private_key`` (OpenSSH/PEM text; or ``key_file``, a path) with optional
    ``private_key_passphrase``; extra ``host_key`` pins the server key; ``conn_timeout``
    (seconds, default 30).

    Example::

        AIRFLOW_CONN_LYTICS_SFTP='{"conn_type": "sftp", "host": "sftp.example.com", "login": "lytics",
          "extra": {"private_key": "-----BEGIN OPENSSH PRIVATE KEY-----...", "host_key": "ssh-ed25519 AAAA..."}}'
    """

    conn_name_attr = "sftp_conn_id"
    default_conn_name = "lytics_sftp"
    conn_type = "sftp"
    hook_name = "Lytics SFTP"

    def __init__(self, sftp_conn_id: str = default_conn_name, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.sftp_conn_id = sftp_conn_id

    def get_settings(self) -> SftpSettings:
        from include.clients.sftp import SftpSettings
        from include.common.errors import ConfigError

        conn = self.get_connection(self.sftp_conn_id)
        extra = conn.extra_dejson
        name = self.sftp_conn_id
        if not conn.host or not conn.login:
            raise ConfigError(f"connection {name!r} needs a host and a login (the SFTP user)")
        private_key = extra.get("private_key")
        if not private_key and extra.get("key_file"):
            try:
                private_key = Path(extra["key_file"]).read_text()
            except OSError as exc:
                raise ConfigError(f"connection {name!r}: cannot read key_file {extra['key_file']!r}: {exc}") from None
        if not private_key and not conn.password:
            raise ConfigError(f"connection {name!r} has neither a password nor a private_key/key_file extra")
        return SftpSettings(
            host=conn.host,
            port=int(conn.port or 22),
            username=conn.login,
            password=conn.password or None,
            private_key=private_key or None,
            private_key_passphrase=extra.get("private_key_passphrase") or None,
            host_key=extra.get("host_key") or None,
            no_host_key_check=_flag(extra.get("no_host_key_check", False)),
            timeout=_timeout(extra.get("conn_timeout"), name),
            name=name,
        )


def _timeout(value: Any, name: str) -> float:
    """The extra's ``conn_timeout`` in seconds (default 30), or a ConfigError saying what to write."""
    from include.common.errors import ConfigError

    if value in (None, ""):
        return 30.0
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = float("nan")
    if not 0 < seconds <= 3600:  # also false for NaN
        raise ConfigError(f"connection {name!r}: extra conn_timeout must be a number of seconds between 0 and "
                          f"3600, got {str(value)[:40]!r}; fix it in Admin > Connections (or remove it for 30 s)")
    return seconds
