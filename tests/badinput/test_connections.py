"""Airflow Connections with missing or unusable fields: the hooks (plugins/braze_lytics/hooks) turn them into
`ConfigError`s naming the connection and the field to fill in, before any request is made."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pytest

from include.common.errors import ConfigError
from tests.badinput.conftest import check_error

pytestmark = pytest.mark.airflow


@dataclass(frozen=True)
class ConnCase:
    id: str
    conn: dict
    call: str  # "braze" | "braze-start" | "lytics" | "sftp" | "pgp-public" | "pgp-private"
    says: tuple[str, ...]


def use(call: str, conn_id: str) -> Any:
    from braze_lytics.hooks.braze import BrazeHook
    from braze_lytics.hooks.lytics import LyticsHook
    from braze_lytics.hooks.pgp_key import PgpKeyHook
    from braze_lytics.hooks.sftp_target import SftpTargetHook

    if call == "braze":
        return BrazeHook(conn_id).get_conn()
    if call == "braze-start":
        return BrazeHook(conn_id).get_conn().start_segment_export("seg", ["external_id"])
    if call == "lytics":
        return LyticsHook(conn_id).get_conn()
    if call == "sftp":
        return SftpTargetHook(conn_id).get_settings()
    if call == "pgp-public":
        return PgpKeyHook(conn_id).get_public_key()
    return PgpKeyHook(conn_id).get_private_key()


C = r"connection 'bad_conn'"
CASES = [
    ConnCase("conn-braze-without-host", {"conn_type": "http", "password": "k"}, "braze",
             (C, r"has no host", r"set it to your Braze REST endpoint, e\.g\. https://rest\.iad-01\.braze\.com")),
    ConnCase("conn-braze-without-key", {"conn_type": "http", "host": "https://rest.iad-01.braze.com"}, "braze",
             (C, r"has no password", r"put the Braze REST API key there")),
    ConnCase("conn-braze-host-with-spaces", {"conn_type": "http", "host": "rest iad 01 braze com", "password": "k"},
             "braze-start", (r"Braze POST", r"cannot be sent", r"Check the connection: its host must be a URL")),
    ConnCase("conn-lytics-without-token", {"conn_type": "http", "host": "https://api.lytics.io"}, "lytics",
             (C, r"has no password", r"put the Lytics API token there")),
    ConnCase("conn-lytics-bearer-token", {"conn_type": "http", "host": "https://api.lytics.io",
                                          "password": "Bearer abcdef0123456789"}, "lytics",
             (r"starts with 'Bearer '", r"store the token alone")),
    ConnCase("conn-sftp-without-login", {"conn_type": "sftp", "host": "sftp.example.com", "password": "p"}, "sftp",
             (C, r"needs a host and a login")),
    ConnCase("conn-sftp-without-credentials", {"conn_type": "sftp", "host": "sftp.example.com", "login": "u"}, "sftp",
             (C, r"has neither a password nor a private_key/key_file extra")),
    ConnCase("conn-sftp-key-file-missing", {"conn_type": "sftp", "host": "h", "login": "u",
                                            "extra": {"key_file": "/nonexistent/id_ed25519"}}, "sftp",
             (C, r"cannot read key_file '/nonexistent/id_ed25519'")),
    ConnCase("conn-pgp-public-key-missing", {"conn_type": "generic", "extra": {}}, "pgp-public",
             (C, r"has no ASCII-armored extra 'public_key'", r"gpg --armor --export KEYID")),
    ConnCase("conn-pgp-public-key-not-armored", {"conn_type": "generic", "extra": {"public_key": "mQINBGX..."}},
             "pgp-public", (C, r"no ASCII-armored extra 'public_key'",)),
    ConnCase("conn-pgp-private-key-missing", {"conn_type": "generic", "password": "pp",
                                              "extra": {"public_key": "-----BEGIN PGP PUBLIC KEY BLOCK-----"}},
             "pgp-private", (C, r"no ASCII-armored extra 'private_key'", r"--export-secret-keys")),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_connection_names_the_connection_and_the_field(case: ConnCase, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_BAD_CONN", json.dumps(case.conn))
    with pytest.raises(Exception) as err:
        use(case.call, "bad_conn")
    check_error(err.value, ConfigError, case.says, secrets=("abcdef0123456789",))


def test_an_undefined_connection_is_airflows_not_found_error_naming_it():
    """Pinned: Airflow's own error (it names the id); the task's retries then run out, see docs/bad-input.md."""
    from airflow.sdk.exceptions import AirflowNotFoundException

    with pytest.raises(AirflowNotFoundException, match="never_defined"):
        use("sftp", "never_defined")


@pytest.mark.parametrize("timeout", ["soon", -5, "nan", 1e9])
def test_a_bad_sftp_timeout_is_a_config_error_naming_the_connection(monkeypatch, timeout):
    monkeypatch.setenv("AIRFLOW_CONN_BAD_CONN", json.dumps({"conn_type": "sftp", "host": "h", "login": "u",
                                                            "password": "p", "extra": {"conn_timeout": timeout}}))
    with pytest.raises(Exception) as err:
        use("sftp", "bad_conn")
    check_error(err.value, ConfigError, (r"'bad_conn'", r"conn_timeout", r"Admin > Connections"))
