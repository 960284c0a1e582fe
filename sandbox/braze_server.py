"""A small, strict imitation of Braze's REST API (segment export + users/track), over real HTTP.

Endpoints:

* ``POST /users/export/segment`` -- Bearer-key auth, JSON body validation, one export per
  segment at a time (429 + ``Retry-After`` while one is in progress), rate limit of 250,000
  requests per sliding hour; answers ``201 {"message": "success", "object_prefix": ...,
  "url": ...}``.
* ``GET|HEAD /exports/<token>.zip|.gz`` -- imitates the pre-signed S3 URL: no auth, 404
  until ``export_delay`` seconds after the POST, then the file. Files are generated lazily,
  once per export, onto disk (bounded memory) and streamed from there.
* ``POST /users/track`` -- Bearer-key auth; ``{"attributes": [...], "events": [...],
  "purchases": [...]}`` with at most ``max_objects`` (75; 50 for MAU-plan workspaces) objects in
  total; per-object validation with partial success (``201`` + ``errors`` with the index in the
  array sent); profile state in :class:`sandbox.braze_profiles.ProfileStore`
  (``BrazeSandbox.profiles``); its own sliding-window rate limit (3,000 requests / 3 s) and
  optional seeded fault injection (429 / 500 / 503 / slow "timeout" / connection "reset").
  Only ``POST`` is routed; other methods answer 404 like any unknown path.
* ``GET /_sandbox/profiles?attr=lytics_segments[&by=external_id]`` and ``GET /_sandbox/stats``
  -- **sandbox-only** read-back endpoints (Bearer auth; Braze has nothing like them).

Every response has a JSON body (except a successful download and a "reset" fault) and
``X-RateLimit-Limit`` / ``-Remaining`` / ``-Reset`` headers: those of ``/users/track``'s limit on
``/users/track`` and ``/_sandbox/*``, those of the export endpoint's limit everywhere else.

Rate-limit headers: ``X-RateLimit-Limit`` is the number of requests allowed per window,
``X-RateLimit-Remaining`` how many are left after this request, ``X-RateLimit-Reset`` the UTC
epoch second (an integer, rounded *up*) at which the oldest counted request leaves the sliding
window, i.e. when at least one more request will be allowed (now + window when none is counted).
A ``429`` from the limiter carries ``Retry-After`` in whole seconds (ceil, >= 1) and applies
nothing. Only authenticated requests count against a limit; injected faults do not count.

Standard library + orjson only; imports nothing from ``include/`` or ``plugins/``.

Run in the foreground::

    python -m sandbox.braze_server --port 8181 --api-key KEY --segment seg_demo:50000 --delay 2
"""

from __future__ import annotations

import argparse
import collections
import gc
import gzip
import itertools
import math
import os
import random
import re
import secrets
import shutil
import signal
import socket
import struct
import sys
import tempfile
import threading
import time
import uuid
import zipfile
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson

from sandbox.background_server import BackgroundHttpServer
from sandbox.braze_profiles import ID_KINDS, ArrayOps, ProfileStore, Update
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

TRACK_PATH = "/users/track"
TRACK_ARRAYS = ("attributes", "events", "purchases")
TRACK_RATE_LIMIT = 3_000  # requests per TRACK_RATE_WINDOW seconds (Braze's default per workspace)
TRACK_RATE_WINDOW = 3.0
MAX_TRACK_OBJECTS = 75  # in total across attributes + events + purchases
MAX_TRACK_BODY = 16 << 20  # Braze documents no byte limit; 75 full 500-item arrays stay below this
MAX_STRING = 255
FAULT_KINDS: tuple[int | str, ...] = (429, 500, 503, "timeout", "reset")
SANDBOX_PROFILES_PATH = "/_sandbox/profiles"  # sandbox-only read-back, not a Braze endpoint
SANDBOX_STATS_PATH = "/_sandbox/stats"  # sandbox-only, not a Braze endpoint
_ARRAY_OP_KEYS = frozenset(("add", "remove"))
_IGNORED_KEYS = frozenset(("_update_existing_only", "_merge_objects"))

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
    reset: bool = False  # close the connection without answering at all


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


def _json_object(headers, body: bytes) -> tuple[dict, str | None]:
    """The request's JSON object, or the 400 message saying what is wrong with it."""
    ctype = (headers.get("Content-Type") or "").split(";", 1)[0].strip().lower()
    if ctype != "application/json":
        return {}, "Content-Type must be application/json"
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        return {}, f"Invalid JSON in request body: {e}"
    if not isinstance(payload, dict):
        return {}, "Request body must be a JSON object"
    return payload, None


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "BrazeSandbox/1.0"
    timeout = 60  # idle keep-alive connections
    disable_nagle_algorithm = True  # headers and body go out in separate writes; no 40 ms stalls
    server: _Server

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - stdlib signature
        if self.server.sandbox.verbose:
            super().log_message(format, *args)

    def log_error(self, format: str, *args) -> None:  # noqa: A002 - stdlib signature
        super().log_message(format, *args)  # always, even when quiet

    def _dispatch(self) -> None:
        sandbox = self.server.sandbox
        split = urlsplit(self.path)
        path = split.path
        max_body = MAX_TRACK_BODY if path == TRACK_PATH else MAX_BODY
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
            elif length > max_body:
                self.close_connection = True
                resp = _json(413, {"message": "Request body too large"})
            else:
                body = self.rfile.read(length) if length else b""
                try:
                    resp = sandbox._handle(self.command, path, self.headers, body, query=split.query)
                except Exception as e:  # a sandbox bug must still produce an HTTP answer
                    self.log_error("internal error: %r", e)
                    resp = _json(500, {"message": f"Internal sandbox error: {type(e).__name__}"})
        sandbox._record(self.command, path, resp.status)
        if resp.reset:
            self._reset()
        else:
            self._send(resp)

    def _reset(self) -> None:
        """Drop the connection without a response; SO_LINGER 0 makes the final close send a RST."""
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass

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


class BrazeSandbox(BackgroundHttpServer):
    """Fake Braze REST API (segment export + users/track) on loopback.

    Use as a context manager or start()/stop(). ``/users/track`` options (keyword-only):

    * ``max_objects`` -- objects allowed per request across the three arrays (75; 50 for a
      "Monthly Active Users CY 24-25" workspace). More -> 400, none -> 400.
    * ``max_array_length`` -- array attribute cap (500); extra values are dropped silently,
      the first ones are kept (see :mod:`sandbox.braze_profiles`).
    * ``invalid_external_ids`` -- a collection of ids, or a predicate ``f(external_id) -> bool``,
      whose attributes objects are rejected (``errors`` entry), to provoke partial success.
      Also settable on the instance.
    * ``array_attributes`` -- attribute names that must get a list or ``{"add"/"remove"}``
      value (``lytics_segments``); any attribute given such a value is treated as an array.
    * ``track_rate_limit`` / ``track_rate_window`` -- sliding-window limit (3,000 per 3 s).
    * ``track_faults`` -- share (0..1) of ``POST /users/track`` requests answered by an
      injected fault drawn with ``random.Random(fault_seed)`` (deterministic for a sequential
      client) from ``fault_kinds``: 429 (``Retry-After: 1``), 500, 503 (``Retry-After: 1``),
      ``"timeout"`` (sleep ``fault_sleep`` seconds, then 500) and ``"reset"`` (close the
      connection without a response). A faulted request applies nothing and does not count
      against the rate limit.
    """

    _server_class = _Server
    _handler_class = _Handler
    _thread_name = "braze-sandbox"

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
        max_objects: int = MAX_TRACK_OBJECTS,
        max_array_length: int = 500,
        invalid_external_ids: Collection[str] | Callable[[str], bool] | None = None,
        array_attributes: Iterable[str] = ("lytics_segments",),
        track_rate_limit: int = TRACK_RATE_LIMIT,
        track_rate_window: float = TRACK_RATE_WINDOW,
        track_faults: float = 0.0,
        fault_seed: int = 0,
        fault_sleep: float = 2.0,
        fault_kinds: Iterable[int | str] = FAULT_KINDS,
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
        # ---- /users/track
        if max_objects < 1:
            raise ValueError("max_objects must be >= 1")
        if not 0.0 <= track_faults <= 1.0:
            raise ValueError("track_faults must be between 0 and 1")
        if track_rate_limit < 1 or track_rate_window <= 0:
            raise ValueError("track_rate_limit must be >= 1 and track_rate_window > 0")
        self.max_objects = max_objects
        self.invalid_external_ids = invalid_external_ids
        self.array_attributes = frozenset(array_attributes)
        self.profiles = ProfileStore(max_array_length)
        self._track_limiter = _RateLimiter(track_rate_limit, track_rate_window)
        self.track_faults = float(track_faults)
        self.fault_sleep = float(fault_sleep)
        self.fault_kinds = tuple(_check_fault(k) for k in fault_kinds)
        if not self.fault_kinds:
            raise ValueError("fault_kinds must not be empty")
        self._fault_rng = random.Random(fault_seed)
        self._stats = dict.fromkeys(
            (
                "requests",  # every POST /users/track that reached the sandbox
                "accepted",  # 201 answers
                "rate_limited",  # 429 from the limiter (injected 429s count as faults)
                "faults_injected",  # fail_next + track_faults on /users/track
                "unauthorized",
                "bad_requests",  # 400 answers
                "objects_applied",  # attributes objects written to a profile
                "objects_skipped",  # _update_existing_only for an unknown user
                "objects_rejected",  # entries in "errors"
                "events_processed",
                "purchases_processed",
            ),
            0,
        )
        self.files_generated = 0  # how many export files were written (each export at most once)
        self._init_background()
        for spec in segments:
            self.add_segment(spec)

    # ------------------------------------------------------------------ lifecycle
    def _before_start(self) -> None:
        if self._given_data_dir is None:
            self.data_dir = Path(tempfile.mkdtemp(prefix="braze-sandbox-"))
        else:
            self.data_dir = self._given_data_dir
            self.data_dir.mkdir(parents=True, exist_ok=True)

    def _after_stop(self) -> None:
        if self._given_data_dir is None and self.data_dir is not None:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    # ------------------------------------------------------------------ test knobs
    def add_segment(self, spec: SegmentSpec) -> None:
        """Add (or replace) a segment. Exports already requested keep the spec they were made with."""
        with self._lock:
            self._segments[spec.segment_id] = spec

    def fail_next(self, n: int, status: int | str = 500) -> None:
        """The next ``n`` requests, to any endpoint, answer ``status`` (429/503 carry Retry-After: 1).

        ``status`` may also be ``"timeout"`` (sleep ``fault_sleep`` seconds, then 500) or
        ``"reset"`` (close the connection without a response). Nothing is applied.
        """
        status = _check_fault(status)
        with self._lock:
            self._fail_count = n
            self._fail_status = status

    @property
    def stats(self) -> dict[str, int]:
        """A snapshot of the ``/users/track`` counters."""
        with self._lock:
            return dict(self._stats)

    @property
    def requests(self) -> list[tuple[str, str, int]]:
        """A snapshot of the (method, path, status) of every request answered so far."""
        with self._lock:
            return list(self._requests)

    def _record(self, method: str, path: str, status: int) -> None:
        with self._lock:
            self._requests.append((method, path, status))

    # ------------------------------------------------------------------ handling
    def _handle(self, method: str, path: str, headers, body: bytes, query: str = "") -> _Response:
        track = path == TRACK_PATH and method == "POST"
        limiter = self._track_limiter if track or path.startswith("/_sandbox/") else self._limiter
        fault: int | str | None = None
        with self._lock:
            if track:
                self._stats["requests"] += 1
            if self._fail_count > 0:
                self._fail_count -= 1
                fault = self._fail_status
            elif track and self.track_faults > 0 and self._fault_rng.random() < self.track_faults:
                fault = self._fault_rng.choice(self.fault_kinds)
            if fault is not None and track:
                self._stats["faults_injected"] += 1
        if fault is not None:
            return self._fault(fault, limiter)

        if track:
            return self._track(headers, body)
        if path in (SANDBOX_PROFILES_PATH, SANDBOX_STATS_PATH):
            if method != "GET":
                resp = _json(405, {"message": "Method not allowed"}, Allow="GET")
            elif not self._authorized(headers):
                resp = _json(401, {"message": "Invalid API key"})
            elif path == SANDBOX_STATS_PATH:
                resp = _json(
                    200,
                    {
                        **self.stats,
                        "data_points": self.profiles.data_points,
                        "profiles": self.profiles.count(),
                    },
                )
            else:
                resp = self._readback(query)
            resp.headers.update(limiter.peek())
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

    def _authorized(self, headers) -> bool:
        auth = headers.get("Authorization") or ""
        scheme, _, key = auth.partition(" ")
        return scheme.lower() == "bearer" and secrets.compare_digest(
            key.strip().encode(), self.api_key.encode()
        )

    def _fault(self, fault: int | str, limiter: _RateLimiter) -> _Response:
        if fault == "reset":
            return _Response(0, reset=True)
        if fault == "timeout":
            time.sleep(self.fault_sleep)
            resp = _json(500, {"message": "Injected failure (timeout)"})
        else:
            resp = _json(fault, {"message": f"Injected failure ({fault})"})
            if fault in (429, 503):
                resp.headers["Retry-After"] = "1"
        resp.headers.update(limiter.peek())
        return resp

    def _export(self, headers, body: bytes) -> _Response:
        if not self._authorized(headers):
            return _json(401, {"message": "Invalid API key"}, **self._limiter.peek())

        allowed, rl_headers, retry = self._limiter.hit()
        if not allowed:
            return _json(429, {"message": "Rate limit exceeded"}, **rl_headers, **{"Retry-After": str(retry)})

        def bad(message: str) -> _Response:
            return _json(400, {"message": message}, **rl_headers)

        payload, problem = _json_object(headers, body)
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

    # ------------------------------------------------------------------ /users/track
    def _track(self, headers, body: bytes) -> _Response:
        stats = self._stats
        if not self._authorized(headers):
            with self._lock:
                stats["unauthorized"] += 1
            return _json(401, {"message": "Invalid API key"}, **self._track_limiter.peek())

        allowed, rl_headers, retry = self._track_limiter.hit()
        if not allowed:
            with self._lock:
                stats["rate_limited"] += 1
            return _json(429, {"message": "Rate limit exceeded"}, **rl_headers, **{"Retry-After": str(retry)})

        def bad(message: str, errors: list | None = None) -> _Response:
            with self._lock:
                stats["bad_requests"] += 1
                stats["objects_rejected"] += len(errors or ())
            payload: dict[str, Any] = {"message": message}
            if errors:
                payload["errors"] = errors
            return _json(400, payload, **rl_headers)

        payload, problem = _json_object(headers, body)
        if problem:
            return bad(problem)
        arrays: dict[str, list] = {}
        for name in TRACK_ARRAYS:
            value = payload.get(name)
            if value is None:
                continue
            if not isinstance(value, list):
                return bad(f"'{name}' must be an array")
            arrays[name] = value
        total = sum(len(v) for v in arrays.values())
        if total > self.max_objects:
            return bad(
                f"Received too many objects in request: {total} "
                f"(at most {self.max_objects} across attributes, events and purchases)"
            )
        if total == 0:
            return bad("Valid data must be provided in the 'attributes', 'events', or 'purchases' fields.")

        errors: list[dict[str, Any]] = []
        updates: list[Update] = []
        for index, obj in enumerate(arrays.get("attributes", ())):
            result = self._validate_attributes(obj)
            if isinstance(result, str):
                errors.append({"type": result, "input_array": "attributes", "index": index})
            else:
                updates.append(result)
        valid_other = {}
        for name in ("events", "purchases"):
            valid = 0
            for index, obj in enumerate(arrays.get(name, ())):
                reason = _validate_event(obj) if name == "events" else _validate_purchase(obj)
                if reason is None:
                    valid += 1
                else:
                    errors.append({"type": reason, "input_array": name, "index": index})
            valid_other[name] = valid
        if not updates and not any(valid_other.values()):
            return bad("No valid objects in request", errors)

        applied, skipped = self.profiles.apply_many(updates)
        with self._lock:
            stats["accepted"] += 1
            stats["objects_applied"] += applied
            stats["objects_skipped"] += skipped
            stats["objects_rejected"] += len(errors)
            stats["events_processed"] += valid_other["events"]
            stats["purchases_processed"] += valid_other["purchases"]
        out: dict[str, Any] = {"message": "success"}
        if "attributes" in arrays:
            out["attributes_processed"] = len(updates)
        if "events" in arrays:
            out["events_processed"] = valid_other["events"]
        if "purchases" in arrays:
            out["purchases_processed"] = valid_other["purchases"]
        if errors:
            out["errors"] = errors
        return _json(201, out, **rl_headers)

    def _is_invalid_external_id(self, external_id: str) -> bool:
        invalid = self.invalid_external_ids
        if invalid is None:
            return False
        if callable(invalid):
            return bool(invalid(external_id))
        return external_id in invalid

    def _validate_attributes(self, obj: Any) -> Update | str:
        """A validated :class:`Update`, or the error ``type`` string."""
        if not isinstance(obj, dict):
            return "Attributes object must be a JSON object"
        ident = _identify(obj)
        if isinstance(ident, str):
            return ident
        kind, key = ident
        if kind == "external_id" and self._is_invalid_external_id(key):
            return "Invalid 'external_id'"
        update_existing_only = obj.get("_update_existing_only", False)
        if not isinstance(update_existing_only, bool):
            return "'_update_existing_only' must be a boolean"
        attrs: dict[str, Any] = {}
        array_attributes = self.array_attributes
        for name, value in obj.items():
            if name == kind or name in _IGNORED_KEYS:
                continue
            if isinstance(value, str):
                if len(value) > MAX_STRING:
                    return f"Value of '{name}' exceeds {MAX_STRING} characters"
                if name in array_attributes:
                    return f"Invalid value for array attribute '{name}'"
                attrs[name] = value
            elif isinstance(value, list):
                reason = _check_strings(name, value)
                if reason:
                    return reason
                attrs[name] = value
            elif isinstance(value, dict):
                if not value or not value.keys() <= _ARRAY_OP_KEYS:
                    if name in array_attributes:
                        return f"Invalid value for array attribute '{name}'"
                    return f"Nested object for '{name}' is not supported by the sandbox"
                add = value.get("add", [])
                remove = value.get("remove", [])
                for values in (add, remove):
                    if not isinstance(values, list):
                        return f"Invalid value for array attribute '{name}'"
                    reason = _check_strings(name, values)
                    if reason:
                        return reason
                attrs[name] = ArrayOps(tuple(dict.fromkeys(add)), tuple(dict.fromkeys(remove)))
            elif value is None or isinstance(value, int | float):
                if value is not None and name in array_attributes:
                    return f"Invalid value for array attribute '{name}'"
                attrs[name] = value
            else:  # pragma: no cover - orjson produces nothing else
                return f"Invalid value for '{name}'"
        return Update(key, attrs, kind, update_existing_only)

    def _readback(self, query: str) -> _Response:
        """Sandbox-only: ``{key: [sorted values]}`` of users whose array ``attr`` is non-empty."""
        params = parse_qs(query)
        attr = params.get("attr", ["lytics_segments"])[-1]
        by = params.get("by", ["external_id"])[-1]
        if by not in ID_KINDS:
            return _json(400, {"message": f"Invalid 'by': {by!r} (expected one of {', '.join(ID_KINDS)})"})
        snap = self.profiles.snapshot(attr, by=by)
        return _json(200, {key: sorted(values) for key, values in snap.items()})

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


def _check_fault(kind: int | str) -> int | str:
    if kind in ("timeout", "reset"):
        return kind
    if isinstance(kind, int) and not isinstance(kind, bool) and 400 <= kind <= 599:
        return kind
    raise ValueError(f"invalid fault {kind!r}: expected an HTTP status 400-599, 'timeout' or 'reset'")


def _check_strings(name: str, values: list) -> str | None:
    for v in values:
        if not isinstance(v, str):
            return f"Invalid value for array attribute '{name}'"
        if len(v) > MAX_STRING:
            return f"Value of '{name}' exceeds {MAX_STRING} characters"
    return None


def _identify(obj: dict) -> tuple[str, str] | str:
    """``(kind, key)`` of the user an object addresses, or the error ``type`` string.

    ``external_id``, ``braze_id`` and ``user_alias`` are pure identifiers: at most one of them.
    Without any of those, ``email`` (else ``phone``) identifies the user; next to one of them,
    ``email`` / ``phone`` are ordinary attributes. A ``user_alias`` is keyed ``"label:name"``.
    """
    present = [k for k in ("external_id", "braze_id", "user_alias") if k in obj]
    if len(present) > 1:
        return "Only one of 'external_id', 'braze_id' or 'user_alias' may be given"
    if present:
        kind = present[0]
    elif "email" in obj:
        kind = "email"
    elif "phone" in obj:
        kind = "phone"
    else:
        return "'external_id', 'braze_id', 'user_alias', 'email' or 'phone' is required"
    value = obj[kind]
    if kind == "user_alias":
        if not isinstance(value, dict):
            return "Invalid 'user_alias': must be an object with 'alias_name' and 'alias_label'"
        name, label = value.get("alias_name"), value.get("alias_label")
        if not (isinstance(name, str) and name and isinstance(label, str) and label):
            return "Invalid 'user_alias': must be an object with 'alias_name' and 'alias_label'"
        value = f"{label}:{name}"
    elif not isinstance(value, str) or not value:
        return f"Invalid '{kind}': must be a non-empty string"
    if len(value) > MAX_STRING:
        return f"Value of '{kind}' exceeds {MAX_STRING} characters"
    return kind, value


def _validate_event(obj: Any) -> str | None:
    """Events are validated and counted, not stored."""
    if not isinstance(obj, dict):
        return "Event object must be a JSON object"
    ident = _identify(obj)
    if isinstance(ident, str):
        return ident
    if not isinstance(obj.get("name"), str) or not obj["name"]:
        return "'name' is required"
    if not isinstance(obj.get("time"), str):
        return "'time' is required"
    return None


def _validate_purchase(obj: Any) -> str | None:
    """Purchases are validated and counted, not stored."""
    if not isinstance(obj, dict):
        return "Purchase object must be a JSON object"
    ident = _identify(obj)
    if isinstance(ident, str):
        return ident
    for key in ("product_id", "currency"):
        if not isinstance(obj.get(key), str) or not obj[key]:
            return f"'{key}' is required"
    price = obj.get("price")
    if isinstance(price, bool) or not isinstance(price, int | float):
        return "'price' is required"
    if not isinstance(obj.get("time"), str):
        return "'time' is required"
    return None


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
    ap.add_argument(
        "--max-objects", type=int, default=MAX_TRACK_OBJECTS, help="/users/track objects per request"
    )
    ap.add_argument(
        "--track-rate-limit", type=int, default=TRACK_RATE_LIMIT, help="/users/track requests per window"
    )
    ap.add_argument(
        "--track-rate-window", type=float, default=TRACK_RATE_WINDOW, help="/users/track window (seconds)"
    )
    ap.add_argument("--track-faults", type=float, default=0.0, help="share of /users/track requests faulted")
    ap.add_argument("--fault-seed", type=int, default=0)
    ap.add_argument("--fault-sleep", type=float, default=2.0, help="seconds a 'timeout' fault stalls")
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
        max_objects=args.max_objects,
        track_rate_limit=args.track_rate_limit,
        track_rate_window=args.track_rate_window,
        track_faults=args.track_faults,
        fault_seed=args.fault_seed,
        fault_sleep=args.fault_sleep,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    sandbox.start()
    # Braze does not pause; a Python sandbox holding hundreds of thousands of profiles does
    # (full GCs of ~100 ms), and requests that pile up behind a pause arrive bunched, which the
    # strict limiter then counts as an overshoot the client never made. In a process of its
    # own, collect young objects only (bench/run_l2b_delivery.py measured 10 full GCs -> 0).
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
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
