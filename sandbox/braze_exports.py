"""Segment export jobs of the Braze sandbox: ``POST /users/export/segment``, links and bucket writes.

Modelled on Braze docs, "Export users by segment" (``/users/export/segment``), and, for the
download link, on Amazon S3's pre-signed URLs (see :mod:`sandbox.s3_link`):

* The POST (after auth and the rate limit, which ``BrazeSandbox`` checks) takes a JSON object with
  ``segment_id``, ``fields_to_export`` (required, a non-empty list of strings), ``output_format``
  (``zip``, the default, or ``gzip``) and an optional ``callback_endpoint`` (an absolute http(s)
  URL). One export per segment at a time (429 + ``Retry-After`` while one is in progress) and at
  most ``MAX_CONCURRENT_EXPORTS`` running at once (429). ``object_prefix`` is a random UUID plus
  the export's start time (epoch seconds).
* **By link** (no bucket): ``201 {"message": "success", "object_prefix": ..., "url": ...}``. The
  URL is ``<sandbox>/exports/<token>.zip|.gz?X-Amz-...`` and behaves like a pre-signed S3 GET
  link: any method but ``GET`` -> ``403 SignatureDoesNotMatch``; before the export is ready
  (``export_delay`` seconds after the POST) -> ``404 NoSuchKey``, or ``403 AccessDenied`` with
  ``not_ready_status=403`` (S3's answer when the signer may not list the bucket); ``link_ttl``
  seconds after the POST -> ``403 AccessDenied`` "Request has expired" (with ``<Expires>`` and
  ``<ServerTime>``), ready or not; ``Range`` requests -> ``206``. The file is generated once, on
  the first GET after readiness, onto disk (bounded memory) and streamed from there
  (:mod:`sandbox.braze_export_files`). Download faults: :class:`sandbox.braze_faults.DownloadFaults`.
* **To a bucket** (``bucket=S3Target(...)``): ``201 {"message": "success", "object_prefix": ...}``
  and no ``url``. ``export_delay`` seconds after the POST a background thread takes the export's
  finished day from ``finished_day()`` (UTC today by default) and PUTs the objects one by one,
  ``bucket_object_interval`` seconds apart, to
  ``segment-export/<SEGMENT_ID>/<YYYY-MM-DD>/<object_prefix>/<object_prefix>-<N>.zip|.json.gz``
  (:mod:`sandbox.braze_bucket`). No completion marker is written.
* If the POST had a ``callback_endpoint``, the sandbox POSTs a small JSON to it once the export
  is available (by link: when ready, with the ``url``; bucket: after the last object), see
  :func:`sandbox.braze_bucket.post_callback`: once, best effort, no retry (a failure is only
  recorded in ``callback_status``). ``drop_callbacks=True`` (also settable on the instance) loses
  every callback instead (``callback_status == "dropped"``), to test what waits for one.

:meth:`SegmentExports.info` / ``BrazeSandbox.export_info(object_prefix)`` tell a test what an
export did (day, keys written, callback status); ``wait_export`` waits for it to finish.
"""

from __future__ import annotations

import math
import re
import secrets
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

from sandbox.braze_bucket import BucketWriter, S3Target, object_key, post_callback
from sandbox.braze_export_files import CONTENT_TYPES, USERS_PER_FILE, chunks, object_body
from sandbox.braze_export_link import OUTPUT_FORMATS, ExportJob, LinkDownloads
from sandbox.braze_faults import DownloadFaults
from sandbox.braze_http import Response, json_object, json_response
from sandbox.braze_users import SegmentSpec, export_lines
from sandbox.rate_window import SlidingWindowLimiter
from sandbox.s3_link import LinkSigner

__all__ = [
    "DOWNLOAD_RE",
    "EXPORT_PATH",
    "OUTPUT_FORMATS",
    "RATE_LIMIT",
    "RATE_WINDOW",
    "USERS_PER_FILE",
    "ExportInfo",
    "SegmentExports",
]

EXPORT_PATH = "/users/export/segment"
RATE_LIMIT = 250_000  # requests per hour for /users/export/segment
RATE_WINDOW = 3600.0
MAX_CONCURRENT_EXPORTS = 100  # per company
DOWNLOAD_RE = re.compile(r"^/exports/([A-Za-z0-9_-]{32,})\.(zip|gz)$")


@dataclass(frozen=True)
class ExportInfo:
    """A snapshot of one export, for tests (``BrazeSandbox.export_info``)."""

    segment_id: str
    object_prefix: str
    output_format: str
    mode: str  # "link" | "bucket"
    url: str | None
    day: str | None  # YYYY-MM-DD the export finished (bucket: set when writing starts)
    keys: tuple[str, ...]  # bucket objects written so far, in order (file 0, 1, ...)
    files: int  # number of files: ceil(size / users_per_file) (0 for an empty segment)
    finished: bool  # all data written (bucket) / ready (link), and the callback sent if any
    error: str | None  # why writing to the bucket failed
    callback_status: int | str | None  # the callback's HTTP status, or the error; None: not sent


class SegmentExports(LinkDownloads):
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
        *,
        users_per_file: int = USERS_PER_FILE,
        link_ttl: float = 3600.0,
        not_ready_status: int = 404,
        bucket: S3Target | None = None,
        bucket_object_interval: float = 0.0,
        finished_day: Callable[[], date] | None = None,
        drop_callbacks: bool = False,
    ) -> None:
        if not isinstance(users_per_file, int) or users_per_file < 1:
            raise ValueError(f"users_per_file must be an int >= 1, got {users_per_file!r}")
        if not link_ttl > 0:
            raise ValueError(f"link_ttl must be > 0 seconds, got {link_ttl!r}")
        if not_ready_status not in (403, 404):
            raise ValueError(
                f"not_ready_status must be 404 (NoSuchKey) or 403 (AccessDenied), got {not_ready_status!r}"
            )
        if bucket_object_interval < 0:
            raise ValueError("bucket_object_interval must be >= 0")
        self._lock = lock
        self._base_url = base_url
        self.export_delay = float(export_delay)
        self.users_per_file = users_per_file
        self.link_ttl = float(link_ttl)
        self.not_ready_status = not_ready_status
        self.bucket = bucket
        self.bucket_object_interval = float(bucket_object_interval)
        self.finished_day = finished_day or (lambda: datetime.now(UTC).date())
        self.drop_callbacks = bool(drop_callbacks)  # lose every callback (Braze's are best effort)
        self.data_dir: Path | None = None
        self.signer = LinkSigner()
        self.download_faults = DownloadFaults()
        self._writer: BucketWriter | None = None
        self._writer_lock = threading.Lock()
        self._segments: dict[str, SegmentSpec] = {}
        self._exports: dict[str, ExportJob] = {}  # token (link) or object_prefix (bucket) -> export
        self._by_prefix: dict[str, ExportJob] = {}
        self._latest: dict[str, ExportJob] = {}  # segment_id -> most recent export
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self.limiter = SlidingWindowLimiter(rate_limit, RATE_WINDOW)
        self.files_generated = 0  # how many by-link archives were written (each export at most once)

    # ------------------------------------------------------------------ lifecycle
    def start_background(self) -> None:
        self._stop = threading.Event()

    def stop_background(self) -> None:
        """Stop bucket writers and pending callbacks (they give up at their next wait)."""
        self._stop.set()
        with self._lock:
            threads, self._threads = self._threads, []
        for t in threads:
            t.join(timeout=10)

    def add_segment(self, spec: SegmentSpec) -> None:
        """Add (or replace) a segment. Exports already requested keep the spec they were made with."""
        with self._lock:
            self._segments[spec.segment_id] = spec

    # ------------------------------------------------------------------ POST
    def _in_progress(self, export: ExportJob, now: float) -> bool:
        if export.token is not None:
            return now < export.ready_at
        return not export.written.is_set()

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
        if callback is not None:
            parts = urlsplit(callback) if isinstance(callback, str) else None
            if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
                return bad("callback_endpoint must be an absolute http(s) URL")

        now = time.monotonic()
        with self._lock:
            spec = self._segments.get(segment_id)
            if spec is None:
                return bad(f"Invalid segment_id: {segment_id}")
            previous = self._latest.get(segment_id)
            if previous is not None and self._in_progress(previous, now):
                retry = max(1, math.ceil(previous.ready_at - now + self.bucket_object_interval))
                return json_response(
                    429,
                    {"message": "An export for this segment is already in progress"},
                    **rl_headers,
                    **{"Retry-After": str(retry)},
                )
            running = sum(1 for e in self._latest.values() if self._in_progress(e, now))
            if running >= MAX_CONCURRENT_EXPORTS:
                return json_response(
                    429, {"message": "Too many concurrent exports"}, **rl_headers, **{"Retry-After": "1"}
                )
            export = ExportJob(
                spec=spec,
                fields=list(fields),
                output_format=output_format,
                object_prefix=f"{uuid.uuid4()}-{int(time.time())}",
                ready_at=now + self.export_delay,
                callback=callback,
                files=math.ceil(spec.size / self.users_per_file),
            )
            answer = {"message": "success", "object_prefix": export.object_prefix}
            if self.bucket is None:
                self._sign(export, now)
                self._exports[export.token] = export
                answer["url"] = export.url
            self._by_prefix[export.object_prefix] = export
            self._latest[segment_id] = export
            if self.bucket is not None:
                self._spawn(self._write_bucket, export)
            elif callback is not None:
                self._spawn(self._link_callback, export)
        return json_response(201, answer, **rl_headers)

    def _sign(self, export: ExportJob, now: float) -> None:
        token = secrets.token_urlsafe(48)
        path = f"/exports/{token}.{export.ext}"
        signed_at = datetime.now(UTC)
        export.token = token
        export.expires_at = now + self.link_ttl
        export.expires_wall = signed_at + timedelta(seconds=self.link_ttl)
        export.url = f"{self._base_url()}{path}?{self.signer.presign(path, signed_at, max(1, math.ceil(self.link_ttl)))}"
        export.path = self.data_dir / f"{token}.{export.ext}"

    def _spawn(self, target: Callable[[ExportJob], None], export: ExportJob) -> None:
        t = threading.Thread(
            target=target, args=(export,), name=f"braze-export-{export.object_prefix[:8]}", daemon=True
        )
        self._threads = [x for x in self._threads if x.is_alive()]
        self._threads.append(t)
        t.start()

    # ------------------------------------------------------------------ bucket mode and callbacks
    def _callback(self, export: ExportJob) -> None:
        if export.callback is not None and self.drop_callbacks:
            export.callback_status = "dropped"
        elif export.callback is not None and not self._stop.is_set():
            payload = {
                "segment_id": export.spec.segment_id,
                "object_prefix": export.object_prefix,
                "status": "completed",
                "file_count": export.files,
            }
            if export.url is not None:
                payload["url"] = export.url
            export.callback_status = post_callback(export.callback, payload)
        export.done.set()

    def _link_callback(self, export: ExportJob) -> None:
        if self._stop.wait(max(0.0, export.ready_at - time.monotonic())):
            return
        self._callback(export)

    def _write_bucket(self, export: ExportJob) -> None:
        stop = self._stop
        if stop.wait(max(0.0, export.ready_at - time.monotonic())):
            return
        spec = export.spec
        export.day = self.finished_day().isoformat()
        try:
            with self._writer_lock:
                if self._writer is None:
                    self._writer = BucketWriter(self.bucket)
                writer = self._writer
            lines = export_lines(spec, export.fields)
            for n, data in enumerate(chunks(lines, self.users_per_file)):
                if n and stop.wait(self.bucket_object_interval):
                    return
                key = object_key(spec.segment_id, export.day, export.object_prefix, n, export.output_format)
                writer.put(
                    key,
                    object_body(data, export.object_prefix, n, export.output_format),
                    CONTENT_TYPES[export.output_format],
                )
                with self._lock:
                    export.keys.append(key)
        except Exception as e:  # the export failed (Braze would e-mail the failure)
            export.error = f"{type(e).__name__}: {e}"
            export.written.set()
            export.done.set()
            return
        export.written.set()
        self._callback(export)

    def info(self, object_prefix: str) -> ExportInfo:
        with self._lock:
            e = self._by_prefix.get(object_prefix)
            if e is None:
                raise KeyError(f"no export with object_prefix {object_prefix!r}")
            finished = e.done.is_set() or (e.callback is None and e.written.is_set())
            if e.token is not None and e.callback is None:
                finished = time.monotonic() >= e.ready_at
            return ExportInfo(
                segment_id=e.spec.segment_id,
                object_prefix=e.object_prefix,
                output_format=e.output_format,
                mode="link" if e.token is not None else "bucket",
                url=e.url,
                day=e.day,
                keys=tuple(e.keys),
                files=e.files,
                finished=finished,
                error=e.error,
                callback_status=e.callback_status,
            )

    def wait(self, object_prefix: str, timeout: float = 30.0) -> ExportInfo:
        """Wait until the export has finished (see :class:`ExportInfo`), then return its info."""
        deadline = time.monotonic() + timeout
        while not (info := self.info(object_prefix)).finished:
            if time.monotonic() >= deadline:
                raise TimeoutError(f"export {object_prefix} did not finish within {timeout} s: {info}")
            time.sleep(0.02)
        return info
