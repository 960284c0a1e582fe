"""A small, strict imitation of the Lytics segment API, served over real HTTP.

Endpoints (all ``GET``, all JSON ``{"status": ..., "message": ..., ...}``):

* ``/api/segment?table=user`` -- the audiences: ``id``, ``slug_name``, ``name``, ``kind``,
  ``table``, ``segment_ql``, ``updated``.
* ``/api/segment/{id-or-slug}`` -- one audience; 404 ``segment not found`` if unknown.
* ``/api/segment/{id-or-slug}/scan?limit=N&start=<token>&fields=a,b`` -- the members, in
  ascending user index (== ascending ``braze_id``), ``limit`` 1..100 (default 10; more is a
  400), ``_next`` is ``""`` on the last page, ``total`` is the member count *now*.

Auth: ``Authorization: <token>`` (raw -- ``Bearer <token>`` is refused) or, for older clients,
``?key=<token>``. The token never appears in logs (the request log drops the query string).

Scan cursors: ``start`` tokens are opaque (:mod:`sandbox.lytics_scan_tokens`: URL-safe base64
of the audience id, the last user index served and the issue time, HMAC-signed with a
per-process secret). They expire ``token_ttl`` seconds after the page that carried them was
served (400 ``scan token expired``); a forged/truncated token, or one from another audience, is
a 400 too. Pages are computed when served: a scan sees membership changes ahead of its cursor,
never yields a user twice, and misses users added behind the cursor (like a live scan).

This module holds :class:`LyticsSandbox` (auth, routing, scans, test knobs) and the CLI; the HTTP
plumbing is in :mod:`sandbox.lytics_http`, the optional rate limit in :mod:`sandbox.rate_window`,
membership in :mod:`sandbox.lytics_members`. Standard library + orjson only; imports nothing
from ``include/`` or ``plugins/``.

Run in the foreground::

    python -m sandbox.lytics_server --port 8282 --token T --audience aud1:high_value:50000
"""

from __future__ import annotations

import argparse
import hmac
import os
import re
import secrets
import signal
import sys
import threading
from collections.abc import Iterable
from datetime import UTC, datetime
from urllib.parse import parse_qs, unquote

from sandbox.background_server import BackgroundHttpServer
from sandbox.lytics_http import LyticsHandler, LyticsHttpServer, Response, error_response, json_response
from sandbox.lytics_members import Audience, MembershipStore, user_record
from sandbox.lytics_scan_tokens import TokenError, decode_token, encode_token
from sandbox.rate_window import SlidingWindowLimiter

__all__ = ["DEFAULT_LIMIT", "MAX_LIMIT", "RESET", "Audience", "LyticsSandbox", "MembershipStore", "main"]

DEFAULT_LIMIT = 10
MAX_LIMIT = 100
RESET = "reset"  # fail_next(n, RESET): close the connection (TCP RST) without answering
TOKEN_TTL = 300.0

_SEGMENT_RE = re.compile(r"^/api/segment/([^/]+)(/scan)?/?$")


class LyticsSandbox(BackgroundHttpServer):
    """Fake Lytics segment API on loopback. Use as a context manager or start()/stop().

    ``store`` is the live :class:`MembershipStore`: change membership through it (``add``,
    ``remove``, ``churn``) between -- or during -- scans.
    """

    _server_class = LyticsHttpServer
    _handler_class = LyticsHandler
    _thread_name = "lytics-sandbox"

    def __init__(
        self,
        token: str,
        audiences: Iterable[Audience] = (),
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        token_ttl: float = TOKEN_TTL,
        rate_limit_per_sec: float | None = None,
        verbose: bool = False,
    ) -> None:
        if not token:
            raise ValueError("token must not be empty")
        if rate_limit_per_sec is not None and rate_limit_per_sec <= 0:
            raise ValueError("rate_limit_per_sec must be > 0 (or None for no limit)")
        self.token = token
        self.host = host
        self.port = port
        self.token_ttl = float(token_ttl)
        self.verbose = verbose
        self.store = MembershipStore()
        self._secret = secrets.token_bytes(32)
        self._lock = threading.Lock()
        self._audiences: dict[str, Audience] = {}  # id -> audience, in registration order
        self._slugs: dict[str, str] = {}  # slug -> id
        self._updated: dict[str, str] = {}  # id -> ISO time the audience was (re)defined
        self._requests: list[tuple[str, str, int]] = []
        self._fail_count = 0
        self._fail_status: int | str = 500
        self._limiter = SlidingWindowLimiter(rate_limit_per_sec, 1.0) if rate_limit_per_sec else None
        self._init_background()
        for a in audiences:
            self.add_audience(a)

    # ------------------------------------------------------------------ lifecycle
    # ------------------------------------------------------------------ test knobs
    def add_audience(self, audience: Audience) -> None:
        """Add (or redefine, resetting its membership) an audience."""
        with self._lock:
            owner = self._slugs.get(audience.slug)
            if owner is not None and owner != audience.id:
                raise ValueError(f"slug {audience.slug!r} already used by audience {owner!r}")
            if audience.id in self._slugs and self._slugs[audience.id] != audience.id:
                raise ValueError(f"audience id {audience.id!r} is another audience's slug")
        self.store.register(audience)  # outside the lock: building a 10M bitmap takes ~0.2 s
        with self._lock:
            old = self._audiences.get(audience.id)
            if old is not None:
                self._slugs.pop(old.slug, None)
            self._audiences[audience.id] = audience
            self._slugs[audience.slug] = audience.id
            self._updated[audience.id] = datetime.now(UTC).isoformat(timespec="milliseconds")

    @property
    def audiences(self) -> list[Audience]:
        with self._lock:
            return list(self._audiences.values())

    def fail_next(self, n: int, status: int | str = 500) -> None:
        """The next ``n`` requests, to any endpoint and before auth, answer ``status`` (e.g.
        429/500/503) -- or, with ``status="reset"``, get their connection aborted (TCP RST)
        without any response (logged with status 0)."""
        if status != RESET and not (isinstance(status, int) and 100 <= status <= 599):
            raise ValueError(f"status must be an HTTP status or {RESET!r}, got {status!r}")
        with self._lock:
            self._fail_count = n
            self._fail_status = status

    @property
    def requests(self) -> list[tuple[str, str, int]]:
        """A snapshot of the (method, path without query, status) of every request so far."""
        with self._lock:
            return list(self._requests)

    def clear_requests(self) -> None:
        with self._lock:
            self._requests.clear()

    def _record(self, method: str, path: str, status: int) -> None:
        with self._lock:
            self._requests.append((method, path, status))

    # ------------------------------------------------------------------ handling
    def _handle(self, method: str, path: str, query: str, headers) -> Response:
        with self._lock:
            injected = self._fail_count > 0
            if injected:
                self._fail_count -= 1
                status = self._fail_status
        if injected:
            if status == RESET:
                return Response(0, reset=True)
            return error_response(status, f"injected failure ({status})")

        params = parse_qs(query, keep_blank_values=True)
        if not self._authorized(headers, params):
            return error_response(401, "Unauthorized")
        if self._limiter is not None and not self._limiter.allow():
            return error_response(429, "rate limit exceeded")
        if method != "GET":
            return json_response(405, {"message": "method not allowed"}, Allow="GET")

        if path.rstrip("/") == "/api/segment":
            table = _param(params, "table")
            return self._list(table)
        m = _SEGMENT_RE.match(path)
        if m is None:
            return error_response(404, "not found")
        audience = self._find(unquote(m.group(1)))
        if audience is None:
            return error_response(404, "segment not found")
        if m.group(2):
            return self._scan(audience, params)
        return json_response(200, {"message": "success", "data": self._describe(audience)})

    def _authorized(self, headers, params: dict[str, list[str]]) -> bool:
        expected = self.token.encode()
        auth = headers.get("Authorization")
        if auth is not None:  # when present, the header decides (a "Bearer ..." value fails)
            return hmac.compare_digest(auth.strip().encode(), expected)
        keys = params.get("key")
        return bool(keys) and hmac.compare_digest(keys[-1].encode(), expected)

    def _find(self, id_or_slug: str) -> Audience | None:
        with self._lock:
            a = self._audiences.get(id_or_slug)
            if a is None and (aid := self._slugs.get(id_or_slug)) is not None:
                a = self._audiences.get(aid)
            return a

    def _describe(self, a: Audience) -> dict:
        return {
            "id": a.id,
            "slug_name": a.slug,
            "name": a.name or a.slug,
            "kind": "segment",
            "table": "user",
            "segment_ql": f"FILTER AND (sandbox_population = {a.population}, seed = {a.seed}) FROM user ALIAS {a.slug}",
            "updated": self._updated.get(a.id, ""),
        }

    def _list(self, table: str | None) -> Response:
        items = [] if table not in (None, "", "user") else [self._describe(a) for a in self.audiences]
        return json_response(200, {"message": "success", "data": items})

    def _scan(self, audience: Audience, params: dict[str, list[str]]) -> Response:
        raw_limit = _param(params, "limit")
        if raw_limit in (None, ""):
            limit = DEFAULT_LIMIT
        else:
            try:
                limit = int(raw_limit)
            except ValueError:
                return error_response(400, f"limit must be an integer, got {raw_limit!r}")
            if not 1 <= limit <= MAX_LIMIT:
                return error_response(400, f"limit must be between 1 and {MAX_LIMIT}, got {limit}")
        raw_fields = _param(params, "fields")
        fields = None
        if raw_fields:
            fields = [f.strip() for f in raw_fields.split(",") if f.strip()]
        start = _param(params, "start")
        after = -1
        if start:
            try:
                after = decode_token(self._secret, start, audience.id, self.token_ttl)
            except TokenError as e:
                return error_response(400, str(e))

        page = self.store.next_members(audience.id, after, limit + 1)
        more = len(page) > limit
        page = page[:limit]
        total = self.store.count(audience.id)
        everyone = self.audiences
        data = []
        for i in page:
            segments = [a.slug for a in everyone if self.store.is_member(a.id, i)]
            data.append(user_record(audience, i, segments, fields))
        next_token = encode_token(self._secret, audience.id, page[-1]) if more else ""
        return json_response(200, {"message": "success", "_next": next_token, "total": total, "data": data})


def _param(params: dict[str, list[str]], name: str) -> str | None:
    values = params.get(name)
    return values[-1] if values else None


# ---------------------------------------------------------------------- CLI
def _parse_audience(text: str) -> Audience:
    """``ID:SLUG:POPULATION[:key=value,...]``, e.g. ``aud1:high_value:50000:seed=7,missing_id_every=100``."""
    parts = text.split(":", 3)
    if len(parts) < 3:
        raise argparse.ArgumentTypeError(f"expected ID:SLUG:POPULATION[:key=value,...], got {text!r}")
    kwargs: dict = {}
    if len(parts) == 4 and parts[3]:
        for item in parts[3].split(","):
            key, sep, value = item.partition("=")
            if not sep:
                raise argparse.ArgumentTypeError(f"expected key=value, got {item!r}")
            if key in ("name", "id_field"):
                kwargs[key] = value
            elif key in ("seed", "missing_id_every", "universe"):
                kwargs[key] = int(value)
            else:
                raise argparse.ArgumentTypeError(f"unknown audience option {key!r}")
    kwargs.setdefault("name", parts[1].replace("_", " ").title())
    try:
        return Audience(parts[0], parts[1], population=int(parts[2]), **kwargs)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from e


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sandbox.lytics_server", description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8282)
    ap.add_argument(
        "--token", default=os.environ.get("LYTICS_SANDBOX_TOKEN"), help="default: $LYTICS_SANDBOX_TOKEN"
    )
    ap.add_argument(
        "--audience",
        action="append",
        type=_parse_audience,
        default=[],
        metavar="ID:SLUG:POPULATION[:k=v,...]",
        help="repeatable; options: name, seed, id_field, missing_id_every, universe",
    )
    ap.add_argument("--token-ttl", type=float, default=TOKEN_TTL, help="seconds a scan token stays valid")
    ap.add_argument("--rate-limit", type=float, default=None, help="requests per second (default: none)")
    ap.add_argument(
        "--churn-every", type=float, default=0.0, help="churn every audience each N seconds (0: never)"
    )
    ap.add_argument("--churn-share", type=float, default=0.01, help="share of members churned each time")
    ap.add_argument("-q", "--quiet", action="store_true", help="do not log requests")
    args = ap.parse_args(argv)
    if not args.token:
        ap.error("--token (or $LYTICS_SANDBOX_TOKEN) is required")

    sandbox = LyticsSandbox(
        args.token,
        args.audience,
        host=args.host,
        port=args.port,
        token_ttl=args.token_ttl,
        rate_limit_per_sec=args.rate_limit,
        verbose=not args.quiet,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    sandbox.start()
    try:
        print(f"Lytics sandbox listening on {sandbox.url}", flush=True)
        for a in args.audience:
            print(f"  audience {a.id} ({a.slug}): {sandbox.store.count(a.id)} members", flush=True)
        rounds = 0
        while not stop.wait(args.churn_every or None):
            rounds += 1
            for a in args.audience:
                removed, added = sandbox.store.churn(a.id, args.churn_share, seed=rounds)
                print(f"  churn #{rounds} {a.slug}: -{len(removed)} +{len(added)}", flush=True)
    except KeyboardInterrupt:
        pass
    finally:
        sandbox.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
