"""Tests of the Braze sandbox's ``POST /users/export/ids``, over real HTTP on loopback."""

from __future__ import annotations

import math
import time

import pytest
import requests

from sandbox.braze_export_ids import EXPORT_IDS_RATE_LIMIT, EXPORT_IDS_RATE_WINDOW
from sandbox.braze_server import BrazeSandbox
from tests.braze_other_writer import other_writer

pytestmark = pytest.mark.sandbox

KEY = "export-ids-key-321"
AUTH = {"Authorization": f"Bearer {KEY}"}
SEG = "lytics_segments"
FIELDS = ["external_id", "custom_attributes"]


@pytest.fixture(scope="module")
def sb():
    with BrazeSandbox(KEY, export_ids_rate_limit=1_000_000, export_ids_rate_window=1.0) as sandbox:
        other_writer(sandbox.url, KEY, {f"u{i}": {"add": ["vip", "churn_risk"] if i % 2 else ["vip"]}
                                        for i in range(60)})
        yield sandbox


@pytest.fixture(scope="module")
def http():
    with requests.Session() as s:
        yield s


def _export(http, sb, body, headers=AUTH):
    return http.post(f"{sb.url}/users/export/ids", json=body, headers=headers, timeout=10)


def test_defaults_are_brazes_limit_for_newer_workspaces():
    assert (EXPORT_IDS_RATE_LIMIT, EXPORT_IDS_RATE_WINDOW) == (250, 60.0)


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {KEY}"}, {"Authorization": KEY}],
    ids=["missing", "wrong-key", "wrong-scheme", "no-scheme"],
)
def test_auth_required(http, sb, headers):
    before = sb.export_ids.stats["unauthorized"]
    r = _export(http, sb, {"external_ids": ["u1"], "fields_to_export": FIELDS}, headers=headers)
    assert r.status_code == 401 and r.json() == {"message": "Invalid API key"}
    assert {"X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset"} <= set(r.headers)
    assert sb.export_ids.stats["unauthorized"] == before + 1


def test_known_users_in_order_unknown_in_invalid_user_ids_arrays_as_stored(http, sb):
    other_writer(sb.url, KEY, {"order": {"add": ["b", "a", "c"]}})
    other_writer(sb.url, KEY, {"order": {"remove": ["a"]}, "emptied": {"add": ["x"]}})
    other_writer(sb.url, KEY, {"emptied": {"remove": ["x"]}})
    r = _export(http, sb, {"external_ids": ["u1", "nobody", "order", "u1", "emptied", "ghost"],
                           "fields_to_export": FIELDS})
    assert r.status_code == 200, r.text
    assert r.json() == {
        "users": [
            {"external_id": "u1", "custom_attributes": {SEG: ["vip", "churn_risk"]}},
            {"external_id": "order", "custom_attributes": {SEG: ["b", "c"]}},
            {"external_id": "emptied", "custom_attributes": {SEG: []}},
        ],
        "invalid_user_ids": ["nobody", "ghost"],
        "message": "success",
    }
    assert {"X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset"} <= set(r.headers)


def test_invalid_user_ids_is_left_out_when_every_user_is_known(http, sb):
    r = _export(http, sb, {"external_ids": ["u0", "u1"], "fields_to_export": FIELDS})
    assert r.status_code == 200 and set(r.json()) == {"users", "message"}


def test_only_the_requested_fields_custom_attributes_only_as_a_whole(http, sb):
    other_writer(sb.url, KEY, {"fields": {"add": ["vip"]}})
    requests.post(f"{sb.url}/users/track", headers=AUTH, timeout=10, json={"attributes": [
        {"external_id": "fields", "first_name": "Ada", "tier": "gold"}]}).raise_for_status()
    body = {"external_ids": ["fields"]}
    assert _export(http, sb, {**body, "fields_to_export": ["external_id"]}).json()["users"] == [
        {"external_id": "fields"}]
    # A single custom attribute cannot be asked for by name (nor can any unknown field): nothing comes back.
    assert _export(http, sb, {**body, "fields_to_export": [SEG, "no_such_field"]}).json()["users"] == [{}]
    assert _export(http, sb, {**body, "fields_to_export": ["first_name", "custom_attributes", "email"]}).json() == {
        "users": [{"first_name": "Ada", "custom_attributes": {SEG: ["vip"], "tier": "gold"}}], "message": "success"}


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"fields_to_export": FIELDS}, "'external_ids' must be provided"),
        ({"external_ids": [], "fields_to_export": FIELDS}, "'external_ids' must be provided"),
        ({"external_ids": "u1", "fields_to_export": FIELDS}, "array of non-empty strings"),
        ({"external_ids": ["u1", ""], "fields_to_export": FIELDS}, "array of non-empty strings"),
        ({"external_ids": ["u1", 7], "fields_to_export": FIELDS}, "array of non-empty strings"),
        ({"external_ids": ["u1"]}, "'fields_to_export' is required"),
        ({"external_ids": ["u1"], "fields_to_export": []}, "'fields_to_export' is required"),
        ({"external_ids": ["u1"], "braze_id": "b1", "fields_to_export": FIELDS}, "only 'external_ids'"),
        ([{"external_ids": ["u1"]}], "JSON object"),
    ],
)
def test_bad_bodies_400(http, sb, body, fragment):
    r = _export(http, sb, body)
    assert r.status_code == 400 and fragment in r.json()["message"], r.text


def test_at_most_50_ids(http, sb):
    r = _export(http, sb, {"external_ids": [f"u{i}" for i in range(51)], "fields_to_export": FIELDS})
    assert r.status_code == 400 and "at most 50" in r.json()["message"]
    r = _export(http, sb, {"external_ids": [f"u{i}" for i in range(50)], "fields_to_export": FIELDS})
    assert r.status_code == 200 and len(r.json()["users"]) == 50


def test_only_post(http, sb):
    r = http.get(f"{sb.url}/users/export/ids", headers=AUTH, timeout=10)
    assert r.status_code == 405 and r.headers["Allow"] == "POST"


def test_exact_sliding_window_rate_limit_with_retry_after():
    limit, window = 5, 2.0
    body = {"external_ids": ["u1"], "fields_to_export": FIELDS}
    with BrazeSandbox(KEY, export_ids_rate_limit=limit, export_ids_rate_window=window) as sandbox, \
            requests.Session() as http:
        start = time.monotonic()
        statuses = [_export(http, sandbox, body).status_code for _ in range(limit)]
        assert statuses == [200] * limit
        refused = _export(http, sandbox, body)
        assert refused.status_code == 429 and refused.json() == {"message": "Rate limit exceeded"}
        assert refused.headers["X-RateLimit-Limit"] == str(limit)
        assert refused.headers["X-RateLimit-Remaining"] == "0"
        retry_after = int(refused.headers["Retry-After"])
        assert 1 <= retry_after <= math.ceil(window)
        assert int(refused.headers["X-RateLimit-Reset"]) >= time.time()
        # Unauthenticated requests and other endpoints neither count nor are refused by this limit.
        assert _export(http, sandbox, body, headers={}).status_code == 401
        other_writer(sandbox.url, KEY, {"u1": {"add": ["vip"]}})
        # Exact: still refused just before the first request leaves the window, allowed right after.
        time.sleep(max(0.0, start + window - 0.3 - time.monotonic()))
        assert _export(http, sandbox, body).status_code == 429
        time.sleep(max(0.0, start + window + 0.3 - time.monotonic()))
        ok = _export(http, sandbox, body)
        assert ok.status_code == 200 and ok.json()["users"] == [{"external_id": "u1", "custom_attributes": {SEG: ["vip"]}}]
        stats = sandbox.export_ids.stats
        assert stats["rate_limited"] == 2 and stats["answered"] == limit + 1 and stats["unauthorized"] == 1
