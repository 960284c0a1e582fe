"""Where Braze delivers a bucket export, and how: the customer's S3 bucket and the callback.

Braze docs, "Export users by segment": with cloud-storage credentials on the workspace, Braze
writes the export into *your* bucket and answers the POST with ``object_prefix`` but no ``url``;
when a ``callback_endpoint`` was given, it POSTs to it once the export is available. The
sandbox's bucket mode (``BrazeSandbox(..., bucket=S3Target(...))``, see
:mod:`sandbox.braze_exports`) writes with a plain S3 ``PutObject`` per file -- through ``boto3``
when it is importable, else :mod:`sandbox.s3_sigv4` (standard library, SigV4) -- to

``segment-export/<SEGMENT_ID>/<YYYY-MM-DD>/<object_prefix>/<object_prefix>-<N>.zip``
(``.json.gz`` with ``output_format: gzip``), ``N`` = 0, 1, 2, ... in export order.

The callback body is not documented by Braze; the sandbox sends
``{"segment_id": ..., "object_prefix": ..., "status": "completed", "file_count": N}`` as JSON
(plus ``"url"`` for an export by link), once, with a 10 s timeout and no retry.

Imports nothing from ``include/`` or ``plugins/``.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from dataclasses import dataclass

import orjson

from sandbox.s3_sigv4 import put_object

__all__ = ["OBJECT_EXTENSIONS", "BucketWriter", "S3Target", "object_key", "post_callback"]

OBJECT_EXTENSIONS = {"zip": ".zip", "gzip": ".json.gz"}
CALLBACK_TIMEOUT = 10.0


def object_key(segment_id: str, day: str, object_prefix: str, n: int, output_format: str) -> str:
    """The bucket key of file ``n`` of an export (``day`` is ``YYYY-MM-DD``)."""
    return f"segment-export/{segment_id}/{day}/{object_prefix}/{object_prefix}-{n}{OBJECT_EXTENSIONS[output_format]}"


@dataclass(frozen=True)
class S3Target:
    """The customer's bucket as Braze knows it (the workspace's S3 credentials).

    ``endpoint_url`` is the S3 API endpoint (a local moto server in tests); ``client`` is
    ``"auto"`` (boto3 if importable, else the standard-library signer), ``"boto3"`` or ``"stdlib"``.
    """

    endpoint_url: str
    bucket: str
    access_key: str
    secret_key: str
    region: str = "us-east-1"
    client: str = "auto"

    def __post_init__(self) -> None:
        if self.client not in ("auto", "boto3", "stdlib"):
            raise ValueError(f"client must be 'auto', 'boto3' or 'stdlib', got {self.client!r}")
        if not self.endpoint_url.startswith(("http://", "https://")) or not self.bucket:
            raise ValueError("endpoint_url must be an http(s) URL and bucket must not be empty")

    def __repr__(self) -> str:  # never show the secret
        return f"S3Target(endpoint_url={self.endpoint_url!r}, bucket={self.bucket!r}, client={self.client!r})"


class BucketWriter:
    """Puts objects into an :class:`S3Target`; thread-safe (one boto3 client, or one request each)."""

    def __init__(self, target: S3Target) -> None:
        self.target = target
        self._s3 = None
        if target.client != "stdlib":
            try:
                import boto3
                from botocore.config import Config
            except ImportError:
                if target.client == "boto3":
                    raise
            else:
                self._s3 = boto3.session.Session().client(
                    "s3",
                    endpoint_url=target.endpoint_url,
                    aws_access_key_id=target.access_key,
                    aws_secret_access_key=target.secret_key,
                    region_name=target.region,
                    config=Config(
                        s3={"addressing_style": "path"}, retries={"max_attempts": 3, "mode": "standard"}
                    ),
                )
        self.client = "boto3" if self._s3 is not None else "stdlib"

    def put(self, key: str, body: bytes, content_type: str) -> None:
        t = self.target
        if self._s3 is not None:
            self._s3.put_object(Bucket=t.bucket, Key=key, Body=body, ContentType=content_type)
        else:
            put_object(
                t.endpoint_url, t.bucket, key, body, content_type, t.access_key, t.secret_key, t.region
            )


def post_callback(url: str, payload: dict) -> int | str:
    """POST ``payload`` as JSON to ``url`` once; the HTTP status, or ``"<Error>: <detail>"``."""
    request = urllib.request.Request(
        url, data=orjson.dumps(payload), method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=CALLBACK_TIMEOUT) as resp:
            resp.read()
            return resp.status
    except urllib.error.HTTPError as e:
        return e.code
    except (OSError, ValueError) as e:
        return f"{type(e).__name__}: {e}"
