"""LyticsClient against the Lytics sandbox over real HTTP: exact scans, typed errors, resume and restart."""

from __future__ import annotations

import logging
import math
import time
from urllib.parse import parse_qs, urlsplit

import pyarrow as pa
import pytest
import requests

import include.clients.lytics.scan_pages as scan_pages
from include.clients.lytics.scan import (
    MAX_EMPTY_PAGES,
    MAX_RESTARTS,
    InconsistentScanError,
    LyticsClient,
    ScanResult,
    total_mismatch,
    total_tolerance,
)
from include.common.errors import AuthError, ConfigError, NotFoundError, PermanentError, TransientError
from include.common.retry import RetryPolicy
from sandbox.lytics_members import Audience, braze_id
from sandbox.lytics_server import LyticsSandbox

pytestmark = pytest.mark.sandbox

TOKEN = "lytics-scan-test-token-7f3"
FAST = RetryPolicy(attempts=5, base_delay=0.01, max_delay=0.05)

MAIN = Audience("aud_main", "main_aud", "Main", 2_345, seed=11)
OTHER = Audience("aud_other", "other_aud", "Other", 300, seed=12)
NO_ID = Audience("aud_noid", "noid_aud", "Some without id", 500, seed=13, id_field="user_id", missing_id_every=5)
EMPTY = Audience("aud_empty", "empty_aud", "Empty", 0)
EXPIRY_TTL = 0.3  # seconds a scan token lives in the `expiring` sandbox; pages come ~1 ms apart


class RecordingSession(requests.Session):
    """A real requests.Session that notes every request it sends (URL with query, headers) and may
    run `before(n)` just before the n-th one (1-based) -- to inject faults or delays mid-scan."""

    def __init__(self, before=None):
        super().__init__()
        self.before = before
        self.sent: list[requests.PreparedRequest] = []

    def send(self, request, **kwargs):
        self.sent.append(request)
        if self.before is not None:
            self.before(len(self.sent))
        return super().send(request, **kwargs)

    def starts(self) -> list[str]:
        """The `start` token of each request sent ("" for a first page)."""
        return [parse_qs(urlsplit(r.url).query).get("start", [""])[0] for r in self.sent]


@pytest.fixture
def sb():
    with LyticsSandbox(TOKEN, [MAIN, OTHER, NO_ID, EMPTY]) as sandbox:
        yield sandbox


@pytest.fixture
def expiring():
    with LyticsSandbox(TOKEN, [MAIN], token_ttl=EXPIRY_TTL) as sandbox:
        yield sandbox


def client(sandbox, *, token=TOKEN, policy=FAST, before=None) -> LyticsClient:
    return LyticsClient(sandbox.url, token, policy=policy, session=RecordingSession(before))


def expected_ids(sandbox, audience: Audience) -> list[str]:
    """The sandbox's own truth: every current member that has an id, ascending."""
    return [braze_id(i) for i in sandbox.store.members(audience.id) if audience.has_id(i)]


def scan_statuses(sandbox) -> list[int]:
    return [status for _, path, status in sandbox.requests if path.endswith("/scan")]


def assert_exact(result: ScanResult, sandbox, audience: Audience) -> None:
    ids = result.ids.to_pylist()
    assert result.ids.type in (pa.large_string(), pa.string())
    assert ids == expected_ids(sandbox, audience)  # every member once, ascending
    assert result.members_seen == sandbox.store.count(audience.id)
    assert len(ids) + result.skipped_no_id == result.members_seen


# ------------------------------------------------------------------ exact scans


@pytest.mark.parametrize("limit", [100, 7])
def test_scan_returns_every_member_exactly_once_sorted(sb, limit):
    result = client(sb).scan_ids(MAIN.id, limit=limit)
    assert_exact(result, sb, MAIN)
    assert (result.skipped_no_id, result.retries, result.restarts) == (0, 0, 0)
    assert result.pages == math.ceil(MAIN.population / limit)
    assert scan_statuses(sb) == [200] * result.pages


def test_scan_by_slug_and_of_an_empty_audience(sb):
    assert client(sb).scan_ids(MAIN.slug).ids.to_pylist() == expected_ids(sb, MAIN)
    empty = client(sb).scan_ids(EMPTY.id)
    assert (len(empty.ids), empty.members_seen, empty.pages) == (0, 0, 1)
    assert empty.ids.type == pa.large_string()


def test_ids_across_many_pyarrow_chunks(sb, monkeypatch):
    monkeypatch.setattr(scan_pages, "IDS_PER_CHUNK", 64)  # ~37 chunks instead of one
    assert_exact(client(sb).scan_ids(MAIN.id), sb, MAIN)


def test_duplicate_and_unordered_ids_come_out_unique_and_sorted(monkeypatch):
    monkeypatch.setattr(scan_pages, "IDS_PER_CHUNK", 3)
    chunks = scan_pages.IdChunks()
    for value in ["u9", "u1", "u5", "u1", "é", "u9", "u10", "a", "u5"]:
        chunks.append(value)
    assert chunks.unique_sorted().to_pylist() == ["a", "u1", "u10", "u5", "u9", "é"]


def test_members_without_the_id_field_are_counted_not_guessed(sb):
    result = client(sb).scan_ids(NO_ID.id, id_field="user_id", limit=50)
    assert_exact(result, sb, NO_ID)
    members = list(sb.store.members(NO_ID.id))
    assert result.skipped_no_id == sum(1 for i in members if not NO_ID.has_id(i)) > 0
    # Asking for a field the audience does not carry skips everyone rather than inventing ids.
    wrong = client(sb).scan_ids(NO_ID.id, id_field="braze_id")
    assert (len(wrong.ids), wrong.skipped_no_id, wrong.members_seen) == (0, len(members), len(members))


def test_the_scan_asks_only_for_the_id_field(sb):
    c = client(sb)
    c.scan_ids(OTHER.id, limit=100)
    queries = [parse_qs(urlsplit(r.url).query) for r in c.session.sent]
    assert all(q["fields"] == ["braze_id"] and q["limit"] == ["100"] for q in queries)


def test_membership_change_between_two_scans_is_reflected(sb):
    c = client(sb)
    before = c.scan_ids(MAIN.id).ids.to_pylist()
    removed, added = sb.store.churn(MAIN.id, 0.1, seed=5)
    sb.store.add(MAIN.id, range(10_000, 10_050))
    sb.store.remove(MAIN.id, [i for i in sb.store.members(MAIN.id)][:3])
    after = c.scan_ids(MAIN.id)
    assert_exact(after, sb, MAIN)
    gone, new = set(before) - set(after.ids.to_pylist()), set(after.ids.to_pylist()) - set(before)
    assert {braze_id(i) for i in removed} <= gone and {braze_id(i) for i in added} <= new
    assert {braze_id(i) for i in range(10_000, 10_050)} <= new


# ------------------------------------------------------------------ audiences


def test_unknown_audience_is_not_found(sb):
    c = client(sb)
    message = "Lytics audience 'nope' not found; check the audience id/slug in the configuration"
    with pytest.raises(NotFoundError) as err:
        c.scan_ids("nope")
    assert str(err.value) == message
    assert [status for *_, status in sb.requests] == [404]  # not retried


# ------------------------------------------------------------------ auth


def test_token_goes_raw_in_the_header_and_never_in_a_url(sb):
    c = client(sb)
    c.scan_ids(OTHER.id, limit=50)
    assert len(c.session.sent) == OTHER.population // 50
    assert all(r.headers["Authorization"] == TOKEN for r in c.session.sent)
    assert not any(TOKEN in r.url for r in c.session.sent)
    # The sandbox refuses "Bearer <token>" like Lytics: a Bearer client could not have scanned.
    bearer = requests.get(f"{sb.url}/api/segment/{OTHER.id}", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    assert bearer.status_code == 401
    with pytest.raises(ConfigError, match="raw token"):
        LyticsClient(sb.url, f"Bearer {TOKEN}")


def test_rejected_token_is_an_auth_error_and_not_retried(sb, caplog):
    caplog.set_level(logging.DEBUG)
    wrong = "not-the-token-1234"
    with pytest.raises(AuthError, match=r"password of connection lytics_default") as err:
        client(sb, token=wrong).scan_ids(MAIN.id)
    assert sb.requests == [("GET", f"/api/segment/{MAIN.id}/scan", 401)]
    assert wrong not in str(err.value) and wrong not in caplog.text


@pytest.mark.parametrize("bad", ["", "   "])
def test_empty_token_or_bad_url_is_a_config_error(bad):
    with pytest.raises(ConfigError, match="token is empty"):
        LyticsClient("https://api.lytics.io", bad)
    with pytest.raises(ConfigError, match="not a URL"):
        LyticsClient("api.lytics.io", TOKEN)


@pytest.mark.parametrize("limit", [0, 101, -5, True, "100", 10.0])
def test_limit_outside_1_to_100_is_a_config_error(sb, limit):
    with pytest.raises(ConfigError, match="from 1 to 100"):
        client(sb).scan_ids(MAIN.id, limit=limit)
    assert sb.requests == []


# ------------------------------------------------------------------ transient failures: resume


@pytest.mark.parametrize("fault,times", [(500, 3), (503, 1), (429, 2), ("reset", 2)])
def test_failed_pages_are_retried_with_the_same_start_token(sb, fault, times):
    baseline = client(sb).scan_ids(MAIN.id)
    sb.clear_requests()

    def before(n):
        if n == 3:  # the third page: the scan has a start token to resume from
            sb.fail_next(times, fault)

    c = client(sb, before=before)
    result = c.scan_ids(MAIN.id)
    assert result == ScanResult(ids=baseline.ids, members_seen=baseline.members_seen, skipped_no_id=0,
                                pages=baseline.pages, retries=times, restarts=0, total_first=MAIN.population,
                                total_last=MAIN.population)
    starts = c.session.starts()
    assert starts[0] == "" and starts[2] != ""
    assert starts[2:3 + times] == [starts[2]] * (times + 1)  # every retry resumed from page 3's token
    assert starts.count("") == 1  # never started over
    assert len(starts) == baseline.pages + times
    statuses = scan_statuses(sb)
    assert statuses.count(200) == baseline.pages
    assert statuses.count(0 if fault == "reset" else fault) == times


def test_failures_on_the_first_page_are_retried_too(sb):
    sb.fail_next(2, 502)
    result = client(sb).scan_ids(MAIN.id)
    assert_exact(result, sb, MAIN)
    assert (result.retries, result.restarts) == (2, 0)


def test_retries_run_out_as_a_transient_error(sb):
    sb.fail_next(10, 503)
    with pytest.raises(TransientError, match="still failing after 3 tries") as err:
        client(sb, policy=RetryPolicy(attempts=3, base_delay=0.01)).scan_ids(MAIN.id)
    assert "injected failure (503)" in str(err.value)
    assert scan_statuses(sb) == [503, 503, 503]


# ------------------------------------------------------------------ expired tokens: restart


def test_an_expired_token_starts_the_scan_over_from_the_first_page(expiring):
    first_page = expected_ids(expiring, MAIN)[:100]

    def before(n):
        if n == 3:
            # A member of the abandoned pass leaves: the restarted pass must not bring it back.
            expiring.store.remove(MAIN.id, int(first_page[0][1:]))
            time.sleep(EXPIRY_TTL * 1.5)  # page 2's token expires before page 3 is asked for

    c = client(expiring, before=before)
    result = c.scan_ids(MAIN.id)
    assert_exact(result, expiring, MAIN)
    assert first_page[0] not in result.ids.to_pylist()
    full = math.ceil((MAIN.population - 1) / 100)
    assert (result.restarts, result.retries, result.pages) == (1, 0, 2 + full)
    assert c.session.starts()[3] == ""  # the request after the 400 began again
    assert scan_statuses(expiring) == [200, 200, 400] + [200] * full


def test_a_token_that_expires_during_retry_waits_restarts_the_scan(expiring):
    def before(n):
        if n == 3:
            expiring.fail_next(1, 503)

    # The wait before the retry (0.5-1.0 x 2*ttl) outlives the token the retry resumes from.
    slow = RetryPolicy(attempts=3, base_delay=EXPIRY_TTL * 2, max_delay=EXPIRY_TTL * 2)
    result = client(expiring, policy=slow, before=before).scan_ids(MAIN.id)
    assert_exact(result, expiring, MAIN)
    assert (result.retries, result.restarts) == (1, 1)
    assert scan_statuses(expiring)[:4] == [200, 200, 503, 400]


def test_tokens_that_keep_expiring_give_up_after_the_restart_limit(expiring):
    c = client(expiring, before=None)
    c.session.before = lambda n: time.sleep(EXPIRY_TTL * 1.5) if c.session.starts()[-1] else None
    with pytest.raises(TransientError, match=f"started over {MAX_RESTARTS} times"):
        c.scan_ids(MAIN.id)
    # Each pass: page 1, then page 2 refused as expired; MAX_RESTARTS + 1 passes in all.
    assert scan_statuses(expiring) == [200, 400] * (MAX_RESTARTS + 1)


# ------------------------------------------------------------------ consistency: empty pages, totals


@pytest.mark.parametrize("after,run", [(3, 1), (0, 1), (10, 5)])
def test_an_empty_page_with_a_next_token_does_not_end_the_scan(sb, after, run):
    sb.empty_pages(run, after=after, audience_id=MAIN.id)
    result = client(sb).scan_ids(MAIN.id)
    assert_exact(result, sb, MAIN)  # the members after the empty page(s) are all there
    assert result.empty_pages == run
    assert result.pages == math.ceil(MAIN.population / 100) + run
    assert result.total_first == result.total_last == MAIN.population


def test_empty_pages_without_end_are_an_error_not_a_short_audience(sb):
    sb.empty_pages(1_000, after=2, audience_id=MAIN.id)
    with pytest.raises(InconsistentScanError) as err:
        client(sb).scan_ids(MAIN.id, max_empty_pages=5)
    message = str(err.value)
    assert "'aud_main'" in message and "6 pages in a row held no member" in message
    assert "after 200 members" in message and "2345" in message and "nothing was written" in message
    assert (err.value.audience, err.value.members_read, err.value.total_first) == (MAIN.id, 200, MAIN.population)
    assert scan_statuses(sb) == [200] * (2 + 6)  # bounded: gave up after the 6th empty page
    sb.clear_requests()
    with pytest.raises(InconsistentScanError, match=f"{MAX_EMPTY_PAGES + 1} pages in a row"):
        client(sb).scan_ids(MAIN.id)  # the default bound
    assert len(scan_statuses(sb)) == 2 + MAX_EMPTY_PAGES + 1


def test_a_scan_that_ends_early_disagrees_with_its_total_and_returns_nothing(sb):
    sb.end_scans_after(5, audience_id=MAIN.id)  # "_next": "" after 500 of 2,345 members
    with pytest.raises(InconsistentScanError) as err:
        client(sb).scan_ids(MAIN.id)
    message = str(err.value)
    assert message.startswith("scan of Lytics audience 'aud_main' does not add up: read 500 members but Lytics "
                              "reported a total of 2,345; at most 24 difference is accepted")
    assert "nothing was written" in message and "scan_total_tolerance_share" in message
    assert (err.value.members_read, err.value.total_first, err.value.total_last) == (500, 2_345, 2_345)
    assert isinstance(err.value, PermanentError)  # fail fast: the on-call person decides, not a retry loop


@pytest.mark.parametrize("offset,ok", [(20, True), (-20, True), (30, False), (-30, False)])
def test_a_total_that_disagrees_beyond_the_tolerance_is_an_error(sb, offset, ok):
    sb.total_offset(offset, audience_id=MAIN.id)  # tolerance: max(1% of ~2,345, 10) = 24
    if ok:
        result = client(sb).scan_ids(MAIN.id)
        assert_exact(result, sb, MAIN)
        assert result.total_first == result.total_last == MAIN.population + offset
    else:
        with pytest.raises(InconsistentScanError, match=f"read 2,345 members but Lytics reported a total of "
                                                         f"{MAIN.population + offset:,}"):
            client(sb).scan_ids(MAIN.id)


def test_the_tolerance_is_configurable_and_has_a_floor_in_members(sb):
    sb.total_offset(100, audience_id=MAIN.id)
    result = client(sb).scan_ids(MAIN.id, total_tolerance_share=0.05)
    assert_exact(result, sb, MAIN)
    sb.total_offset(10, audience_id=OTHER.id)  # 300 members: 1% is 3, the floor of 10 members applies
    assert client(sb).scan_ids(OTHER.id).total_last == OTHER.population + 10
    sb.total_offset(11, audience_id=OTHER.id)
    with pytest.raises(InconsistentScanError, match="at most 10 difference"):
        client(sb).scan_ids(OTHER.id)
    with pytest.raises(InconsistentScanError):
        client(sb).scan_ids(OTHER.id, total_tolerance_members=0, total_tolerance_share=0.0)


def test_membership_changing_during_the_scan_is_judged_against_both_totals(sb):
    members = list(sb.store.members(MAIN.id))

    def before(n):
        if n == 10:  # 900 members read: 300 of them leave (behind the cursor), 20 join ahead of it
            sb.store.remove(MAIN.id, members[:300])
            sb.store.add(MAIN.id, range(members[-1] + 1, members[-1] + 21))

    result = client(sb, before=before).scan_ids(MAIN.id)
    # Read: the 2,345 original members + 20 new ones; totals 2,345 (first page) and 2,065 (last page).
    assert (result.members_seen, result.total_first, result.total_last) == (2_365, 2_345, 2_065)
    # More change during one scan than the tolerance: 50 members join ahead of the cursor and 100
    # read already leave. Read: 2,065 + 50; totals 2,065 then 2,015; accepted up to 2,065 + 21.
    late, kept = members[-1] + 1_000, members[300:]

    def churn_mid_scan(n):
        if n == 5:
            sb.store.add(MAIN.id, range(late, late + 50))
            sb.store.remove(MAIN.id, kept[:100])

    with pytest.raises(InconsistentScanError, match=r"read 2,115 members .* total of 2,065 \(first page\) and "
                                                    r"2,015 \(last page\); at most 21 difference"):
        client(sb, before=churn_mid_scan).scan_ids(MAIN.id)


def test_total_mismatch_and_tolerance_rules():
    assert total_tolerance(0) == 10 and total_tolerance(2_345) == 24 and total_tolerance(1_000_000) == 10_000
    assert total_mismatch(0, None, None) is None  # no total reported: nothing to check against
    assert total_mismatch(90, 100, None) is None and total_mismatch(89, None, 100) is not None
    assert total_mismatch(0, 0, 0) is None and total_mismatch(11, 0, 0) is not None
    assert "first page" in total_mismatch(10, 1_000, 2_000) and total_mismatch(1_500, 1_000, 2_000) is None


def test_tokens_that_expire_mid_scan_restart_it_from_the_first_page(sb):
    c = client(sb, before=lambda n: sb.expire_tokens() if n == 4 else None)
    result = c.scan_ids(MAIN.id)
    assert_exact(result, sb, MAIN)
    assert result.restarts == 1 and c.session.starts()[4] == ""
    assert scan_statuses(sb)[:5] == [200, 200, 200, 400, 200]


def test_a_renamed_id_field_reads_no_ids_but_the_scan_itself_adds_up(sb):
    sb.rename_user_field("braze_id", "braze_external_id")
    gone = client(sb).scan_ids(MAIN.id)  # the configured field no longer exists in Lytics
    assert (len(gone.ids), gone.skipped_no_id, gone.members_seen) == (0, MAIN.population, MAIN.population)
    renamed = client(sb).scan_ids(MAIN.id, id_field="braze_external_id")
    assert renamed.ids.to_pylist() == expected_ids(sb, MAIN) and renamed.skipped_no_id == 0
