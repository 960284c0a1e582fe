"""Segment export jobs of the Braze sandbox: ``POST /users/export/segment`` and the download links.

Modelled on Braze docs, "POST: Export user profile by segment" (``/users/export/segment``):

* The POST (after auth and the rate limit, which ``BrazeSandbox`` checks) takes a JSON object
  with ``segment_id``, ``fields_to_export`` (required, a non-empty list of strings),
  ``output_format`` (``zip``, the default, or ``gzip``) and an optional ``callback_endpoint``
  string (accepted, never called); it answers ``201 {"message": "success", "object_prefix":
  ..., "url": ...}``. One export per segment at a time (429 + ``Retry-After`` while one is in
  progress) and at most ``MAX_CONCURRENT_EXPORTS`` running at once (429).
* ``GET|HEAD /exports/<token>.zip|.gz`` imitates the pre-signed S3 URL: no auth, 404 until
  ``export_delay`` seconds after the POST, then the file. Files are generated lazily, once per
  export, onto disk (bounded memory) and streamed from there: a zip holds one
  ``<object_prefix>-<n>.json`` member per ``USERS_PER_FILE`` users, a gzip file one gzip member
  per ``USERS_PER_FILE`` users (an empty segment gives one empty member).
"""

from __future__ import annotations

import gzip
import itertools
import math
import os
import re
import secrets
import threading
import time
import uuid
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from sandbox.braze_http import Response, json_object, json_response
from sandbox.braze_users import SegmentSpec, export_lines
from sandbox.rate_window import SlidingWindowLimiter

__all__ = ["DOWNLOAD_RE", "EXPORT_PATH", "OUTPUT_FORMATS", "RATE_LIMIT", "RATE_WINDOW", "SegmentExports"]

EXPORT_PATH = "/users/export/segment"
RATE_LIMIT = 250_000  # requests per hour for /users/export/segment
RATE_WINDOW = 3600.0
USERS_PER_FILE = 5_000
MAX_CONCURRENT_EXPORTS = 100  # per company
OUTPUT_FORMATS = {"zip": ("zip", "application/zip"), "gzip": ("gz", "application/gzip")}

DOWNLOAD_RE = re.compile(r"^/exports/([A-Za-z0-9_-]{32,})\.(zip|gz)$")


@dataclass
class _Export:
    token: str
    spec: SegmentSpec
    fields: list[str]
    output_format: str  # "zip" | "gzip"
    object_prefix: str
    day: str  # YYYY-MM-DD (UTC) of the request
    ready_at: float  # time.monotonic()
    path: Path
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def ext(self) -> str:
        return OUTPUT_FORMATS[self.output_format][0]


class SegmentExports:
    """The segments one sandbox can export, the exports requested so far, and their files.

    ``lock`` is the sandbox-wide lock (it guards this state, too); ``base_url`` returns the
    sandbox's URL (download links point there); ``data_dir`` must be set before the first
    export is requested. ``limiter`` is the endpoint's rate limit (250,000 requests per hour).
    """

    def __init__(
        self,
        lock: threading.Lock,
        base_url: Callable[[], str],
        export_delay: float = 2.0,
        rate_limit: int = RATE_LIMIT,
    ) -> None:
        self._lock = lock
        self._base_url = base_url
        self.export_delay = float(export_delay)
        self.data_dir: Path | None = None
        self._segments: dict[str, SegmentSpec] = {}
        self._exports: dict[str, _Export] = {}  # token -> export
        self._latest: dict[str, _Export] = {}  # segment_id -> most recent export
        self.limiter = SlidingWindowLimiter(rate_limit, RATE_WINDOW)
        self.files_generated = 0  # how many export files were written (each export at most once)

    def add_segment(self, spec: SegmentSpec) -> None:
        """Add (or replace) a segment. Exports already requested keep the spec they were made with."""
        with self._lock:
            self._segments[spec.segment_id] = spec

    def request(self, authorized: bool, headers, body: bytes) -> Response:
        """``POST /users/export/segment``: auth, rate limit, validation, then a new export job."""
        if not authorized:
            return json_response(401, {"message": "Invalid API key"}, **self.limiter.peek())

        allowed, rl_headers, retry = self.limiter.hit()
        if not allowed:
            return json_response(
                429, {"message": "Rate limit exceeded"}, **rl_headers, **{"Retry-After": str(retry)}
            )

        def bad(message: str) -> Response:
            return json_response(400, {"message": message}, **rl_headers)

        payload, problem = json_object(headers, body)
        if problem:
            return bad(problem)

        segment_id = payload.get("segment_id")
        if not isinstance(segment_id, str) or not segment_id:
            return bad("segment_id is required and must be a string")
        fields = payload.get("fields_to_export")
        if fields is None:
            return bad("fields_to_export is required")
        if not isinstance(fields, list) or not fields or not all(isinstance(f, str) and f for f in fields):
            return bad("fields_to_export must be a non-empty array of field name strings")
        output_format = payload.get("output_format", "zip")
        if not isinstance(output_format, str) or output_format not in OUTPUT_FORMATS:
            return bad(f"Invalid output_format: {output_format!r} (expected 'zip' or 'gzip')")
        callback = payload.get("callback_endpoint")
        if callback is not None and not isinstance(callback, str):
            return bad("callback_endpoint must be a string")

        now = time.monotonic()
        with self._lock:
            spec = self._segments.get(segment_id)
            if spec is None:
                return bad(f"Invalid segment_id: {segment_id}")
            previous = self._latest.get(segment_id)
            if previous is not None and now < previous.ready_at:
                retry = max(1, math.ceil(previous.ready_at - now))
                return json_response(
                    429,
                    {"message": "An export for this segment is already in progress"},
                    **rl_headers,
                    **{"Retry-After": str(retry)},
                )
            running = sum(1 for e in self._latest.values() if now < e.ready_at)
            if running >= MAX_CONCURRENT_EXPORTS:
                return json_response(
                    429, {"message": "Too many concurrent exports"}, **rl_headers, **{"Retry-After": "1"}
                )
            token = secrets.token_urlsafe(48)
            object_prefix = f"{uuid.uuid4()}-{int(time.time())}"
            export = _Export(
                token=token,
                spec=spec,
                fields=list(fields),
                output_format=output_format,
                object_prefix=object_prefix,
                day=datetime.now(UTC).strftime("%Y-%m-%d"),
                ready_at=now + self.export_delay,
                path=self.data_dir / f"{token}.{OUTPUT_FORMATS[output_format][0]}",
            )
            self._exports[token] = export
            self._latest[segment_id] = export
        return json_response(
            201,
            {
                "message": "success",
                "object_prefix": object_prefix,
                "url": f"{self._base_url()}/exports/{token}.{export.ext}",
            },
            **rl_headers,
        )

    def download(self, token: str, ext: str) -> Response:
        """``GET|HEAD /exports/<token>.<ext>``: 404 until the export is ready, then its file."""
        with self._lock:
            export = self._exports.get(token)
        if export is None or export.ext != ext or time.monotonic() < export.ready_at:
            return json_response(404, {"message": "The specified key does not exist."})
        self._materialise(export)
        return Response(200, file=export.path, content_type=OUTPUT_FORMATS[export.output_format][1])

    def _materialise(self, export: _Export) -> None:
        """Write the export file once (first request after readiness); others wait on the lock."""
        with export.lock:
            if export.path.exists():
                return
            tmp = export.path.with_name(export.path.name + ".part")
            chunks = _chunks(export_lines(export.spec, export.fields), USERS_PER_FILE)
            if export.output_format == "zip":
                base = f"segment-export/{export.spec.segment_id}/{export.day}/{export.object_prefix}"
                with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
                    for n, chunk in enumerate(chunks):
                        zf.writestr(f"{base}/{export.object_prefix}-{n}.json", b"".join(chunk))
            else:
                with open(tmp, "wb") as f:
                    wrote = False
                    for chunk in chunks:
                        f.write(gzip.compress(b"".join(chunk), compresslevel=1, mtime=0))
                        wrote = True
                    if not wrote:  # empty segment: one empty member, still a valid gzip stream
                        f.write(gzip.compress(b"", mtime=0))
            os.replace(tmp, export.path)
            with self._lock:
                self.files_generated += 1


def _chunks(lines: Iterable[bytes], size: int):
    it = iter(lines)
    while chunk := list(itertools.islice(it, size)):
        yield chunk
