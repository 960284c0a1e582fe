"""Hooks turn Airflow Connections (given as AIRFLOW_CONN_<ID> JSON) into core clients/settings."""

from __future__ import annotations

import json

import pytest

from braze_lytics.hooks.braze import BrazeHook, braze_base_url
from braze_lytics.hooks.pgp_key import PgpKeyHook
from braze_lytics.hooks.sftp_target import SftpTargetHook
from include.common.errors import ConfigError

pytestmark = pytest.mark.airflow


@pytest.mark.parametrize(
    ("host", "schema", "port", "url"),
    [
        ("https://rest.iad-01.braze.com/", None, None, "https://rest.iad-01.braze.com"),
        ("rest.fra-01.braze.eu", None, None, "https://rest.fra-01.braze.eu"),
        ("127.0.0.1", "http", 8181, "http://127.0.0.1:8181"),
    ],
)
def test_braze_endpoint_from_connection_fields(host, schema, port, url):
    assert braze_base_url(host, schema, port) == url


def test_braze_hook_builds_an_authenticated_client(monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_BRAZE_EU", json.dumps(
        {"conn_type": "http", "host": "https://rest.fra-01.braze.eu", "password": "k-123"}))
    client = BrazeHook("braze_eu").get_conn()
    assert client.base_url == "https://rest.fra-01.braze.eu"
    assert client.session.headers["Authorization"] == "Bearer k-123"


def test_braze_hook_without_key_says_where_to_put_it(monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_BRAZE_NOKEY", json.dumps({"conn_type": "http", "host": "https://x"}))
    with pytest.raises(ConfigError, match="put the Braze REST API key there"):
        BrazeHook("braze_nokey").get_conn()


def test_sftp_hook_reads_key_host_key_and_flags(monkeypatch, tmp_path):
    key_file = tmp_path / "id"
    key_file.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n-----END OPENSSH PRIVATE KEY-----\n")
    monkeypatch.setenv("AIRFLOW_CONN_LYTICS_SFTP", json.dumps({
        "conn_type": "sftp", "host": "sftp.example.com", "port": 2222, "login": "lytics",
        "extra": {"key_file": str(key_file), "host_key": "ssh-ed25519 AAAA", "conn_timeout": "12"}}))
    s = SftpTargetHook().get_settings()
    assert (s.host, s.port, s.username, s.host_key, s.timeout, s.no_host_key_check) == \
        ("sftp.example.com", 2222, "lytics", "ssh-ed25519 AAAA", 12.0, False)
    assert s.private_key.startswith("-----BEGIN OPENSSH") and s.name == "lytics_sftp"
    assert "abc" not in repr(s)  # secrets stay out of reprs (and so out of logs)


@pytest.mark.parametrize(("flag", "expected"), [("true", True), (True, True), ("false", False), ("0", False)])
def test_sftp_hook_no_host_key_check_must_be_explicit(monkeypatch, flag, expected):
    monkeypatch.setenv("AIRFLOW_CONN_S", json.dumps({"conn_type": "sftp", "host": "h", "login": "u", "password": "p",
                                                      "extra": {"no_host_key_check": flag}}))
    assert SftpTargetHook("s").get_settings().no_host_key_check is expected


def test_sftp_hook_without_any_credential_is_a_config_error(monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_S2", json.dumps({"conn_type": "sftp", "host": "h", "login": "u"}))
    with pytest.raises(ConfigError, match="neither a password nor a private_key"):
        SftpTargetHook("s2").get_settings()


def test_pgp_hook_reads_armored_keys_and_passphrase(monkeypatch):
    armored = "-----BEGIN PGP PUBLIC KEY BLOCK-----\nxyz\n-----END PGP PUBLIC KEY BLOCK-----"
    monkeypatch.setenv("AIRFLOW_CONN_LYTICS_PGP", json.dumps({"conn_type": "generic", "password": "pp",
                                                               "extra": {"public_key": armored}}))
    key = PgpKeyHook("lytics_pgp").get_public_key()
    assert (key.key, key.passphrase, key.source) == (armored, "pp", "connection 'lytics_pgp'")
    with pytest.raises(ConfigError, match="no ASCII-armored extra 'private_key'.*--export-secret-keys"):
        PgpKeyHook("lytics_pgp").get_private_key()
