"""BrazeExportIdsClient against the Braze sandbox over real HTTP: batching, limits, faults, errors."""

from __future__ import annotations

import json
import time

import pytest
import requests

from include.clients.braze.export_ids import MAX_IDS_PER_REQUEST, BrazeExportIdsClient
from include.common.errors import AuthError, NotFoundError, PermanentError, TransientError
from include.common.rate_limit import RateLimiter
from include.common.retry import RetryPolicy
from sandbox.braze_server import BrazeSandbox
from tests.braze_other_writer import other_writer

pytestmark = pytest.mark.sandbox

KEY = "export-ids-client-key-654"
SEG = "lytics_segments"
PATH = "/users/export/ids"
FAST = RetryPolicy(attempts=5, base_delay=0.05, max_delay=5.0)


@pytest.fixture
def sb():
    with BrazeSandbox(KEY, export_ids_rate_limit=100_000, export_ids_rate_window=1.0) as sandbox:
        other_writer(sandbox.url, KEY, {f"u{i:03d}": {"add": ["vip"] if i % 3 else ["vip", "churn_risk"]}
                                        for i in range(120)})
        other_writer(sandbox.url, KEY, {"u000": {"remove": ["vip", "churn_risk"]}})  # a profile, empty array
        yield sandbox


def _client(sb: BrazeSandbox, **kwargs) -> BrazeExportIdsClient:
    kwargs.setdefault("policy", FAST)
    kwargs.setdefault("rate_limit_per_minute", 1_000_000)
    return BrazeExportIdsClient(sb.url, kwargs.pop("key", KEY), **kwargs)


def test_reads_the_attribute_in_requests_of_at_most_50(sb):
    ids = [f"u{i:03d}" for i in range(120)] + ["ghost-1", "u005", "ghost-2"]  # u005 twice: read once
    found = _client(sb).custom_attribute(ids, SEG)
    assert found.not_found == ["ghost-1", "ghost-2"]
    assert found.values["u000"] == []
    assert found.values["u001"] == ["vip"] and found.values["u003"] == ["vip", "churn_risk"]
    assert set(found.values) == {f"u{i:03d}" for i in range(120)}
    assert found.requests == 3 and found.retries == 0  # 122 distinct ids: 50 + 50 + 22
    assert sb.export_ids.stats["answered"] == 3 and sb.export_ids.stats["ids_asked"] == 122


def test_a_profile_without_the_attribute_reads_as_none(sb):
    other_writer(sb.url, KEY, {"u001": {"add": ["x"]}})
    found = _client(sb).custom_attribute(["u001"], "no_such_attribute")
    assert found.values == {"u001": None} and found.not_found == []


def test_more_than_50_ids_in_one_request_never_reach_braze(sb):
    with pytest.raises(ValueError, match="1..50"):
        _client(sb).export([f"u{i:03d}" for i in range(MAX_IDS_PER_REQUEST + 1)], ["external_id"])
    assert sb.export_ids.stats["requests"] == 0


def test_default_pacing_is_250_per_minute():
    client = BrazeExportIdsClient("https://rest.iad-01.braze.com", KEY)
    assert (client.limiter.budget, client.limiter.window) == (250, 60.0)


def test_a_429_is_retried_after_its_retry_after(sb):
    sb.fail_next(1, 429, path=PATH)  # Retry-After: 1
    start = time.monotonic()
    found = _client(sb).custom_attribute(["u001", "u002"], SEG)
    assert time.monotonic() - start >= 0.95  # honoured, not our own 50 ms backoff
    assert found.values == {"u001": ["vip"], "u002": ["vip"]} and found.retries == 1 and found.requests == 2


def test_a_window_filled_by_another_sender_is_waited_out():
    """Someone else used up the workspace's window: Braze's own 429 (exact sliding window) is retried
    after its Retry-After, and the client's X-RateLimit-Remaining/-Reset handling keeps it from
    drawing more 429s while it is configured far above the limit."""
    with BrazeSandbox(KEY, export_ids_rate_limit=3, export_ids_rate_window=2.0) as sb:
        other_writer(sb.url, KEY, {f"u{i:03d}": {"add": ["vip"]} for i in range(200)})
        body = {"external_ids": ["u001"], "fields_to_export": ["external_id"]}
        start = time.monotonic()
        for _ in range(3):
            requests.post(f"{sb.url}{PATH}", json=body, headers={"Authorization": f"Bearer {KEY}"},
                          timeout=10).raise_for_status()
        # The client's limiter has the server's window (Braze: 60 s; here 2 s, to keep the test short).
        client = _client(sb, limiter=RateLimiter(100_000, 2.0))
        found = client.custom_attribute([f"u{i:03d}" for i in range(200)], SEG)  # 4 requests
        assert found.values == {f"u{i:03d}": ["vip"] for i in range(200)}
        assert sb.export_ids.stats["rate_limited"] == 1 == found.retries
        assert sb.export_ids.stats["answered"] == 3 + 4
        elapsed = time.monotonic() - start
        assert 2 * 2.0 - 0.1 <= elapsed < 2 * 2.0 + 3  # 7 requests at 3 per 2 s: into the third window


def test_smooth_pacing_stays_inside_an_exact_window():
    with BrazeSandbox(KEY, export_ids_rate_limit=5, export_ids_rate_window=1.0) as sb:  # 300 per minute
        other_writer(sb.url, KEY, {f"u{i:03d}": {"add": ["vip"]} for i in range(600)})
        found = _client(sb, rate_limit_per_minute=240).custom_attribute([f"u{i:03d}" for i in range(600)], SEG)
        assert len(found.values) == 600 and found.retries == 0
        assert sb.export_ids.stats["rate_limited"] == 0 and sb.export_ids.stats["answered"] == 12


def test_5xx_and_resets_are_retried_then_give_up(sb):
    sb.fail_next(2, 503, path=PATH)
    assert _client(sb).custom_attribute(["u001"], SEG).retries == 2
    sb.fail_next(10, "reset", path=PATH)
    with pytest.raises(TransientError, match="still failing after 5 tries"):
        _client(sb).custom_attribute(["u001"], SEG)


def test_an_html_page_with_200_is_a_typed_error_naming_the_endpoint(sb, caplog):
    sb.fail_next(1, "html", path=PATH)
    with pytest.raises(PermanentError) as err:
        _client(sb).custom_attribute(["u001"], SEG)
    text = str(err.value)
    assert "/users/export/ids" in text and "text/html" in text and "REST endpoint" in text
    assert not isinstance(err.value.__cause__, json.JSONDecodeError) and err.value.__cause__ is None
    assert KEY not in text and KEY not in caplog.text
    assert sb.export_ids.stats["requests"] == 0  # the fault answered; nothing was read


def test_bad_key_is_an_auth_error_naming_the_permission_and_is_not_retried(sb, caplog):
    with pytest.raises(AuthError) as err:
        _client(sb, key="wrong-key-999").custom_attribute(["u001"], SEG)
    text = str(err.value)
    assert "401" in text and "users.export.ids" in text and "/users/export/ids" in text
    assert "wrong-key-999" not in text and "wrong-key-999" not in caplog.text and KEY not in text
    assert sb.export_ids.stats["requests"] == 1 and sb.export_ids.stats["unauthorized"] == 1


def test_a_forbidden_key_is_not_retried(sb):
    sb.fail_next(3, 403, path=PATH)
    with pytest.raises(AuthError, match="users.export.ids"):
        _client(sb).custom_attribute(["u001"], SEG)
    assert [r for r in sb.requests if r[1] == PATH] == [("POST", PATH, 403)]


def test_wrong_endpoint_is_not_found_with_a_hint(sb):
    client = BrazeExportIdsClient(f"{sb.url}/not-braze", KEY, policy=FAST, rate_limit_per_minute=1_000_000)
    with pytest.raises(NotFoundError, match="REST endpoint"):
        client.custom_attribute(["u001"], SEG)
