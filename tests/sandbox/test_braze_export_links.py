"""The Braze sandbox's export link behaves like a pre-signed S3 GET link; multi-file names; faults."""

from __future__ import annotations

import gzip
import http.client
import io
import re
import time
import zipfile
import zlib
from urllib.parse import urlsplit

import orjson
import pytest
import requests

from sandbox.braze_server import BrazeSandbox
from sandbox.braze_users import SegmentSpec, export_lines
from tests.sandbox.callback_receiver import CallbackReceiver

pytestmark = pytest.mark.sandbox

KEY = "link-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
SEG = SegmentSpec("seg_link", 150)
REAL = SegmentSpec("seg_link_real", 12_000, realistic=True)
SIG_MESSAGE = (
    "The request signature we calculated does not match the signature you provided. "
    "Check your key and signing method."
)


def _xml(r: requests.Response) -> dict[str, str]:
    assert r.headers["Content-Type"] == "application/xml", r.headers
    assert r.content.startswith(b'<?xml version="1.0" encoding="UTF-8"?>\n<Error>'), r.content
    return dict(re.findall(r"<([A-Za-z-]+)>([^<]*)</\1>", r.text))


def _start(sb, segment_id=SEG.segment_id, fields=("external_id",), fmt="zip", **extra) -> dict:
    body = {"segment_id": segment_id, "fields_to_export": list(fields), "output_format": fmt, **extra}
    deadline = time.monotonic() + 10
    while (
        r := requests.post(f"{sb.url}/users/export/segment", json=body, headers=AUTH, timeout=10)
    ).status_code == 429:
        assert time.monotonic() < deadline, r.text  # the segment's previous export is still running
        time.sleep(0.05)
    assert r.status_code == 201, r.text
    return r.json()


def _ready(url: str, timeout: float = 10.0) -> requests.Response:
    deadline = time.monotonic() + timeout
    while (r := requests.get(url, timeout=30)).status_code != 200:
        assert r.status_code == 404 and time.monotonic() < deadline, r.text
        time.sleep(0.05)
    return r


@pytest.fixture(scope="module")
def sb():
    with BrazeSandbox(KEY, [SEG, REAL], export_delay=0.3, users_per_file=10) as sandbox:
        yield sandbox


# --------------------------------------------------------------------------- signature, readiness, expiry
def test_only_get_is_signed(sb):
    url = _start(sb)["url"]
    head = requests.head(url, timeout=10)
    assert head.status_code == 403 and head.content == b""  # HEAD: S3's headers, no body
    assert head.headers["Content-Type"] == "application/xml" and int(head.headers["Content-Length"]) > 0
    for method in ("POST", "PUT", "DELETE"):
        r = requests.request(method, url, timeout=10)
        assert r.status_code == 403
        err = _xml(r)
        assert (err["Code"], err["Message"]) == ("SignatureDoesNotMatch", SIG_MESSAGE)
        assert err["RequestId"] == r.headers["x-amz-request-id"]
    _ready(url)
    assert requests.head(url, timeout=10).status_code == 403  # ready or not
    tampered = url.replace("X-Amz-Expires=3600", "X-Amz-Expires=7200")
    assert _xml(requests.get(tampered, timeout=10))["Code"] == "SignatureDoesNotMatch"
    r = requests.get(urlsplit(url)._replace(query="").geturl(), timeout=10)  # unsigned: anonymous
    assert r.status_code == 403 and (_xml(r)["Code"], _xml(r)["Message"]) == ("AccessDenied", "Access Denied")


def test_not_ready_is_404_no_such_key_then_200(sb):
    res = _start(sb)
    r = requests.get(res["url"], timeout=10)
    assert r.status_code == 404
    err = _xml(r)
    assert (err["Code"], err["Message"]) == ("NoSuchKey", "The specified key does not exist.")
    assert int(r.headers["Content-Length"]) == len(r.content)
    assert _ready(res["url"]).headers["Content-Type"] == "application/zip"


def test_not_ready_can_be_403_access_denied():
    with BrazeSandbox(KEY, [SEG], export_delay=0.4, not_ready_status=403) as sandbox:
        url = _start(sandbox)["url"]
        r = requests.get(url, timeout=10)
        assert r.status_code == 403 and (_xml(r)["Code"], _xml(r)["Message"]) == (
            "AccessDenied",
            "Access Denied",
        )
        deadline = time.monotonic() + 10
        while (r := requests.get(url, timeout=10)).status_code == 403:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert r.status_code == 200
    with pytest.raises(ValueError):
        BrazeSandbox(KEY, not_ready_status=500)


def test_link_expires_link_ttl_after_the_post():
    with BrazeSandbox(KEY, [SEG], export_delay=0.2, link_ttl=1.0) as sandbox:
        posted = time.monotonic()
        url = _start(sandbox)["url"]
        assert "X-Amz-Expires=1&" in url
        assert _ready(url).status_code == 200
        time.sleep(max(0.0, posted + 1.05 - time.monotonic()))
        r = requests.get(url, timeout=10)
        assert r.status_code == 403
        err = _xml(r)
        assert (err["Code"], err["Message"]) == ("AccessDenied", "Request has expired")
        assert err["X-Amz-Expires"] == "1"
        for k in ("Expires", "ServerTime"):
            assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", err[k])
        assert err["ServerTime"] >= err["Expires"]
        assert requests.get(url, headers={"Range": "bytes=0-0"}, timeout=10).status_code == 403
    with BrazeSandbox(KEY, [SEG], export_delay=5, link_ttl=0.3) as sandbox:  # expired before ready
        url = _start(sandbox)["url"]
        time.sleep(0.35)
        assert _xml(requests.get(url, timeout=10))["Message"] == "Request has expired"


# --------------------------------------------------------------------------- ranges
def test_range_requests(sb):
    url = _start(sb, fmt="gzip")["url"]
    assert requests.get(url, headers={"Range": "bytes=0-0"}, timeout=10).status_code == 404  # not yet
    full = _ready(url).content
    size = len(full)
    assert full[:2] == b"\x1f\x8b"
    cases = {
        "bytes=0-0": (0, 0),
        "bytes=10-19": (10, 19),
        "bytes=-5": (size - 5, size - 1),
        f"bytes={size - 3}-": (size - 3, size - 1),
        f"bytes=5-{size + 100}": (5, size - 1),
    }
    for header, (first, last) in cases.items():
        r = requests.get(url, headers={"Range": header}, timeout=10)
        assert r.status_code == 206, header
        assert r.headers["Content-Range"] == f"bytes {first}-{last}/{size}"
        assert r.content == full[first : last + 1] and int(r.headers["Content-Length"]) == last - first + 1
    r = requests.get(url, headers={"Range": f"bytes={size}-"}, timeout=10)
    assert r.status_code == 416 and r.headers["Content-Range"] == f"bytes */{size}"
    assert _xml(r)["Code"] == "InvalidRange" and _xml(r)["ActualObjectSize"] == str(size)
    for ignored in ("bytes=0-1,5-6", "items=0-1", "bytes=9-3"):  # S3 sends the whole object
        r = requests.get(url, headers={"Range": ignored}, timeout=10)
        assert r.status_code == 200 and r.content == full
    assert r.headers["Accept-Ranges"] == "bytes" and re.fullmatch(r'"[0-9a-f]{32}"', r.headers["ETag"])


# --------------------------------------------------------------------------- download faults
def test_download_faults(sb):
    url = _ready(_start(sb)["url"]).url
    full = requests.get(url, timeout=10).content

    sb.fail_downloads(1, "empty")
    assert requests.get(url, headers={"Range": "bytes=0-0"}, timeout=10).status_code == 206  # not used up
    r = requests.get(url, timeout=10)
    assert r.status_code == 200 and r.content == b"" and r.headers["Content-Length"] == "0"
    assert requests.get(url, timeout=10).content == full

    sb.fail_downloads(2, "html")
    for _ in range(2):
        r = requests.get(url, timeout=10)
        assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/html")
        assert r.content.startswith(b"<!DOCTYPE html>")
    assert requests.get(url, timeout=10).content == full

    sb.fail_downloads(1, "truncated")
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        requests.get(url, timeout=10)
    sb.fail_downloads(1, "truncated")
    split = urlsplit(url)
    conn = http.client.HTTPConnection(split.hostname, split.port, timeout=10)
    conn.request("GET", f"{split.path}?{split.query}")
    resp = conn.getresponse()
    assert resp.status == 200 and int(resp.headers["Content-Length"]) == len(full)
    with pytest.raises(http.client.IncompleteRead) as exc:
        resp.read()
    assert exc.value.partial == full[: len(full) // 2]
    conn.close()
    with pytest.raises(ValueError):
        sb.fail_downloads(1, "slow")


def test_download_fault_for_one_export_only(sb):
    first = _start(sb)
    second = _start(sb, segment_id=REAL.segment_id)
    sb.fail_downloads(1, "empty", object_prefix=second["object_prefix"])
    assert _ready(first["url"]).content != b""
    assert _ready(second["url"]).content == b""
    assert requests.get(second["url"], timeout=10).content != b""


def test_export_post_answers_an_html_page(sb):
    sb.fail_next(1, "html", path="/users/export/segment")
    assert requests.get(f"{sb.url}/nowhere", timeout=10).status_code == 404  # other paths unaffected
    body = {"segment_id": SEG.segment_id, "fields_to_export": ["external_id"]}
    r = requests.post(f"{sb.url}/users/export/segment", json=body, headers=AUTH, timeout=10)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/html")
    assert r.content.startswith(b"<!DOCTYPE html>") and "X-RateLimit-Limit" not in r.headers
    time.sleep(0.35)
    assert _start(sb)["url"]


# --------------------------------------------------------------------------- multi-file names, callback
def test_zip_members_are_numbered_in_export_order(sb):
    res = _start(sb, segment_id=REAL.segment_id, fields=("external_id", "first_name", "custom_attributes"))
    prefix = res["object_prefix"]
    with zipfile.ZipFile(io.BytesIO(_ready(res["url"]).content)) as zf:
        names = zf.namelist()
        assert len(names) == 1_200
        numbers = [
            int(
                re.fullmatch(
                    rf"segment-export/{REAL.segment_id}/\d{{4}}-\d\d-\d\d/{prefix}/{prefix}-(\d+)\.json", n
                )[1]
            )
            for n in names
        ]
        assert numbers == list(range(1_200))
        assert sorted(names)[:3] != names[:3]  # string order puts -10 before -2: order by N
        data = b"".join(zf.read(n) for n in names)
    assert data == b"".join(export_lines(REAL, ["external_id", "first_name", "custom_attributes"]))
    assert all(orjson.loads(line) for line in data.splitlines(keepends=True)[:50])


def _gzip_member_names(data: bytes) -> list[str]:
    """The FNAME of each gzip member (RFC 1952), in order."""
    names = []
    while data:
        assert data[:3] == b"\x1f\x8b\x08" and data[3] & 0x08  # FNAME flag
        end = data.index(b"\0", 10)
        names.append(data[10:end].decode("latin-1"))
        d = zlib.decompressobj(wbits=31)
        d.decompress(data)
        data = d.unused_data
    return names


def test_gzip_members_are_named_in_export_order(sb):
    res = _start(sb, fmt="gzip")
    data = _ready(res["url"]).content
    prefix = res["object_prefix"]
    assert _gzip_member_names(data) == [f"{prefix}-{n}.json" for n in range(15)]
    assert gzip.decompress(data) == b"".join(export_lines(SEG, ["external_id"]))


def test_callback_for_an_export_by_link(sb):
    with CallbackReceiver() as cb:
        res = _start(sb, callback_endpoint=cb.url)
        (payload,) = cb.wait(1)
        assert payload == {
            "segment_id": SEG.segment_id,
            "object_prefix": res["object_prefix"],
            "status": "completed",
            "file_count": 15,
            "url": res["url"],
        }
        assert requests.get(res["url"], timeout=10).status_code == 200  # ready when called back
        info = sb.wait_export(res["object_prefix"])
        assert info.finished and info.callback_status == 200 and info.mode == "link"
    for bad in ("not a url", "ftp://x/y", 42):
        body = {"segment_id": SEG.segment_id, "fields_to_export": ["external_id"], "callback_endpoint": bad}
        r = requests.post(f"{sb.url}/users/export/segment", json=body, headers=AUTH, timeout=10)
        assert r.status_code == 400 and "callback_endpoint" in r.json()["message"]
