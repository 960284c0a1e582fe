"""Braze's export callback, core: the setting, the per-export token, the records in a real local state store."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta

import pytest

from include.clients.state_store import StateStore
from include.common.errors import ConfigError
from include.segments_to_lytics import export_callback as cb
from include.segments_to_lytics.config import SegmentConfig, parse_config

SEG = {"name": "vip", "segment_id": "seg_vip", "columns": {"user_id": "external_id"}}
NOW = datetime(2026, 11, 23, 12, tzinfo=UTC)


@pytest.fixture
def store(tmp_path):
    return StateStore(str(tmp_path / "state"))


def config(defaults: dict | None = None, **segment):
    return parse_config({"defaults": defaults or {}, "segments": [{**SEG, **segment}]}, "pipeline.yaml")


def token_of(endpoint: str) -> str:
    return endpoint.rsplit("/", 1)[1]


# ---------------------------------------------------------------------------------------- setting
@pytest.mark.parametrize("url", ["https://airflow.example.com", "https://airflow.example.com:8443/base/",
                                 "http://127.0.0.1:8080", "http://localhost:8080/airflow", "http://[::1]:9"])
def test_usable_base_urls(url):
    assert cb.check_base_url(url) is None
    assert config(callback_base_url=url).segments[0].callback_base_url == url


@pytest.mark.parametrize(("url", "says"), [
    ("http://airflow.example.com", "must use https://"),
    ("ftp://airflow.example.com", "absolute https:// URL"),
    ("airflow.example.com", "absolute https:// URL"),
    ("https://", "absolute https:// URL"),
    ("https://user:hunter2secret@airflow.example.com", "must not hold credentials"),
    ("https://airflow.example.com/?x=1", "query string or fragment"),
    ("https://airflow.example.com/#top", "query string or fragment"),
    ("https://airflow.example.com/a/../b", "'..' path segments"),
    ("https://airflow.example.com:99999", "is not a URL"),
    ("", "must be the https:// base URL"),
    (42, "must be the https:// base URL"),
])
def test_unusable_base_urls_are_config_errors_naming_the_key(url, says):
    assert says in cb.check_base_url(url)
    with pytest.raises(ConfigError) as exc:
        config(callback_base_url=url)
    assert "segments[0] (vip).callback_base_url:" in str(exc.value) and says in str(exc.value)
    assert "hunter2secret" not in str(exc.value)  # credentials in a URL are not echoed


def test_the_setting_is_a_default_and_survives_xcom():
    seg = config({"callback_base_url": "https://airflow.example.com"}).segments[0]
    assert seg.callback_base_url == "https://airflow.example.com"
    assert SegmentConfig.from_dict(json.loads(json.dumps(seg.to_dict()))) == seg
    assert config().segments[0].callback_base_url is None  # off by default
    assert config({"callback_base_url": "https://a.example"}, callback_base_url=None).segments[0].callback_base_url is None
    with pytest.raises(ConfigError, match=r"defaults\.callback_base_ur: unknown key"):
        config({"callback_base_ur": "https://a.example"})


# ------------------------------------------------------------------------------------------- token
def test_each_export_gets_its_own_unguessable_token_and_only_its_digest_is_stored(store):
    requests = [cb.register(store, "https://airflow.example.com/", segment="vip", expires_in_seconds=60, now=NOW)
                for _ in range(20)]
    tokens = [token_of(r.endpoint) for r in requests]
    assert len(set(tokens)) == 20 and all(cb.TOKEN_RE.match(t) for t in tokens)  # 43 chars: 256 random bits
    first = requests[0]
    assert first.endpoint == f"https://airflow.example.com/braze-lytics/export-callback/{tokens[0]}"
    assert first.digest == cb.token_digest(tokens[0]) and re.fullmatch(r"[0-9a-f]{64}", first.digest)
    assert tokens[0] not in repr(first)  # the dataclass never prints the endpoint
    assert cb.short_id(first.digest) == f"callback {first.digest[:8]}"
    stored = b"".join(store.read_bytes(k) for k in store.list())
    assert not any(t.encode() in stored for t in tokens)  # only digests at rest
    record = store.read_json(cb.pending_key(first.digest))
    assert record["segment"] == "vip" and record["token_sha256"] == first.digest
    assert datetime.fromisoformat(record["expires_at"]) == NOW + timedelta(seconds=60) + cb.EXPIRY_MARGIN


def test_a_callback_is_recorded_once_and_a_repeat_changes_nothing(store):
    req = cb.register(store, "https://a.example", segment="vip", expires_in_seconds=60, now=NOW)
    token = token_of(req.endpoint)
    assert cb.received(store, req.digest) is None
    assert cb.record_callback(store, token, b"", now=NOW) == "recorded"
    first = cb.received(store, req.digest)
    assert first["body"] == "empty" and first["received_at"] == NOW.isoformat()
    later = NOW + timedelta(minutes=1)
    assert cb.record_callback(store, token, b'{"object_prefix": "other"}', now=later) == "already"
    assert cb.received(store, req.digest) == first
    cb.forget(store, req.digest)
    assert cb.received(store, req.digest) is None and cb.record_callback(store, token, now=NOW) == "unknown"


def test_what_is_kept_of_a_body_never_the_link():
    link = "https://exports.example/x.zip?X-Amz-Signature=abcdef0123456789"
    info = cb.parse_body(json.dumps({"object_prefix": "0a1b-17", "url": link, "status": "completed",
                                     "file_count": 3}).encode())
    assert info == {"body": "json", "object_prefix": "0a1b-17", "status": "completed", "url_given": True}
    assert link not in json.dumps(info)
    assert cb.parse_body(b"not json")["body"] == "other"
    assert cb.parse_body(b"[1, 2]")["body"] == "other"
    odd = cb.parse_body(json.dumps({"object_prefix": "../../etc", "status": "x" * 100}).encode())
    assert odd["object_prefix"] is None and odd["status"] is None


@pytest.mark.parametrize("bad", ["", "short", "A" * 42, "A" * 44, "A" * 42 + "/", "A" * 42 + "=",
                                 "../" + "A" * 40, "A" * 42 + "\u00e9"])
def test_malformed_tokens_are_unknown_without_touching_the_store(tmp_path, bad):
    class NoStore:
        def __getattr__(self, name):
            raise AssertionError(f"store used for a malformed token: {name}")

    assert cb.record_callback(NoStore(), bad, b"") == "unknown"


def test_unknown_expired_and_forged_records_are_all_just_unknown(store):
    req = cb.register(store, "https://a.example", segment="vip", expires_in_seconds=60, now=NOW)
    token = token_of(req.endpoint)
    other = "B" * 43
    assert cb.record_callback(store, other, now=NOW) == "unknown"
    # A record under the right key whose digest does not match (tampered) is not honoured either.
    store.write_json(cb.pending_key(cb.token_digest(other)), {"token_sha256": "0" * 64,
                                                             "expires_at": (NOW + timedelta(days=9)).isoformat()})
    assert cb.record_callback(store, other, now=NOW) == "unknown"
    too_late = NOW + timedelta(seconds=61) + cb.EXPIRY_MARGIN
    assert cb.record_callback(store, token, now=too_late) == "unknown"
    assert cb.received(store, req.digest) is None


def test_expired_records_are_swept_when_a_new_export_registers(store):
    old = cb.register(store, "https://a.example", segment="vip", expires_in_seconds=60, now=NOW)
    cb.record_callback(store, token_of(old.endpoint), now=NOW)
    fresh = cb.register(store, "https://a.example", segment="vip", expires_in_seconds=60,
                        now=NOW + timedelta(days=2))
    assert store.list(cb.STORE_PREFIX) == [cb.pending_key(fresh.digest)]
