"""A real S3 API server for tests: moto's server mode (``ThreadedMotoServer``) on a loopback port.

moto's server mode answers the S3 REST API over real HTTP (moto docs, "Server mode"), so code
under test talks to it exactly as to S3: SigV4-signed requests from boto3 (path-style addressing,
``endpoint_url`` = :attr:`S3Server.endpoint_url`), or plain HTTP. It runs in a thread of the test
process; buckets live in memory until the server stops. moto accepts any credentials: the ones
handed out here are fixed dummies.

Use the ``s3_server`` (session) and ``s3_bucket`` (a fresh empty bucket per test) fixtures from
``tests/conftest.py``, or directly::

    with S3Server() as s3:
        bucket = s3.new_bucket()
        bucket.client().put_object(Bucket=bucket.name, Key="k", Body=b"v")
"""

from __future__ import annotations

import itertools
import logging
import os
import urllib.request
from dataclasses import dataclass
from functools import cached_property

__all__ = ["S3Bucket", "S3Server", "S3Unavailable"]

ACCESS_KEY = "AKIAMOTOTESTKEY00001"
SECRET_KEY = "moto-test-secret-key-not-a-real-one"  # noqa: S105 - a dummy for a local fake
REGION = "us-east-1"
_names = itertools.count()


class S3Unavailable(RuntimeError):
    """moto's server mode (``moto[server]``) is not installed."""


@dataclass(frozen=True)
class S3Bucket:
    """One bucket on an :class:`S3Server`: where it is and how to reach it."""

    endpoint_url: str
    name: str
    access_key: str = ACCESS_KEY
    secret_key: str = SECRET_KEY
    region: str = REGION

    @property
    def bucket(self) -> str:
        return self.name

    def client(self):
        """A boto3 S3 client for this server (path-style addressing); one per bucket object."""
        return self._client

    @cached_property
    def _client(self):
        return _client(self.endpoint_url, self.access_key, self.secret_key, self.region)

    def keys(self, prefix: str = "") -> list[str]:
        """Every key under ``prefix``, in S3's (lexicographic) order, across pages."""
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=self.name, Prefix=prefix)
        return [o["Key"] for page in pages for o in page.get("Contents", [])]

    def get(self, key: str) -> bytes:
        return self.client().get_object(Bucket=self.name, Key=key)["Body"].read()


def _client(endpoint_url: str, access_key: str, secret_key: str, region: str):
    import boto3
    from botocore.config import Config

    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint_url,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        region_name=region,
        config=Config(s3={"addressing_style": "path"}),
    )


def check_available() -> None:
    try:
        import boto3  # noqa: F401
        from moto.server import ThreadedMotoServer  # noqa: F401
    except ImportError as e:
        raise S3Unavailable(
            f"moto server mode is not installed ({e}); pip install -r requirements-dev.txt"
        ) from e


class S3Server:
    """moto's S3 API on ``http://127.0.0.1:<free port>``; ``start()``/``stop()`` or a context manager."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self._server = None
        self.endpoint_url = ""

    def start(self) -> S3Server:
        check_available()
        from moto.server import ThreadedMotoServer

        # moto reads these when it builds an S3 backend; keep real AWS settings out of its way.
        os.environ.setdefault("AWS_DEFAULT_REGION", REGION)
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request on stderr
        server = ThreadedMotoServer(ip_address=self.host, port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        self._server = server
        self.endpoint_url = f"http://{host}:{port}"
        with urllib.request.urlopen(f"{self.endpoint_url}/moto-api/data.json", timeout=10) as resp:
            resp.read()  # it answers: ready
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.stop()

    def __enter__(self) -> S3Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def new_bucket(self, name: str | None = None) -> S3Bucket:
        """Create a bucket (a fresh unique name unless given) and return it."""
        if self._server is None:
            raise RuntimeError("S3Server is not started")
        bucket = S3Bucket(self.endpoint_url, name or f"test-bucket-{os.getpid()}-{next(_names)}")
        bucket.client().create_bucket(Bucket=bucket.name)
        return bucket
