"""Bucket exports of the Braze sandbox, written into a real S3 API server (moto) and read with boto3."""

from __future__ import annotations

import gzip
import io
import time
import zipfile
from datetime import UTC, datetime, timedelta

import orjson
import pytest
import requests

from sandbox.braze_server import BrazeSandbox, S3Target
from sandbox.braze_users import DUPLICATE, SegmentSpec, expected_rows, export_lines
from sandbox.s3_sigv4 import authorization
from tests.sandbox.callback_receiver import CallbackReceiver

pytestmark = pytest.mark.sandbox

KEY = "bucket-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
REAL = SegmentSpec("seg_bucket", 12_000, realistic=True, seed=5)
SMALL = SegmentSpec("seg_bucket_small", 40)
EMPTY = SegmentSpec("seg_bucket_empty", 0)
FIELDS = ["external_id", "email", "custom_attributes"]


def target(bucket, **kw) -> S3Target:
    return S3Target(bucket.endpoint_url, bucket.name, bucket.access_key, bucket.secret_key, **kw)


def start(sb, spec, fields=FIELDS, **extra) -> dict:
    body = {"segment_id": spec.segment_id, "fields_to_export": fields, **extra}
    r = requests.post(f"{sb.url}/users/export/segment", json=body, headers=AUTH, timeout=10)
    assert r.status_code == 201, r.text
    return r.json()


def numbered(keys: list[str]) -> list[str]:
    """Keys in export order: by the number after the last '-', as a number."""
    return sorted(keys, key=lambda k: int(k.rsplit("-", 1)[1].split(".", 1)[0]))


def test_zip_objects_one_per_file_in_the_day_directory(s3_bucket):
    with BrazeSandbox(KEY, [REAL], export_delay=0.1, users_per_file=1_000, bucket=target(s3_bucket)) as sb:
        res = start(sb, REAL)
        assert set(res) == {"message", "object_prefix"} and res["message"] == "success"  # no url
        prefix = res["object_prefix"]
        info = sb.wait_export(prefix)
    assert info.mode == "bucket" and info.error is None and info.files == 12 and info.callback_status is None
    assert info.day == datetime.now(UTC).date().isoformat()
    base = f"segment-export/{REAL.segment_id}/{info.day}/{prefix}/{prefix}"
    expected = [f"{base}-{n}.zip" for n in range(12)]
    assert list(info.keys) == expected
    listed = s3_bucket.keys("segment-export/")
    assert sorted(listed) == sorted(expected) and listed != expected  # S3 lists -10 before -2
    data = []
    for n, key in enumerate(numbered(listed)):
        with zipfile.ZipFile(io.BytesIO(s3_bucket.get(key))) as zf:
            assert zf.namelist() == [f"{prefix}-{n}.json"]
            data.append(zf.read(f"{prefix}-{n}.json"))
    assert [d.count(b"\n") for d in data] == [1_000] * 12
    assert b"".join(data) == b"".join(export_lines(REAL, FIELDS))
    # Realistic duplicates: the first occurrence is always in an earlier object.
    dups = [r for r in expected_rows(REAL, FIELDS, users=False) if r.status == DUPLICATE]
    assert dups and all(r.first_index // 1_000 < r.index // 1_000 for r in dups)
    for r in dups[:5]:
        first = orjson.loads(data[r.first_index // 1_000].splitlines()[r.first_index % 1_000])
        later = orjson.loads(data[r.index // 1_000].splitlines()[r.index % 1_000])
        assert first["external_id"] == later["external_id"] == r.external_id and first != later


@pytest.mark.parametrize("client", ["boto3", "stdlib"])
def test_gzip_objects(s3_bucket, client):
    with BrazeSandbox(
        KEY, [SMALL], export_delay=0, users_per_file=3, bucket=target(s3_bucket, client=client)
    ) as sb:
        prefix = start(sb, SMALL, ["external_id", "first_name"], output_format="gzip")["object_prefix"]
        info = sb.wait_export(prefix)
    assert info.files == 14 and info.error is None
    keys = numbered(s3_bucket.keys(f"segment-export/{SMALL.segment_id}/{info.day}/{prefix}/"))
    assert keys == [
        f"segment-export/{SMALL.segment_id}/{info.day}/{prefix}/{prefix}-{n}.json.gz" for n in range(14)
    ]
    bodies = [s3_bucket.get(k) for k in keys]
    for n, body in enumerate(bodies):
        assert body[10:].startswith(f"{prefix}-{n}.json\0".encode())  # the member's FNAME
    assert b"".join(gzip.decompress(b) for b in bodies) == b"".join(
        export_lines(SMALL, ["external_id", "first_name"])
    )


def test_finished_day_can_be_the_day_after_the_request(s3_bucket):
    tomorrow = datetime.now(UTC).date() + timedelta(days=1)
    with BrazeSandbox(
        KEY,
        [SMALL],
        export_delay=0,
        users_per_file=10,
        bucket=target(s3_bucket),
        finished_day=lambda: tomorrow,
    ) as sb:
        prefix = start(sb, SMALL)["object_prefix"]
        info = sb.wait_export(prefix)
    assert info.day == tomorrow.isoformat()
    today = datetime.now(UTC).date().isoformat()
    assert s3_bucket.keys(f"segment-export/{SMALL.segment_id}/{today}/") == []
    assert len(s3_bucket.keys(f"segment-export/{SMALL.segment_id}/{tomorrow.isoformat()}/{prefix}/")) == 4


def test_objects_appear_one_by_one_and_the_callback_comes_last(s3_bucket):
    with (
        CallbackReceiver() as cb,
        BrazeSandbox(
            KEY,
            [SMALL],
            export_delay=1.0,
            users_per_file=10,
            bucket=target(s3_bucket),
            bucket_object_interval=0.5,
        ) as sb,
    ):
        prefix = start(sb, SMALL, callback_endpoint=cb.url)["object_prefix"]
        where = f"segment-export/{SMALL.segment_id}/"
        assert s3_bucket.keys(where) == []  # nothing before export_delay
        seen = []
        deadline = time.monotonic() + 20
        while not sb.export_info(prefix).finished:
            assert time.monotonic() < deadline
            count = len(s3_bucket.keys(where))
            if not seen or seen[-1] != count:
                seen.append(count)
                if count < 4:
                    assert cb.calls == []  # no callback while objects are still being written
                    r = requests.post(
                        f"{sb.url}/users/export/segment",
                        headers=AUTH,
                        timeout=10,
                        json={"segment_id": SMALL.segment_id, "fields_to_export": ["external_id"]},
                    )
                    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1  # still in progress
            time.sleep(0.05)
        if seen[-1] != 4:  # the last object and the callback came between two looks
            seen.append(len(s3_bucket.keys(where)))
        (payload,) = cb.wait(1)
        info = sb.export_info(prefix)
    assert seen[0] == 0 and seen[-1] == 4 and len(seen) >= 3 and seen == sorted(seen)
    assert payload == {
        "segment_id": SMALL.segment_id,
        "object_prefix": prefix,
        "status": "completed",
        "file_count": 4,
    }
    assert info.callback_status == 200 and len(info.keys) == 4
    path, headers, _ = cb.calls[0]
    assert path == "/braze/export-done" and headers["Content-Type"] == "application/json"


def test_empty_segment_writes_no_object(s3_bucket):
    with CallbackReceiver() as cb, BrazeSandbox(KEY, [EMPTY], export_delay=0, bucket=target(s3_bucket)) as sb:
        prefix = start(sb, EMPTY, callback_endpoint=cb.url)["object_prefix"]
        assert cb.wait(1)[0]["file_count"] == 0
        assert sb.wait_export(prefix).keys == ()
    assert s3_bucket.keys() == []


def test_drop_callbacks_loses_the_call_but_not_the_export(s3_bucket):
    """Braze's callback is best effort: the knob loses it, as a network problem would; the objects still land."""
    with CallbackReceiver() as cb, BrazeSandbox(KEY, [SMALL], export_delay=0, users_per_file=10,
                                                bucket=target(s3_bucket), drop_callbacks=True) as sb:
        prefix = start(sb, SMALL, callback_endpoint=cb.url)["object_prefix"]
        info = sb.wait_export(prefix)
        assert info.finished and info.callback_status == "dropped" and len(info.keys) == 4
        sb.exports.drop_callbacks = False  # settable on a running sandbox
        prefix = start(sb, SMALL, callback_endpoint=cb.url)["object_prefix"]
        assert cb.wait(1)[0]["object_prefix"] == prefix  # only the second export called back
        assert sb.wait_export(prefix).callback_status == 200 and len(cb.calls) == 1


def test_a_missing_bucket_fails_the_export(s3_bucket):
    missing = S3Target(s3_bucket.endpoint_url, "no-such-bucket", s3_bucket.access_key, s3_bucket.secret_key)
    with CallbackReceiver() as cb, BrazeSandbox(KEY, [SMALL], export_delay=0, bucket=missing) as sb:
        prefix = start(sb, SMALL, callback_endpoint=cb.url)["object_prefix"]
        info = sb.wait_export(prefix)
        assert "NoSuchBucket" in info.error and info.keys == () and cb.calls == []  # no callback
        assert start(sb, SMALL)["object_prefix"]  # a failed export does not block the next one


def test_stdlib_signer_matches_the_aws_example():
    # AWS docs, "Signature Calculations for the Authorization Header", example "GET Object".
    empty = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    headers = {
        "host": "examplebucket.s3.amazonaws.com",
        "range": "bytes=0-9",
        "x-amz-content-sha256": empty,
        "x-amz-date": "20130524T000000Z",
    }
    auth = authorization(
        "GET",
        "/test.txt",
        headers,
        empty,
        "AKIAIOSFODNN7EXAMPLE",
        "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        "us-east-1",
        "20130524T000000Z",
    )
    assert auth == (
        "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,"
        "SignedHeaders=host;range;x-amz-content-sha256;x-amz-date,"
        "Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
    )


def test_s3_target_validation_and_repr():
    with pytest.raises(ValueError):
        S3Target("s3.example", "b", "a", "s")
    with pytest.raises(ValueError):
        S3Target("http://127.0.0.1:1", "b", "a", "s", client="aws-cli")
    assert "secret" not in repr(S3Target("http://127.0.0.1:1", "b", "AKIA", "secret"))
