"""The Braze export client over real HTTP against the sandbox: retries, typed errors, download."""

from __future__ import annotations

import time
import zipfile

import pytest
import requests

from include.clients.braze.export import BrazeExportClient, ExportLinkExpired
from include.common.errors import AuthError, PermanentError, TransientError
from include.common.http import redact_url
from include.common.retry import RetryPolicy
from sandbox.braze_server import BrazeSandbox
from sandbox.braze_users import SegmentSpec, export_lines

pytestmark = pytest.mark.sandbox

KEY = "client-test-key"
FAST = RetryPolicy(attempts=3, base_delay=0.05, max_delay=2.0)


@pytest.fixture
def braze():
    with BrazeSandbox(KEY, [SegmentSpec("seg", 12_000)], export_delay=0.5) as sandbox:
        yield sandbox


def client(braze, key=KEY, policy=FAST) -> BrazeExportClient:
    return BrazeExportClient(braze.url, key, policy=policy)


def test_export_is_not_ready_then_ready_then_downloads_intact(braze, tmp_path):
    c = client(braze)
    job = c.start_segment_export("seg", ["external_id", "email"])
    assert c.export_ready(job.url) is False
    deadline = time.monotonic() + 10
    while not c.export_ready(job.url):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    dest = tmp_path / "export.zip"
    size = c.download(job.url, dest)
    assert size == dest.stat().st_size and not (tmp_path / "export.zip.part").exists()
    with zipfile.ZipFile(dest) as zf:
        data = b"".join(zf.read(n) for n in sorted(zf.namelist()))
    assert data == b"".join(export_lines(SegmentSpec("seg", 12_000), ["external_id", "email"]))


def test_500s_are_retried_then_succeed(braze):  # 429: test_server_retry_after_is_honoured
    braze.fail_next(2, 500)
    job = client(braze).start_segment_export("seg", ["external_id"])
    assert job.url
    posts = [r for r in braze.requests if r[1] == "/users/export/segment"]
    assert [r[2] for r in posts] == [500, 500, 201]


def test_transient_failures_give_up_after_the_policy_with_a_clear_message(braze):
    braze.fail_next(5, 503)
    with pytest.raises(TransientError, match="still failing after 3 tries: .* answered 503"):
        client(braze).start_segment_export("seg", ["external_id"])


def test_server_retry_after_is_honoured(braze):
    braze.fail_next(1, 429)  # the sandbox sends Retry-After: 1
    started = time.monotonic()
    client(braze, policy=RetryPolicy(attempts=2, base_delay=0.01)).start_segment_export("seg", ["external_id"])
    assert time.monotonic() - started >= 0.9


def test_bad_key_is_not_retried_and_says_what_to_check(braze):
    with pytest.raises(AuthError, match="answered 401 .*Check the REST API key"):
        client(braze, key="wrong").start_segment_export("seg", ["external_id"])
    assert len([r for r in braze.requests if r[1] == "/users/export/segment"]) == 1


def test_unknown_segment_is_a_permanent_error_with_brazes_message(braze):
    with pytest.raises(PermanentError, match="answered 400 .*segment_id.*needs fixing, not retrying"):
        client(braze).start_segment_export("nope", ["external_id"])


def test_connection_refused_is_transient():
    c = BrazeExportClient("http://127.0.0.1:1", KEY, policy=RetryPolicy(attempts=1))
    with pytest.raises(TransientError, match="ConnectionError"):
        c.start_segment_export("seg", ["external_id"])


def test_export_link_is_sealed_with_the_api_key(braze):
    c = client(braze)
    sealed = c.seal("https://bucket.s3.amazonaws.com/x.zip?X-Amz-Signature=abc")
    assert "Signature" not in sealed and "bucket" not in sealed
    assert c.unseal(sealed).endswith("X-Amz-Signature=abc")
    with pytest.raises(PermanentError, match="was the key rotated"):
        BrazeExportClient(braze.url, "rotated-key").unseal(sealed)


def test_urls_are_redacted_for_logs():
    assert redact_url("https://u:p@api.lytics.io/api/x?key=SECRET") == "https://api.lytics.io/api/x"
    assert redact_url("http://127.0.0.1:81/exports/TOKEN.zip", keep_path=False) == "http://127.0.0.1:81/..."


def test_non_url_host_is_rejected_with_an_example():
    with pytest.raises(PermanentError, match="https://rest.iad-01.braze.com"):
        BrazeExportClient("rest.iad-01.braze.com", KEY)


# ------------------------------------------------------------------ the link is a pre-signed S3 GET link


def _ready_job(braze, c):
    job = c.start_segment_export("seg", ["external_id"])
    deadline = time.monotonic() + 10
    while not c.export_ready(job.url):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    return job


def test_readiness_is_probed_with_get_never_head(braze):
    """The link is signed for GET: a HEAD probe is refused (403 SignatureDoesNotMatch) and would
    have waited for the whole export timeout."""
    c = client(braze)
    job = _ready_job(braze, c)
    link_requests = [r for r in braze.requests if r[1].startswith("/exports/")]
    assert link_requests and {m for m, _, _ in link_requests} == {"GET"}
    assert link_requests[-1][2] in (200, 206)
    assert requests.head(job.url, timeout=10).status_code == 403  # what the old probe got


def test_not_ready_as_access_denied_is_waited_for(tmp_path):
    with BrazeSandbox(KEY, [SegmentSpec("seg", 100)], export_delay=0.5, not_ready_status=403) as braze:
        c = client(braze)
        job = c.start_segment_export("seg", ["external_id"])
        assert c.export_ready(job.url) is False  # 403 AccessDenied: not there yet
        job = _ready_job(braze, c)
        assert c.download(job.url, tmp_path / "e.zip") > 0


def test_an_expired_link_fails_at_once_and_says_to_re_export(tmp_path):
    with BrazeSandbox(KEY, [SegmentSpec("seg", 100)], export_delay=0.2, link_ttl=0.6) as braze:
        c = client(braze)
        job = c.start_segment_export("seg", ["external_id"])
        time.sleep(1.0)
        started = time.monotonic()
        with pytest.raises(ExportLinkExpired, match="expired.*start_export"):
            c.export_ready(job.url)
        with pytest.raises(ExportLinkExpired):
            c.download(job.url, tmp_path / "e.zip")
        assert time.monotonic() - started < 5  # not retried
        assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(("fault", "error", "words"), [
    ("empty", PermanentError, "0 bytes"),
    ("html", PermanentError, "HTML page"),
    ("truncated", TransientError, "got .* of .* bytes|broke off"),
])
def test_a_spoiled_download_is_a_typed_error_and_leaves_nothing(braze, tmp_path, fault, error, words):
    c = client(braze, policy=RetryPolicy(attempts=2, base_delay=0.01))
    job = _ready_job(braze, c)
    braze.fail_downloads(5, fault)
    with pytest.raises(error, match=words) as err:
        c.download(job.url, tmp_path / "e.zip")
    assert job.url not in str(err.value)  # the link is a secret
    assert not list(tmp_path.iterdir())


def test_a_truncated_download_is_retried_and_then_complete(braze, tmp_path):
    c = client(braze)
    job = _ready_job(braze, c)
    braze.fail_downloads(1, "truncated")
    size = c.download(job.url, tmp_path / "e.zip")
    with zipfile.ZipFile(tmp_path / "e.zip") as zf:
        assert zf.testzip() is None and size == (tmp_path / "e.zip").stat().st_size


def test_an_html_page_instead_of_json_names_the_host_setting(braze):
    braze.fail_next(1, "html", path="/users/export/segment")
    with pytest.raises(PermanentError, match="not a JSON object.*REST endpoint"):
        client(braze).start_segment_export("seg", ["external_id"])
