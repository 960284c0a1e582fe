"""A standard-library S3 ``PutObject`` with AWS Signature Version 4 (header auth, path-style URL).

Used by the Braze sandbox's bucket mode when ``boto3`` is not importable (or when asked to). It
follows AWS docs, "Authenticating Requests (AWS Signature Version 4)" / "Signature Calculations
for the Authorization Header": canonical request, string to sign, the derived signing key
(``AWS4`` + secret -> date -> region -> ``s3`` -> ``aws4_request``), and the signed payload hash
in ``x-amz-content-sha256``. :func:`authorization` is checked against the "GET Object" example
of the AWS docs in ``tests/sandbox``.

Imports nothing from ``include/`` or ``plugins/``.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
from datetime import UTC, datetime
from urllib.parse import quote, urlsplit

__all__ = ["authorization", "put_object"]


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def authorization(
    method: str,
    path: str,
    headers: dict[str, str],
    payload_sha256: str,
    access_key: str,
    secret_key: str,
    region: str,
    amz_date: str,
    query: str = "",
) -> str:
    """The ``Authorization`` header value; ``headers`` (lower-case names) are all signed.

    ``path`` must already be URI-encoded (each segment, ``/`` kept); ``query`` canonical.
    """
    names = sorted(headers)
    canonical_headers = "".join(f"{n}:{' '.join(headers[n].split())}\n" for n in names)
    signed = ";".join(names)
    canonical = "\n".join((method, path, query, canonical_headers, signed, payload_sha256))
    day = amz_date[:8]
    scope = f"{day}/{region}/s3/aws4_request"
    to_sign = "\n".join(("AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()))
    key = _hmac(_hmac(_hmac(_hmac(f"AWS4{secret_key}".encode(), day), region), "s3"), "aws4_request")
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    return f"AWS4-HMAC-SHA256 Credential={access_key}/{scope},SignedHeaders={signed},Signature={signature}"


def put_object(
    endpoint_url: str,
    bucket: str,
    key: str,
    body: bytes,
    content_type: str,
    access_key: str,
    secret_key: str,
    region: str,
    timeout: float = 30.0,
    now: datetime | None = None,
) -> None:
    """``PUT /<bucket>/<key>``; raises ``OSError`` on a transport error, ``RuntimeError`` on non-2xx."""
    url = urlsplit(endpoint_url)
    if url.scheme not in ("http", "https") or not url.hostname:
        raise ValueError(f"endpoint_url must be an http(s) URL, got {endpoint_url!r}")
    path = f"{url.path.rstrip('/')}/{quote(bucket, safe='')}/{quote(key, safe='/-_.~')}"
    amz_date = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    payload = hashlib.sha256(body).hexdigest()
    headers = {
        "host": url.netloc,
        "content-type": content_type,
        "x-amz-content-sha256": payload,
        "x-amz-date": amz_date,
    }
    headers["authorization"] = authorization(
        "PUT", path, headers, payload, access_key, secret_key, region, amz_date
    )
    conn_class = http.client.HTTPSConnection if url.scheme == "https" else http.client.HTTPConnection
    conn = conn_class(url.hostname, url.port, timeout=timeout)
    try:
        conn.request("PUT", path, body=body, headers={**headers, "content-length": str(len(body))})
        resp = conn.getresponse()
        answer = resp.read()
    finally:
        conn.close()
    if not 200 <= resp.status < 300:
        raise RuntimeError(f"PUT {bucket}/{key} answered {resp.status}: {answer[:300]!r}")
