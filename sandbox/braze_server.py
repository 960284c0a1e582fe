"""A small, strict imitation of Braze's segment-export API, served over real HTTP.

Endpoints:

* ``POST /users/export/segment`` -- Bearer-key auth, JSON body validation, one export per
  segment at a time (429 + ``Retry-After`` while one is in progress), rate limit of 250,000
  requests per sliding hour; answers ``201 {"message": "success", "object_prefix": ...,
  "url": ...}``.
* ``GET|HEAD /exports/<token>.zip|.gz`` -- imitates the pre-signed S3 URL: no auth, 404
  until ``export_delay`` seconds after the POST, then the file. Files are generated lazily,
  once per export, onto disk (bounded memory) and streamed from there.

Every response has a JSON body (except a successful download) and the
``X-RateLimit-Limit`` / ``-Remaining`` / ``-Reset`` headers of the export endpoint's limit.

Standard library + orjson only; imports nothing from ``include/`` or ``plugins/``.

Run in the foreground::

    python -m sandbox.braze_server --port 8181 --api-key KEY --segment seg_demo:50000 --delay 2
"""

from __future__ import annotations

import argparse
import collections
import gzip
import itertools
import math
import os
import re
import secrets
import shutil
import signal
import sys
import tempfile
import threading
import time
import uuid
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import orjson

from sandbox.braze_users import SegmentSpec, export_lines

__all__ = ["BrazeSandbox", "SegmentSpec", "main"]

EXPORT_PATH = "/users/export/segment"
RATE_LIMIT = 250_000  # requests per hour for /users/export/segment
RATE_WINDOW = 3600.0
USERS_PER_FILE = 5_000
MAX_CONCURRENT_EXPORTS = 100  # per company
MAX_BODY = 1 << 20
STREAM_CHUNK = 256 * 1024
OUTPUT_FORMATS = {"zip": ("zip", "application/zip"), "gzip": ("gz", "application/gzip")}

_DOWNLOAD_RE = re.compile(r"^/exports/([A-Za-z0-9_-]{32,})\.(zip|gz)$")


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


@dataclass
class _Response:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    file: Path | None = None  # streamed instead of body
    content_type: str = "application/json"


def _json(status: int, payload: dict, **headers: str) -> _Response:
    return _Response(status, orjson.dumps(payload), dict(headers))


class _RateLimiter:
    """Sliding-window counter: at most ``limit`` hits in any ``window`` seconds."""

    def __init__(self, limit: int, window: float = RATE_WINDOW) -> None:
        self.limit = limit
        self.window = window
        self._hits: collections.deque[float] = collections.deque()
        self._lock = threading.Lock()

    def _prune(self, now: float) -> None:
        while self._hits and self._hits[0] <= now - self.window:
            self._hits.popleft()

    def _headers(self, now: float) -> dict[str, str]:
        reset_in = (self._hits[0] + self.window - now) if self._hits else self.window
        return {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(max(0, self.limit - len(self._hits))),
            "X-RateLimit-Reset": str(math.ceil(time.time() + reset_in)),
        }

    def hit(self) -> tuple[bool, dict[str, str], int]:
        """Count one request. Returns (allowed, headers, retry_after_seconds)."""
        now = time.monotonic()
        with self._lock:
            self._prune(now)
            if len(self._hits) >= self.limit:
                retry = max(1, math.ceil(self._hits[0] + self.window - now))
                return False, self._headers(now), retry
            self._hits.append(now)
            return True, self._headers(now), 0

    def peek(self) -> dict[str, str]:
        now = time.monotonic()
        with self._lock:
            self._prune(now)
            return self._headers(now)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "BrazeSandbox/1.0"
    timeout = 60  # idle keep-alive connections
    server: _Server

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - stdlib signature
        if self.server.sandbox.verbose:
            super().log_message(format, *args)

    def log_error(self, format: str, *args) -> None:  # noqa: A002 - stdlib signature
        super().log_message(format, *args)  # always, even when quiet

    def _dispatch(self) -> None:
        sandbox = self.server.sandbox
        path = urlsplit(self.path).path
        body = b""
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            resp = _json(411, {"message": "Content-Length required"})
        else:
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                length = -1
            if length < 0:
                self.close_connection = True
                resp = _json(400, {"message": "Invalid Content-Length"})
            elif length > MAX_BODY:
                self.close_connection = True
                resp = _json(413, {"message": "Request body too large"})
            else:
                body = self.rfile.read(length) if length else b""
                try:
                    resp = sandbox._handle(self.command, path, self.headers, body)
                except Exception as e:  # a sandbox bug must still produce an HTTP answer
                    self.log_error("internal error: %r", e)
                    resp = _json(500, {"message": f"Internal sandbox error: {type(e).__name__}"})
        sandbox._record(self.command, path, resp.status)
        self._send(resp)

    def _send(self, resp: _Response) -> None:
        size = resp.file.stat().st_size if resp.file is not None else len(resp.body)
        self.send_response(resp.status)
        self.send_header("Content-Type", resp.content_type)
        self.send_header("Content-Length", str(size))
        for k, v in resp.headers.items():
            self.send_header(k, v)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command == "HEAD":
            return
        try:
            if resp.file is None:
                self.wfile.write(resp.body)
            else:
                with open(resp.file, "rb") as f:
                    while chunk := f.read(STREAM_CHUNK):
                        self.wfile.write(chunk)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Protocol-level errors (bad request line, ...) also answer JSON."""
        self.close_connection = True
        self._send(_json(code, {"message": message or self.responses.get(code, ("Error",))[0]}))

    do_GET = do_POST = do_HEAD = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = _dispatch


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    sandbox: BrazeSandbox


class BrazeSandbox:
    """Fake Braze segment-export API on loopback. Use as a context manager or start()/stop()."""

    def __init__(
        self,
        api_key: str,
        segments: Iterable[SegmentSpec] = (),
        export_delay: float = 2.0,
        data_dir: Path | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        rate_limit: int = RATE_LIMIT,
        verbose: bool = False,
    ) -> None:
        if not api_key:
            raise ValueError("api_key must not be empty")
        self.api_key = api_key
        self.export_delay = float(export_delay)
        self.host = host
        self.port = port
        self.verbose = verbose
        self._given_data_dir = Path(data_dir) if data_dir is not None else None
        self.data_dir: Path | None = None
        self._lock = threading.Lock()
        self._segments: dict[str, SegmentSpec] = {}
        self._exports: dict[str, _Export] = {}  # token -> export
        self._latest: dict[str, _Export] = {}  # segment_id -> most recent export
        self._requests: list[tuple[str, str, int]] = []
        self._fail_count = 0
        self._fail_status = 500
        self._limiter = _RateLimiter(rate_limit)
        self.files_generated = 0  # how many export files were written (each export at most once)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        for spec in segments:
            self.add_segment(spec)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> BrazeSandbox:
        if self._server is not None:
            return self
        if self._given_data_dir is None:
            self.data_dir = Path(tempfile.mkdtemp(prefix="braze-sandbox-"))
        else:
            self.data_dir = self._given_data_dir
            self.data_dir.mkdir(parents=True, exist_ok=True)
        server = _Server((self.host, self.port), _Handler)
        server.sandbox = self
        self._server = server
        self.port = server.server_address[1]
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.1}, name="braze-sandbox", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        if self._given_data_dir is None and self.data_dir is not None:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> BrazeSandbox:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("BrazeSandbox is not started")
        return f"http://{self.host}:{self.port}"

    # ------------------------------------------------------------------ test knobs
    def add_segment(self, spec: SegmentSpec) -> None:
        """Add (or replace) a segment. Exports already requested keep the spec they were made with."""
        with self._lock:
            self._segments[spec.segment_id] = spec

    def fail_next(self, n: int, status: int = 500) -> None:
        """The next ``n`` requests, to any endpoint, answer ``status`` (429/503 carry Retry-After: 1)."""
        with self._lock:
            self._fail_count = n
            self._fail_status = status

    @property
    def requests(self) -> list[tuple[str, str, int]]:
        """A snapshot of the (method, path, status) of every request answered so far."""
        with self._lock:
            return list(self._requests)

    def _record(self, method: str, path: str, status: int) -> None:
        with self._lock:
            self._requests.append((method, path, status))

    # ------------------------------------------------------------------ handling
    def _handle(self, method: str, path: str, headers, body: bytes) -> _Response:
        with self._lock:
            injected = self._fail_count > 0
            if injected:
                self._fail_count -= 1
                status = self._fail_status
        if injected:
            resp = _json(status, {"message": f"Injected failure ({status})"})
            if status in (429, 503):
                resp.headers["Retry-After"] = "1"
            resp.headers.update(self._limiter.peek())
            return resp

        if path == EXPORT_PATH:
            if method != "POST":
                resp = _json(405, {"message": "Method not allowed"}, Allow="POST")
            else:
                return self._export(headers, body)  # sets its own rate-limit headers
        elif m := _DOWNLOAD_RE.match(path):
            if method not in ("GET", "HEAD"):
                resp = _json(405, {"message": "Method not allowed"}, Allow="GET, HEAD")
            else:
                resp = self._download(m.group(1), m.group(2))
        else:
            resp = _json(404, {"message": "Not found"})
        resp.headers.update(self._limiter.peek())
        return resp

    def _export(self, headers, body: bytes) -> _Response:
        auth = headers.get("Authorization") or ""
        scheme, _, key = auth.partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(
            key.strip().encode(), self.api_key.encode()
        ):
            return _json(401, {"message": "Invalid API key"}, **self._limiter.peek())

        allowed, rl_headers, retry = self._limiter.hit()
        if not allowed:
            return _json(429, {"message": "Rate limit exceeded"}, **rl_headers, **{"Retry-After": str(retry)})

        def bad(message: str) -> _Response:
            return _json(400, {"message": message}, **rl_headers)

        ctype = (headers.get("Content-Type") or "").split(";", 1)[0].strip().lower()
        if ctype != "application/json":
            return bad("Content-Type must be application/json")
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError as e:
            return bad(f"Invalid JSON in request body: {e}")
        if not isinstance(payload, dict):
            return bad("Request body must be a JSON object")

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
                return _json(
                    429,
                    {"message": "An export for this segment is already in progress"},
                    **rl_headers,
                    **{"Retry-After": str(retry)},
                )
            running = sum(1 for e in self._latest.values() if now < e.ready_at)
            if running >= MAX_CONCURRENT_EXPORTS:
                return _json(
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
        return _json(
            201,
            {
                "message": "success",
                "object_prefix": object_prefix,
                "url": f"{self.url}/exports/{token}.{export.ext}",
            },
            **rl_headers,
        )

    def _download(self, token: str, ext: str) -> _Response:
        with self._lock:
            export = self._exports.get(token)
        if export is None or export.ext != ext or time.monotonic() < export.ready_at:
            return _json(404, {"message": "The specified key does not exist."})
        self._materialise(export)
        return _Response(200, file=export.path, content_type=OUTPUT_FORMATS[export.output_format][1])

    # ------------------------------------------------------------------ file generation
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


# ---------------------------------------------------------------------- CLI
def _parse_segment(text: str) -> SegmentSpec:
    """``ID:SIZE[:key=value,key=value...]``, e.g. ``seg_demo:50000:malformed_every=1000,seed=7``."""
    parts = text.split(":", 2)
    if len(parts) < 2:
        raise argparse.ArgumentTypeError(f"expected ID:SIZE[:key=value,...], got {text!r}")
    kwargs: dict = {}
    if len(parts) == 3 and parts[2]:
        for item in parts[2].split(","):
            key, sep, value = item.partition("=")
            if not sep:
                raise argparse.ArgumentTypeError(f"expected key=value, got {item!r}")
            if key == "name":
                kwargs[key] = value
            elif key == "missing_email_share":
                kwargs[key] = float(value)
            elif key in ("seed", "missing_id_every", "malformed_every", "duplicate_every"):
                kwargs[key] = int(value)
            else:
                raise argparse.ArgumentTypeError(f"unknown segment option {key!r}")
    try:
        return SegmentSpec(parts[0], int(parts[1]), **kwargs)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from e


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sandbox.braze_server", description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8181)
    ap.add_argument(
        "--api-key", default=os.environ.get("BRAZE_SANDBOX_API_KEY"), help="default: $BRAZE_SANDBOX_API_KEY"
    )
    ap.add_argument(
        "--segment",
        action="append",
        type=_parse_segment,
        default=[],
        metavar="ID:SIZE[:k=v,...]",
        help="repeatable; options: name, seed, missing_email_share, missing_id_every, malformed_every, "
        "duplicate_every",
    )
    ap.add_argument("--delay", type=float, default=2.0, help="seconds until an export is downloadable")
    ap.add_argument("--data-dir", type=Path, default=None, help="where export files go (default: temp dir)")
    ap.add_argument("--rate-limit", type=int, default=RATE_LIMIT, help="export requests per hour")
    ap.add_argument("-q", "--quiet", action="store_true", help="do not log requests")
    args = ap.parse_args(argv)
    if not args.api_key:
        ap.error("--api-key (or $BRAZE_SANDBOX_API_KEY) is required")

    sandbox = BrazeSandbox(
        args.api_key,
        args.segment,
        export_delay=args.delay,
        data_dir=args.data_dir,
        host=args.host,
        port=args.port,
        rate_limit=args.rate_limit,
        verbose=not args.quiet,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    sandbox.start()
    try:
        print(f"Braze sandbox listening on {sandbox.url}", flush=True)
        for spec in args.segment:
            print(f"  segment {spec.segment_id}: {spec.size} users", flush=True)
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        sandbox.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
