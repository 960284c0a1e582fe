"""`s3://<conn_id>@bucket/prefix` state stores: credentials and endpoint from an Airflow connection,
against a real S3 API server (moto, server mode) on loopback, with no AWS_* / FSSPEC_* in the env."""

from __future__ import annotations

import json

import pytest

from include.common.errors import ConfigError

pytestmark = pytest.mark.airflow


@pytest.fixture
def store_conn(monkeypatch, s3_bucket):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3",
                 "FSSPEC_S3_ENDPOINT_URL", "FSSPEC_S3_KEY", "FSSPEC_S3_SECRET"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AIRFLOW_CONN_STATE_S3", json.dumps({
        "conn_type": "aws", "login": s3_bucket.access_key, "password": s3_bucket.secret_key,
        "extra": {"endpoint_url": s3_bucket.endpoint_url, "region_name": s3_bucket.region}}))
    return s3_bucket


@pytest.mark.parametrize(("url", "conn"), [
    ("s3://state_s3@bucket/prefix", "state_s3"), ("s3://bucket/prefix", None), ("/var/state", None),
    ("gs://gcp@b/p", "gcp"), ("s3://@bucket/p", None),
])
def test_the_connection_is_read_from_the_url(url, conn):
    from braze_lytics.hooks.state_store import connection_of

    assert connection_of(url) == conn


def test_state_written_through_the_connection_lands_in_its_bucket(airflow_db, store_conn):
    from braze_lytics.hooks.state_store import open_state_store

    store = open_state_store(f"s3://state_s3@{store_conn.name}/lytics")
    store.write_json("audiences/vip/committed.json", {"snapshot": "s1"})
    assert store.read_json("audiences/vip/committed.json") == {"snapshot": "s1"}
    assert store.exists("audiences/vip/committed.json")
    assert store_conn.keys("lytics/") == ["lytics/audiences/vip/committed.json"]
    assert json.loads(store_conn.get("lytics/audiences/vip/committed.json")) == {"snapshot": "s1"}
    # a second handle (another task, another process) sees the same state
    assert open_state_store(f"s3://state_s3@{store_conn.name}/lytics").read_json(
        "audiences/vip/committed.json") == {"snapshot": "s1"}


def test_an_undefined_connection_is_a_config_error_saying_what_to_create(airflow_db, store_conn):
    from braze_lytics.hooks.state_store import open_state_store

    with pytest.raises(ConfigError, match=r"names the Airflow connection 'nope', which is not defined.*Admin > "
                                          r"Connections.*BRAZE_LYTICS_STATE_URL"):
        open_state_store(f"s3://nope@{store_conn.name}/lytics")
