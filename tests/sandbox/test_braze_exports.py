"""Tests of the Braze sandbox's export endpoint and link archives, over real HTTP on loopback.

The generator: test_braze_users.py; S3 link semantics: test_braze_export_links.py; bucket mode:
test_braze_bucket.py.
"""

from __future__ import annotations

import gzip
import io
import re
import subprocess
import sys
import threading
import time
import zipfile
import zlib
from pathlib import Path
from urllib.parse import urlsplit

import orjson
import pytest
import requests

from sandbox.braze_server import BrazeSandbox
from sandbox.braze_users import ALL_FIELDS, SegmentSpec, expected_users, export_lines

pytestmark = pytest.mark.sandbox

KEY = "test-rest-key-123"
DELAY = 0.3
AUTH = {"Authorization": f"Bearer {KEY}"}

SMALL = SegmentSpec("seg_small", 12_345, name="Small")
KNOBS = SegmentSpec("seg_knobs", 200, missing_id_every=5, malformed_every=7, duplicate_every=4, seed=3)
TINY = SegmentSpec("seg_tiny", 10)
EMPTY = SegmentSpec("seg_empty", 0)
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def sb():
    with BrazeSandbox(KEY, [SMALL, KNOBS, TINY, EMPTY], export_delay=DELAY) as sandbox:
        yield sandbox


@pytest.fixture(scope="module")
def http():
    with requests.Session() as s:
        yield s


def _post(http, sb, body, headers=AUTH, **kw):
    return http.post(f"{sb.url}/users/export/segment", json=body, headers=headers, timeout=10, **kw)


def _export(http, sb, segment_id, fields=None, fmt=None):
    """POST an export, waiting out a previous export of the same segment if needed."""
    body = {"segment_id": segment_id, "fields_to_export": fields or list(ALL_FIELDS)}
    if fmt:
        body["output_format"] = fmt
    deadline = time.monotonic() + 10
    while True:
        r = _post(http, sb, body)
        if r.status_code != 429 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert r.status_code == 201, r.text
    return r.json()


def _download(http, url, timeout=10.0):
    deadline = time.monotonic() + timeout
    while True:
        r = http.get(url, timeout=30)
        if r.status_code == 200:
            return r
        assert r.status_code == 404 and b"<Code>NoSuchKey</Code>" in r.content, r.text
        assert time.monotonic() < deadline, "export never became ready"
        time.sleep(0.05)


def _zip_lines(data: bytes) -> tuple[list[str], list[list[bytes]]]:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        names = zf.namelist()
        for info in zf.infolist():
            assert info.compress_type == zipfile.ZIP_DEFLATED
        return names, [zf.read(n).splitlines(keepends=True) for n in names]


def _gzip_members(data: bytes) -> list[bytes]:
    members = []
    while data:
        d = zlib.decompressobj(wbits=31)
        members.append(d.decompress(data))
        assert d.eof, "truncated gzip member"
        data = d.unused_data
    return members


# --------------------------------------------------------------------------- auth & validation
@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Basic {KEY}"},
        {"Authorization": KEY},
        {"Authorization": "Bearer"},
    ],
    ids=["missing", "wrong-key", "wrong-scheme", "no-scheme", "empty-bearer"],
)
def test_auth_required(http, sb, headers):
    r = _post(http, sb, {"segment_id": TINY.segment_id, "fields_to_export": ["external_id"]}, headers=headers)
    assert r.status_code == 401
    assert r.json() == {"message": "Invalid API key"}


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"segment_id": "nope", "fields_to_export": ["email"]}, "Invalid segment_id: nope"),
        ({"segment_id": TINY.segment_id}, "fields_to_export is required"),
        ({"segment_id": TINY.segment_id, "fields_to_export": []}, "fields_to_export must be"),
        ({"segment_id": TINY.segment_id, "fields_to_export": "email"}, "fields_to_export must be"),
        ({"segment_id": TINY.segment_id, "fields_to_export": ["email", 3]}, "fields_to_export must be"),
        (
            {"segment_id": TINY.segment_id, "fields_to_export": ["email"], "output_format": "csv"},
            "Invalid output_format",
        ),
        (
            {"segment_id": TINY.segment_id, "fields_to_export": ["email"], "output_format": ["zip"]},
            "Invalid output_format",
        ),
        ({"fields_to_export": ["email"]}, "segment_id is required"),
        ([TINY.segment_id], "JSON object"),
    ],
)
def test_bad_requests_400(http, sb, body, fragment):
    r = _post(http, sb, body)
    assert r.status_code == 400
    assert fragment in r.json()["message"]


def test_invalid_json_and_content_type_400(http, sb):
    url = f"{sb.url}/users/export/segment"
    r = http.post(
        url, data=b'{"segment_id": ', headers={**AUTH, "Content-Type": "application/json"}, timeout=10
    )
    assert r.status_code == 400 and "Invalid JSON" in r.json()["message"]
    r = http.post(
        url,
        data=b'{"segment_id": "seg_tiny", "fields_to_export": ["email"]}',
        headers={**AUTH, "Content-Type": "text/plain"},
        timeout=10,
    )
    assert r.status_code == 400 and "Content-Type" in r.json()["message"]


def test_wrong_method_and_unknown_paths(http, sb):
    r = http.get(f"{sb.url}/users/export/segment", headers=AUTH, timeout=10)
    assert r.status_code == 405 and r.json()["message"]
    r = http.get(f"{sb.url}/users/track", headers=AUTH, timeout=10)
    assert r.status_code == 404 and r.headers["Content-Type"] == "application/json"
    r = http.get(f"{sb.url}/exports/{'x' * 64}.zip", timeout=10)  # no signature: an anonymous S3 GET
    assert r.status_code == 403 and b"<Code>AccessDenied</Code>" in r.content


# --------------------------------------------------------------------------- exports
def test_zip_export_404_until_ready_then_content(http, sb):
    fields = ["external_id", "email", "custom_attributes"]
    t0 = time.monotonic()
    res = _export(http, sb, SMALL.segment_id, fields)
    assert res["message"] == "success" and res["object_prefix"]
    prefix = res["object_prefix"]
    m = re.fullmatch(
        re.escape(sb.url) + r"/exports/([A-Za-z0-9_-]{32,})\.zip\?(.*X-Amz-Signature=[0-9a-f]{64})",
        res["url"],
    )
    assert m, res["url"]

    # Not ready yet: 404 NoSuchKey (no auth header needed: the link is pre-signed).
    r = http.get(res["url"], timeout=10)
    assert r.status_code == 404 and b"<Code>NoSuchKey</Code>" in r.content
    # Same token with the other extension: another path, so the signature does not match.
    r = http.get(res["url"].replace(".zip?", ".gz?"), timeout=10)
    assert r.status_code == 403 and b"SignatureDoesNotMatch" in r.content

    r = _download(http, res["url"])
    assert time.monotonic() - t0 >= DELAY
    assert r.headers["Content-Type"] == "application/zip"
    assert int(r.headers["Content-Length"]) == len(r.content)

    names, chunks = _zip_lines(r.content)
    day = time.strftime("%Y-%m-%d", time.gmtime())
    assert names == [f"segment-export/{SMALL.segment_id}/{day}/{prefix}/{prefix}-{n}.json" for n in range(3)]
    assert [len(c) for c in chunks] == [5_000, 5_000, 2_345]
    assert b"".join(line for c in chunks for line in c) == b"".join(export_lines(SMALL, fields))


def test_gzip_export_is_multi_member(http, sb):
    res = _export(http, sb, SMALL.segment_id, ["external_id", "first_name"], fmt="gzip")
    assert urlsplit(res["url"]).path.endswith(".gz")
    r = _download(http, res["url"])
    assert r.headers["Content-Type"] == "application/gzip"
    assert "Content-Encoding" not in r.headers  # the file itself is gzip, not a transfer encoding
    members = _gzip_members(r.content)
    assert [m.count(b"\n") for m in members] == [5_000, 5_000, 2_345]
    expected = b"".join(export_lines(SMALL, ["external_id", "first_name"]))
    assert gzip.decompress(r.content) == b"".join(members) == expected


def test_empty_segment_exports(http, sb):
    r = _download(http, _export(http, sb, EMPTY.segment_id, ["external_id"])["url"])
    assert _zip_lines(r.content) == ([], [])
    r = _download(http, _export(http, sb, EMPTY.segment_id, ["external_id"], fmt="gzip")["url"])
    assert gzip.decompress(r.content) == b""


def test_same_spec_exports_identically(http, sb):
    first = _export(http, sb, SMALL.segment_id, ["external_id", "braze_id", "dob"])
    a = _zip_lines(_download(http, first["url"]).content)[1]
    second = _export(http, sb, SMALL.segment_id, ["external_id", "braze_id", "dob"])
    b = _zip_lines(_download(http, second["url"]).content)[1]
    assert first["object_prefix"] != second["object_prefix"] and first["url"] != second["url"]
    assert a == b


def test_knobs_over_http(http, sb):
    r = _download(http, _export(http, sb, KNOBS.segment_id, ["external_id", "email", "braze_id"])["url"])
    lines = [line for c in _zip_lines(r.content)[1] for line in c]
    parsed = []
    for line in lines:
        try:
            parsed.append(orjson.loads(line))
        except orjson.JSONDecodeError:
            parsed.append(None)
    assert parsed == list(expected_users(KNOBS, ["external_id", "email", "braze_id"]))
    assert parsed.count(None) == 200 // 7
    assert sum(1 for u in parsed if u is not None and "external_id" not in u) > 0
    ids = [u["external_id"] for u in parsed if u is not None and "external_id" in u]
    assert len(ids) != len(set(ids))  # duplicates present


def test_one_export_per_segment_at_a_time(http, sb):
    body = {"segment_id": TINY.segment_id, "fields_to_export": ["external_id"]}
    _export(http, sb, TINY.segment_id, ["external_id"])
    r = _post(http, sb, body)
    assert r.status_code == 429
    assert r.json() == {"message": "An export for this segment is already in progress"}
    assert 1 <= int(r.headers["Retry-After"]) <= 1 + DELAY
    # Other segments are not blocked.
    assert _post(http, sb, {**body, "segment_id": EMPTY.segment_id}).status_code in (201, 429)
    time.sleep(DELAY + 0.05)
    assert _post(http, sb, body).status_code == 201


def test_file_generated_once_under_concurrent_downloads(http, sb):
    res = _export(http, sb, SMALL.segment_id, ["external_id", "email"], fmt="gzip")
    time.sleep(DELAY + 0.05)
    before = sb.files_generated
    bodies, errors = [], []

    def fetch():
        try:
            with requests.get(res["url"], timeout=30) as r:
                assert r.status_code == 200
                bodies.append(r.content)
        except Exception as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=fetch) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(bodies) == 6 and len(set(bodies)) == 1
    assert sb.files_generated == before + 1
    assert list(sb.data_dir.glob("*.part")) == []


# --------------------------------------------------------------------------- rate limit & failures
def test_rate_limit_headers_on_every_response(http, sb):
    body = {"segment_id": "nope", "fields_to_export": ["email"]}
    remaining = []
    for _ in range(3):
        r = _post(http, sb, body)
        assert r.status_code == 400
        assert r.headers["X-RateLimit-Limit"] == "250000"
        remaining.append(int(r.headers["X-RateLimit-Remaining"]))
        reset = int(r.headers["X-RateLimit-Reset"])
        assert time.time() < reset <= time.time() + 3601
    assert remaining[0] > remaining[1] > remaining[2]
    for r in (
        _post(http, sb, body, headers={}),  # 401
        http.get(f"{sb.url}/nowhere", timeout=10),
    ):
        assert {"X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset"} <= set(r.headers)
    # Unauthenticated requests do not consume the quota.
    assert int(r.headers["X-RateLimit-Remaining"]) == remaining[-1]
    # A download link is S3's: S3's headers, none of Braze's.
    r = http.get(f"{sb.url}/exports/{'y' * 64}.gz", timeout=10)
    assert "x-amz-request-id" in r.headers and "X-RateLimit-Remaining" not in r.headers


def test_rate_limit_enforced():
    with BrazeSandbox(KEY, [TINY], export_delay=0, rate_limit=3) as small, requests.Session() as s:
        body = {"segment_id": TINY.segment_id, "fields_to_export": ["external_id"]}
        statuses = [_post(s, small, body).status_code for _ in range(4)]
        assert statuses == [201, 201, 201, 429]
        r = _post(s, small, body)
        assert r.status_code == 429 and int(r.headers["Retry-After"]) > 3000
        assert r.headers["X-RateLimit-Remaining"] == "0"


def test_fail_next(http, sb):
    body = {"segment_id": TINY.segment_id, "fields_to_export": ["external_id"]}
    sb.fail_next(2, 500)
    assert [_post(http, sb, body).status_code for _ in range(2)] == [500, 500]
    sb.fail_next(1, 503)
    r = http.get(f"{sb.url}/exports/{'z' * 64}.zip", timeout=10)  # a download link: S3's XML
    assert r.status_code == 503 and r.headers["Retry-After"] == "1" and b"<Code>SlowDown</Code>" in r.content
    assert r.headers["Content-Type"] == "application/xml" and "X-RateLimit-Remaining" not in r.headers
    sb.fail_next(1, 429)
    r = _post(http, sb, {"segment_id": "nope", "fields_to_export": ["x"]})
    assert r.status_code == 429 and r.headers["Retry-After"] == "1" and r.json()["message"]
    assert "X-RateLimit-Remaining" in r.headers
    assert _export(http, sb, TINY.segment_id, ["external_id"])["message"] == "success"


def test_requests_log(http, sb):
    n = len(sb.requests)
    _post(http, sb, {"segment_id": "nope", "fields_to_export": ["email"]}, headers={})
    assert sb.requests[n:] == [("POST", "/users/export/segment", 401)]


def test_temp_data_dir_removed_on_stop(tmp_path):
    sandbox = BrazeSandbox(KEY, [TINY], export_delay=0).start()
    d = sandbox.data_dir
    assert d.is_dir()
    sandbox.stop()
    assert not d.exists()
    with (
        BrazeSandbox(KEY, [TINY], export_delay=0, data_dir=tmp_path / "exports") as kept,
        requests.Session() as s,
    ):
        _download(s, _export(s, kept, TINY.segment_id, ["external_id"])["url"])
    assert len(list((tmp_path / "exports").glob("*.zip"))) == 1


def test_cli_runs_in_foreground():
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sandbox.braze_server",
            "--port",
            "0",
            "--api-key",
            KEY,
            "--quiet",
            "--segment",
            "seg_cli:20:malformed_every=5",
            "--delay",
            "0",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = proc.stdout.readline().strip().rsplit(" ", 1)[-1]
        assert url.startswith("http://127.0.0.1:")
        with requests.Session() as s:
            r = s.post(
                f"{url}/users/export/segment",
                headers=AUTH,
                timeout=10,
                json={"segment_id": "seg_cli", "fields_to_export": ["external_id"], "output_format": "gzip"},
            )
            assert r.status_code == 201, r.text
            data = gzip.decompress(_download(s, r.json()["url"]).content)
        assert data == b"".join(export_lines(SegmentSpec("seg_cli", 20, malformed_every=5), ["external_id"]))
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert proc.returncode == 0
