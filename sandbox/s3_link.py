"""What a pre-signed S3 GET link answers: the download side of a Braze export by link.

Braze's export link is a pre-signed Amazon S3 URL (Braze docs, "Export users by segment"), so the
sandbox answers it the way S3 answers any SigV4 query-string-authenticated request (AWS docs,
"Sharing objects with presigned URLs"; "Authenticating Requests: Using Query Parameters (AWS
Signature Version 4)"; "GetObject"; "Error responses"):

* The link carries ``X-Amz-Algorithm``, ``X-Amz-Credential``, ``X-Amz-Date``, ``X-Amz-Expires``,
  ``X-Amz-SignedHeaders`` and ``X-Amz-Signature``. The signature covers the **HTTP method**, the
  path and the other query parameters, so the same link used with ``HEAD`` (or any method but
  ``GET``), or with a query parameter changed or dropped, gets ``403 SignatureDoesNotMatch``; a
  request without ``X-Amz-Signature`` is anonymous and gets ``403 AccessDenied`` "Access Denied".
  (The sandbox signs with a random per-sandbox secret: only the shape is S3's, not the algorithm.)
* Errors are XML (``Content-Type: application/xml``): ``<Error><Code>..</Code><Message>..</Message>
  ...<RequestId>..</RequestId><HostId>..</HostId></Error>``, plus S3's ``x-amz-request-id`` and
  ``x-amz-id-2`` headers. A ``HEAD`` answer has the headers but, as HTTP requires, no body.
* ``Range: bytes=a-b``, ``bytes=a-`` and ``bytes=-n`` select one range: ``206`` with
  ``Content-Range: bytes a-b/size``. A range starting at or past the end (or any range of an
  empty object) is ``416 InvalidRange`` with ``Content-Range: bytes */size``. S3 serves one range
  per request: a multi-range or malformed header is ignored and the whole object is sent (RFC 9110
  allows ignoring Range).

Imports nothing from ``include/`` or ``plugins/``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from datetime import UTC, datetime
from urllib.parse import parse_qsl, quote, urlencode
from xml.sax.saxutils import escape

from sandbox.braze_http import Response

__all__ = ["UNSATISFIABLE", "LinkSigner", "parse_range", "s3_error", "s3_headers", "utc_iso"]

UNSATISFIABLE = "unsatisfiable"
_RANGE_RE = re.compile(r"bytes=(\d*)-(\d*)")
_SIGNATURE = "X-Amz-Signature"


def utc_iso(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def s3_headers() -> dict[str, str]:
    """The request-id headers every S3 answer carries."""
    return {
        "x-amz-request-id": secrets.token_hex(8).upper(),
        "x-amz-id-2": base64.b64encode(secrets.token_bytes(48)).decode(),
    }


def s3_error(status: int, code: str, message: str, **extra: str) -> Response:
    """An S3 REST error: XML body, ``application/xml``, S3's request-id headers."""
    headers = s3_headers()
    fields = "".join(
        f"<{k.replace('_', '-')}>{escape(str(v))}</{k.replace('_', '-')}>" for k, v in extra.items()
    )
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{escape(message)}</Message>{fields}"
        f"<RequestId>{headers['x-amz-request-id']}</RequestId><HostId>{headers['x-amz-id-2']}</HostId></Error>"
    ).encode()
    return Response(status, body, headers, content_type="application/xml")


def parse_range(header: str | None, size: int) -> tuple[int, int] | str | None:
    """``(first, last)`` byte positions (inclusive), :data:`UNSATISFIABLE`, or None (send it all)."""
    if not header:
        return None
    m = _RANGE_RE.fullmatch(header.strip())
    if m is None or (not m.group(1) and not m.group(2)):
        return None  # malformed or multi-range: ignored, like S3
    if not m.group(1):  # suffix: the last n bytes
        n = int(m.group(2))
        if n == 0 or size == 0:
            return UNSATISFIABLE
        return max(0, size - n), size - 1
    first = int(m.group(1))
    last = int(m.group(2)) if m.group(2) else size - 1
    if m.group(2) and last < first:
        return None  # syntactically invalid: ignored
    if first >= size:
        return UNSATISFIABLE
    return first, min(last, size - 1)


class LinkSigner:
    """Signs and checks the sandbox's pre-signed GET links (S3's query-parameter shape)."""

    def __init__(self, region: str = "us-east-1") -> None:
        self._secret = secrets.token_bytes(32)
        self.access_key_id = "AKIA" + secrets.token_hex(8).upper()
        self.region = region

    def _signature(self, method: str, path: str, params: list[tuple[str, str]]) -> str:
        canonical = urlencode(sorted(params), quote_via=quote, safe="-_.~")
        text = f"{method}\n{path}\n{canonical}".encode()
        return hmac.new(self._secret, text, hashlib.sha256).hexdigest()

    def presign(self, path: str, signed_at: datetime, expires_seconds: int) -> str:
        """The query string that makes ``path`` a GET link valid for ``expires_seconds``."""
        params = [
            ("X-Amz-Algorithm", "AWS4-HMAC-SHA256"),
            ("X-Amz-Credential", f"{self.access_key_id}/{signed_at:%Y%m%d}/{self.region}/s3/aws4_request"),
            ("X-Amz-Date", f"{signed_at.astimezone(UTC):%Y%m%dT%H%M%SZ}"),
            ("X-Amz-Expires", str(expires_seconds)),
            ("X-Amz-SignedHeaders", "host"),
        ]
        params.append((_SIGNATURE, self._signature("GET", path, params)))
        return urlencode(params, quote_via=quote, safe="-_.~")

    def refuse(self, method: str, path: str, query: str) -> Response | None:
        """The 403 for a request the link's signature does not cover, or None if it is covered."""
        params = parse_qsl(query, keep_blank_values=True)
        given = [v for k, v in params if k == _SIGNATURE]
        if not given:
            return s3_error(403, "AccessDenied", "Access Denied")
        expected = self._signature(method, path, [(k, v) for k, v in params if k != _SIGNATURE])
        if len(given) != 1 or not hmac.compare_digest(given[0], expected):
            return s3_error(
                403,
                "SignatureDoesNotMatch",
                "The request signature we calculated does not match the signature you provided. "
                "Check your key and signing method.",
                AWSAccessKeyId=self.access_key_id,
                SignatureProvided=given[0],
            )
        return None
