"""The Lytics sandbox's collect endpoints (`sandbox.lytics_collect`), over real HTTP: the contract the
webhook kit and a Braze webhook step rely on, answer by answer."""

from __future__ import annotations

import json

import pytest
import requests

from sandbox.lytics_collect import MAX_EVENT_BYTES
from sandbox.lytics_server import LyticsSandbox

pytestmark = pytest.mark.sandbox

TOKEN = "collect-sandbox-token-0123456789"
ACCOUNT = "4242"
JSON = {"Content-Type": "application/json"}
EVENT = {"email": "someone@example.com", "braze_id": "b1", "first_name": "Ann"}


@pytest.fixture
def sb():
    with LyticsSandbox(TOKEN, accounts=[ACCOUNT, "7777"]) as sandbox:
        yield sandbox


def _c(sb, account=ACCOUNT, stream="braze_users", *, key=TOKEN, body=None, headers=JSON, method="POST"):
    data = json.dumps(EVENT if body is None else body).encode() if not isinstance(body, bytes) else body
    params = {"key": key} if key is not None else None
    return requests.request(method, f"{sb.url}/c/{account}/{stream}", params=params, data=data, headers=headers,
                            timeout=10)


def test_a_webhook_post_is_accepted_and_recorded(sb):
    r = _c(sb)
    assert r.status_code == 200
    assert r.json() == {"status": 200, "message": "success"}
    [event] = sb.collect.events()
    assert (event.account, event.stream, event.endpoint, event.fields) == (ACCOUNT, "braze_users", "c", EVENT)
    assert sb.collect.events(stream="other") == [] and sb.collect.events(account="7777") == []
    assert sb.requests[-1] == ("POST", f"/c/{ACCOUNT}/braze_users", 200)  # logged without the query string


def test_collect_json_takes_the_token_in_the_authorization_header(sb):
    r = requests.post(f"{sb.url}/collect/json/my_stream", data=json.dumps(EVENT),
                      headers={**JSON, "Authorization": TOKEN}, timeout=10)
    assert (r.status_code, r.json()) == (200, {"status": 200, "message": "success"})
    [event] = sb.collect.events("my_stream")
    assert (event.account, event.endpoint, event.fields) == (ACCOUNT, "collect_json", EVENT)  # the token's account


@pytest.mark.parametrize("key", ["wrong-token", "", None])
def test_a_wrong_or_missing_key_is_401_and_nothing_is_recorded(sb, key):
    r = _c(sb, key=key)
    assert r.status_code == 401 and r.json()["message"] == "Unauthorized"
    assert sb.collect.events() == []


def test_a_bearer_header_is_refused_on_collect_json_too(sb):
    r = requests.post(f"{sb.url}/collect/json/s", data=json.dumps(EVENT),
                      headers={**JSON, "Authorization": f"Bearer {TOKEN}"}, timeout=10)
    assert r.status_code == 401


def test_an_unknown_account_is_404(sb):
    r = _c(sb, account="9999")
    assert (r.status_code, r.json()["message"]) == (404, "account not found")
    assert sb.collect.events() == []


def test_streams_are_created_on_first_data_unless_restricted(sb):
    assert _c(sb, stream="brand_new_stream").status_code == 200
    sb.collect.restrict_streams({"braze_users"})
    r = _c(sb, stream="brand_new_stream")
    assert (r.status_code, r.json()["message"]) == (404, "stream not found")
    assert _c(sb).status_code == 200
    sb.collect.restrict_streams(None)
    assert _c(sb, stream="brand_new_stream").status_code == 200


@pytest.mark.parametrize("body, status, words", [
    (b"not json at all", 400, "not valid JSON"),
    (b"", 400, "empty body"),
    ([EVENT], 400, "must be a JSON object"),
    ("a string", 400, "must be a JSON object"),
    (42, 400, "must be a JSON object"),
])
def test_a_body_that_is_not_one_json_object_is_400(sb, body, status, words):
    r = _c(sb, body=body)
    assert r.status_code == status and words in r.json()["message"]
    assert sb.collect.events() == []


def test_an_event_over_4_kb_is_413_and_4_kb_exactly_passes(sb):
    def event_of(size: int) -> bytes:
        base = json.dumps({"email": "a@example.com", "pad": ""}).encode()
        return json.dumps({"email": "a@example.com", "pad": "x" * (size - len(base))}).encode()

    assert len(event_of(MAX_EVENT_BYTES)) == MAX_EVENT_BYTES == 4096
    assert _c(sb, body=event_of(MAX_EVENT_BYTES)).status_code == 200
    r = _c(sb, body=event_of(MAX_EVENT_BYTES + 1))
    assert r.status_code == 413 and "4097 bytes" in r.json()["message"]
    assert len(sb.collect.events()) == 1


def test_the_body_must_be_declared_json(sb):
    r = _c(sb, headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 415 and "application/json" in r.json()["message"]
    assert _c(sb, headers={"Content-Type": "application/json; charset=utf-8"}).status_code == 200


def test_only_post_is_allowed_and_bad_stream_names_are_400(sb):
    r = _c(sb, method="GET")
    assert r.status_code == 405 and r.headers["Allow"] == "POST"
    r = _c(sb, stream="bad.stream")
    assert r.status_code == 400 and "invalid stream name" in r.json()["message"]


def test_injected_failures_and_the_scan_api_still_work_beside_collect(sb):
    sb.fail_next(1, 503)
    assert _c(sb).status_code == 503
    assert _c(sb).status_code == 200
    assert requests.get(f"{sb.url}/api/segment", headers={"Authorization": TOKEN}, timeout=10).status_code == 200
    assert requests.post(f"{sb.url}/api/segment", headers={"Authorization": TOKEN}, timeout=10).status_code == 405
    sb.collect.clear()
    assert sb.collect.events() == []


def test_the_default_account_and_bad_account_numbers():
    with LyticsSandbox(TOKEN) as sandbox:
        assert sandbox.collect.accounts == ["1234"]
        assert _c(sandbox, account="1234").status_code == 200
    with pytest.raises(ValueError):
        LyticsSandbox(TOKEN, accounts=["no/slash"])
