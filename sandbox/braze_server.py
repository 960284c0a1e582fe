"""A small, strict imitation of Braze's REST API (segment export + users/track), over real HTTP.

Endpoints:

* ``POST /users/export/segment`` and ``GET /exports/<token>.zip|.gz?X-Amz-...`` (the pre-signed
  download links, or, with ``bucket=S3Target(...)``, objects PUT into an S3 bucket) --
  :mod:`sandbox.braze_exports`; rate limit of 250,000 requests per sliding hour.
* ``POST /users/track`` -- :mod:`sandbox.braze_track` (validation, partial success), profile
  state in :class:`sandbox.braze_profiles.ProfileStore` (``BrazeSandbox.profiles``); its own
  sliding-window rate limit (3,000 requests / 3 s) and optional seeded fault injection
  (:mod:`sandbox.braze_faults`). Only ``POST`` is routed; other methods answer 404 like any
  unknown path.
* ``POST /users/export/ids`` -- :mod:`sandbox.braze_export_ids`: the profiles ``/users/track``
  wrote, read back by ``external_id`` (at most 50 per request); its own sliding-window rate limit
  (250 requests / 60 s).
* ``GET /_sandbox/profiles?attr=lytics_segments[&by=external_id]`` and ``GET /_sandbox/stats``
  -- **sandbox-only** read-back endpoints (Bearer auth; Braze has nothing like them).

Braze's responses have a JSON body (except "reset" and "html" faults) and
``X-RateLimit-Limit`` / ``-Remaining`` / ``-Reset`` headers (:mod:`sandbox.rate_window`): those
of ``/users/track``'s limit on ``/users/track`` and ``/_sandbox/*``, those of its own limit on
``/users/export/ids``, those of the export endpoint's limit everywhere else. A ``429`` from a
limiter carries ``Retry-After`` and applies nothing. Only authenticated requests count against a
limit; injected faults do not count. The download links are S3's, not Braze's: S3 headers and XML
errors, no rate-limit headers.

This module holds :class:`BrazeSandbox` (auth, routing, faults, test knobs); the CLI is
:mod:`sandbox.braze_cli`, the HTTP plumbing :mod:`sandbox.braze_http`. Standard library + orjson
(+ boto3 for bucket mode, when importable); imports nothing from ``include/`` or ``plugins/``.

Run in the foreground::

    python -m sandbox.braze_server --port 8181 --api-key KEY --segment seg_demo:50000 --delay 2
"""

from __future__ import annotations

import secrets
import shutil
import sys
import tempfile
import threading
from collections.abc import Callable, Collection, Iterable
from datetime import date
from pathlib import Path

from sandbox.background_server import BackgroundHttpServer
from sandbox.braze_bucket import S3Target
from sandbox.braze_export_ids import (
    EXPORT_IDS_PATH,
    EXPORT_IDS_RATE_LIMIT,
    EXPORT_IDS_RATE_WINDOW,
    UsersExportIds,
)
from sandbox.braze_exports import (
    DOWNLOAD_RE,
    EXPORT_PATH,
    RATE_LIMIT,
    USERS_PER_FILE,
    ExportInfo,
    SegmentExports,
)
from sandbox.braze_faults import APPLIED_FAULTS, FAULT_KINDS, FaultInjector, check_fault, fail_after_applying
from sandbox.braze_http import MAX_BODY, BrazeHandler, BrazeHttpServer, Response, json_response
from sandbox.braze_track import (
    MAX_TRACK_BODY,
    MAX_TRACK_OBJECTS,
    TRACK_PATH,
    TRACK_RATE_LIMIT,
    TRACK_RATE_WINDOW,
    UsersTrack,
)
from sandbox.braze_users import SegmentSpec

__all__ = ["BrazeSandbox", "ExportInfo", "S3Target", "SegmentSpec", "main"]

SANDBOX_PROFILES_PATH = "/_sandbox/profiles"  # sandbox-only read-back, not a Braze endpoint
SANDBOX_STATS_PATH = "/_sandbox/stats"  # sandbox-only, not a Braze endpoint


class BrazeSandbox(BackgroundHttpServer):
    """Fake Braze REST API (segment export + users/track) on loopback.

    Use as a context manager or start()/stop(). Export options (keyword-only; see
    :mod:`sandbox.braze_exports`):

    * ``export_delay`` (2.0 s) -- POST until the link answers / the bucket writing starts.
    * ``users_per_file`` (5,000) -- users per export file (zip member, gzip member, bucket object).
    * ``link_ttl`` (3,600 s) -- the link expires this long after the POST (403 "Request has expired").
    * ``not_ready_status`` (404) -- a link not ready yet answers 404 NoSuchKey, or (403) 403
      AccessDenied, as S3 does when the signer may not list the bucket.
    * ``bucket`` (None) -- an :class:`S3Target`: export into that bucket instead of by link.
    * ``bucket_object_interval`` (0.0 s) -- pause between two bucket objects.
    * ``finished_day`` (UTC today) -- a function giving the day the export finished (the
      ``YYYY-MM-DD`` directory of the bucket keys and zip members).
    * ``drop_callbacks`` (False) -- lose every ``callback_endpoint`` call (``callback_status``
      ``"dropped"``); also ``sandbox.exports.drop_callbacks``.

    ``/users/track`` options (keyword-only):

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
      against the rate limit. ``fault_kinds`` may also hold ``"429-bare"`` (no ``Retry-After``)
      and the applied-then-failed kinds of :mod:`sandbox.braze_faults` (``"applied-500"``, ...):
      those requests are applied, then their answer is lost (``applied_then_failed`` counts them).

    ``/users/export/ids`` options (keyword-only): ``export_ids_rate_limit`` /
    ``export_ids_rate_window`` -- its sliding-window limit (250 per 60 s). Its counters are
    ``sandbox.export_ids.stats``.
    """

    _server_class = BrazeHttpServer
    _handler_class = BrazeHandler
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
        users_per_file: int = USERS_PER_FILE,
        link_ttl: float = 3600.0,
        not_ready_status: int = 404,
        bucket: S3Target | None = None,
        bucket_object_interval: float = 0.0,
        finished_day: Callable[[], date] | None = None,
        drop_callbacks: bool = False,
        export_ids_rate_limit: int = EXPORT_IDS_RATE_LIMIT,
        export_ids_rate_window: float = EXPORT_IDS_RATE_WINDOW,
    ) -> None:
        if not api_key:
            raise ValueError("api_key must not be empty")
        self.api_key = api_key
        self.host = host
        self.port = port
        self.verbose = verbose
        self._given_data_dir = Path(data_dir) if data_dir is not None else None
        self._lock = threading.Lock()  # one lock for the sandbox's state, shared by its parts
        self._requests: list[tuple[str, str, int]] = []
        self.exports = SegmentExports(
            self._lock,
            lambda: self.url,
            export_delay,
            rate_limit,
            users_per_file=users_per_file,
            link_ttl=link_ttl,
            not_ready_status=not_ready_status,
            bucket=bucket,
            bucket_object_interval=bucket_object_interval,
            finished_day=finished_day,
            drop_callbacks=drop_callbacks,
        )
        if max_objects < 1:
            raise ValueError("max_objects must be >= 1")
        if not 0.0 <= track_faults <= 1.0:
            raise ValueError("track_faults must be between 0 and 1")
        if track_rate_limit < 1 or track_rate_window <= 0:
            raise ValueError("track_rate_limit must be >= 1 and track_rate_window > 0")
        self.track = UsersTrack(
            self._lock,
            max_objects=max_objects,
            max_array_length=max_array_length,
            invalid_external_ids=invalid_external_ids,
            array_attributes=array_attributes,
            rate_limit=track_rate_limit,
            rate_window=track_rate_window,
        )
        self.profiles = self.track.profiles
        self.export_ids = UsersExportIds(self._lock, self.profiles, rate_limit=export_ids_rate_limit,
                                         rate_window=export_ids_rate_window)
        self.faults = FaultInjector(track_faults, fault_seed, fault_sleep, fault_kinds)
        self.applied_then_failed = 0  # /users/track requests applied, then answered with a fault (APPLIED_FAULTS)
        self._init_background()
        for spec in segments:
            self.add_segment(spec)

    # ------------------------------------------------------------------ lifecycle
    def _before_start(self) -> None:
        self.exports.start_background()
        if self._given_data_dir is None:
            self.exports.data_dir = Path(tempfile.mkdtemp(prefix="braze-sandbox-"))
        else:
            self.exports.data_dir = self._given_data_dir
            self.exports.data_dir.mkdir(parents=True, exist_ok=True)

    def _after_stop(self) -> None:
        self.exports.stop_background()
        if self._given_data_dir is None and self.data_dir is not None:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    @property
    def data_dir(self) -> Path | None:
        """Where export files go (None until started; a temp dir, removed on stop, by default)."""
        return self.exports.data_dir

    # ------------------------------------------------------------------ test knobs
    def add_segment(self, spec: SegmentSpec) -> None:
        """Add (or replace) a segment. Exports already requested keep the spec they were made with."""
        self.exports.add_segment(spec)

    @property
    def invalid_external_ids(self) -> Collection[str] | Callable[[str], bool] | None:
        return self.track.invalid_external_ids

    @invalid_external_ids.setter
    def invalid_external_ids(self, value: Collection[str] | Callable[[str], bool] | None) -> None:
        self.track.invalid_external_ids = value

    @property
    def files_generated(self) -> int:
        """How many export files were written (each export at most once)."""
        return self.exports.files_generated

    def fail_next(self, n: int, status: int | str = 500, path: str | None = None) -> None:
        """The next ``n`` requests (to ``path`` only, if given) answer ``status`` (429/503 carry
        Retry-After: 1; on a download link, in S3's XML).

        ``status`` may also be ``"timeout"`` (sleep ``fault_sleep`` seconds, then 500), ``"reset"``
        (close the connection without a response) or ``"html"`` (200 with an HTML page, e.g.
        ``fail_next(1, "html", path="/users/export/segment")``). Nothing is applied.
        """
        status = check_fault(status)
        with self._lock:
            self.faults.arm(n, status, path)

    def fail_downloads(self, n: int, kind: str, object_prefix: str | None = None) -> None:
        """Spoil the next ``n`` full GETs of ready export files (of ``object_prefix``'s export
        only, if given): ``"empty"``, ``"truncated"`` or ``"html"`` (see
        :mod:`sandbox.braze_faults`). Range requests are not affected and use none up."""
        with self._lock:
            self.exports.download_faults.arm(n, kind, object_prefix)

    def export_info(self, object_prefix: str) -> ExportInfo:
        """What the export with this ``object_prefix`` did so far (day, bucket keys, callback)."""
        return self.exports.info(object_prefix)

    def wait_export(self, object_prefix: str, timeout: float = 30.0) -> ExportInfo:
        """Wait until the export finished (bucket: all objects written, callback sent)."""
        return self.exports.wait(object_prefix, timeout)

    @property
    def stats(self) -> dict[str, int]:
        """A snapshot of the ``/users/track`` counters."""
        with self._lock:
            return dict(self.track.stats)

    @property
    def requests(self) -> list[tuple[str, str, int]]:
        """A snapshot of the (method, path, status) of every request answered so far."""
        with self._lock:
            return list(self._requests)

    def _record(self, method: str, path: str, status: int) -> None:
        with self._lock:
            self._requests.append((method, path, status))

    # ------------------------------------------------------------------ handling
    @staticmethod
    def _body_limit(path: str) -> int:
        return MAX_TRACK_BODY if path == TRACK_PATH else MAX_BODY

    def _handle(self, method: str, path: str, headers, body: bytes, query: str = "") -> Response:
        track = path == TRACK_PATH and method == "POST"
        sandbox_path = path.startswith("/_sandbox/")
        limiter = self.track.limiter if track or sandbox_path else self.exports.limiter
        if path == EXPORT_IDS_PATH:
            limiter = self.export_ids.limiter
        with self._lock:
            if track:
                self.track.stats["requests"] += 1
            fault = self.faults.draw(track, path)
            if fault is not None and track:
                self.track.stats["faults_injected"] += 1
        download = DOWNLOAD_RE.match(path)
        if fault in APPLIED_FAULTS and track:  # applied as usual, then the answer is lost
            applied = self.track.handle(self._authorized(headers), headers, body)
            if applied.status != 201:
                return applied  # nothing was applied (e.g. rate-limited): no fault to add
            with self._lock:
                self.applied_then_failed += 1
            return fail_after_applying(fault, applied, self.faults.sleep)
        if fault is not None:
            return self.faults.respond(fault, None if download else limiter, s3=bool(download))
        if download:  # S3's answer: no Braze rate-limit headers
            return self.exports.download(method, download.group(1), download.group(2), query, headers)

        if track:
            return self.track.handle(self._authorized(headers), headers, body)
        if path == EXPORT_IDS_PATH:
            if method == "POST":
                return self.export_ids.handle(self._authorized(headers), headers, body)
            resp = json_response(405, {"message": "Method not allowed"}, Allow="POST")
            resp.headers.update(limiter.peek())
            return resp
        if path in (SANDBOX_PROFILES_PATH, SANDBOX_STATS_PATH):
            if method != "GET":
                resp = json_response(405, {"message": "Method not allowed"}, Allow="GET")
            elif not self._authorized(headers):
                resp = json_response(401, {"message": "Invalid API key"})
            elif path == SANDBOX_STATS_PATH:
                resp = json_response(
                    200,
                    {
                        **self.stats,
                        "data_points": self.profiles.data_points,
                        "profiles": self.profiles.count(),
                    },
                )
            else:
                resp = self.track.readback(query)
            resp.headers.update(limiter.peek())
            return resp
        if path == EXPORT_PATH:
            if method != "POST":
                resp = json_response(405, {"message": "Method not allowed"}, Allow="POST")
            else:
                return self.exports.request(self._authorized(headers), headers, body)  # own headers
        else:
            resp = json_response(404, {"message": "Not found"})
        resp.headers.update(self.exports.limiter.peek())
        return resp

    def _authorized(self, headers) -> bool:
        auth = headers.get("Authorization") or ""
        scheme, _, key = auth.partition(" ")
        return scheme.lower() == "bearer" and secrets.compare_digest(
            key.strip().encode(), self.api_key.encode()
        )


def main(argv: list[str] | None = None) -> int:
    """The CLI (:mod:`sandbox.braze_cli`): ``python -m sandbox.braze_server --help``."""
    from sandbox.braze_cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
