"""A small, strict imitation of Braze's REST API (segment export + users/track), over real HTTP.

Endpoints:

* ``POST /users/export/segment`` and ``GET|HEAD /exports/<token>.zip|.gz`` (the download links)
  -- :mod:`sandbox.braze_exports`; rate limit of 250,000 requests per sliding hour.
* ``POST /users/track`` -- :mod:`sandbox.braze_track` (validation, partial success), profile
  state in :class:`sandbox.braze_profiles.ProfileStore` (``BrazeSandbox.profiles``); its own
  sliding-window rate limit (3,000 requests / 3 s) and optional seeded fault injection
  (:mod:`sandbox.braze_faults`). Only ``POST`` is routed; other methods answer 404 like any
  unknown path.
* ``GET /_sandbox/profiles?attr=lytics_segments[&by=external_id]`` and ``GET /_sandbox/stats``
  -- **sandbox-only** read-back endpoints (Bearer auth; Braze has nothing like them).

Every response has a JSON body (except a successful download and a "reset" fault) and
``X-RateLimit-Limit`` / ``-Remaining`` / ``-Reset`` headers (:mod:`sandbox.rate_window`): those
of ``/users/track``'s limit on ``/users/track`` and ``/_sandbox/*``, those of the export
endpoint's limit everywhere else. A ``429`` from a limiter carries ``Retry-After`` and applies
nothing. Only authenticated requests count against a limit; injected faults do not count.

This module holds :class:`BrazeSandbox` (auth, routing, faults, test knobs) and the CLI; the HTTP
plumbing is in :mod:`sandbox.braze_http`. Standard library + orjson only; imports nothing from
``include/`` or ``plugins/``.

Run in the foreground::

    python -m sandbox.braze_server --port 8181 --api-key KEY --segment seg_demo:50000 --delay 2
"""

from __future__ import annotations

import argparse
import gc
import os
import secrets
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Callable, Collection, Iterable
from pathlib import Path

from sandbox.background_server import BackgroundHttpServer
from sandbox.braze_exports import DOWNLOAD_RE, EXPORT_PATH, RATE_LIMIT, SegmentExports
from sandbox.braze_faults import FAULT_KINDS, FaultInjector, check_fault
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

__all__ = ["BrazeSandbox", "SegmentSpec", "main"]

SANDBOX_PROFILES_PATH = "/_sandbox/profiles"  # sandbox-only read-back, not a Braze endpoint
SANDBOX_STATS_PATH = "/_sandbox/stats"  # sandbox-only, not a Braze endpoint


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
        self.exports = SegmentExports(self._lock, lambda: self.url, export_delay, rate_limit)
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
        self.faults = FaultInjector(track_faults, fault_seed, fault_sleep, fault_kinds)
        self._init_background()
        for spec in segments:
            self.add_segment(spec)

    # ------------------------------------------------------------------ lifecycle
    def _before_start(self) -> None:
        if self._given_data_dir is None:
            self.exports.data_dir = Path(tempfile.mkdtemp(prefix="braze-sandbox-"))
        else:
            self.exports.data_dir = self._given_data_dir
            self.exports.data_dir.mkdir(parents=True, exist_ok=True)

    def _after_stop(self) -> None:
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

    def fail_next(self, n: int, status: int | str = 500) -> None:
        """The next ``n`` requests, to any endpoint, answer ``status`` (429/503 carry Retry-After: 1).

        ``status`` may also be ``"timeout"`` (sleep ``fault_sleep`` seconds, then 500) or
        ``"reset"`` (close the connection without a response). Nothing is applied.
        """
        status = check_fault(status)
        with self._lock:
            self.faults.arm(n, status)

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
        with self._lock:
            if track:
                self.track.stats["requests"] += 1
            fault = self.faults.draw(track)
            if fault is not None and track:
                self.track.stats["faults_injected"] += 1
        if fault is not None:
            return self.faults.respond(fault, limiter)

        if track:
            return self.track.handle(self._authorized(headers), headers, body)
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
        elif m := DOWNLOAD_RE.match(path):
            if method not in ("GET", "HEAD"):
                resp = json_response(405, {"message": "Method not allowed"}, Allow="GET, HEAD")
            else:
                resp = self.exports.download(m.group(1), m.group(2))
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
