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

Scan cursors: ``start`` tokens are opaque (URL-safe base64 of the audience id, the last user
index served and the issue time, HMAC-signed with a per-process secret). They expire
``token_ttl`` seconds after the page that carried them was served (400 ``scan token
expired``); a forged/truncated token, or one from another audience, is a 400 too. Pages are
computed when served: a scan sees membership changes ahead of its cursor, never yields a
user twice, and misses users added behind the cursor (like a live scan).

Standard library + orjson only; imports nothing from ``include/`` or ``plugins/``.

Run in the foreground::

    python -m sandbox.lytics_server --port 8282 --token T --audience aud1:high_value:50000
"""

from __future__ import annotations

import argparse
import base64
import binascii
import collections
import hashlib
import hmac
import os
import re
import secrets
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

import orjson

from sandbox.background_server import BackgroundHttpServer
from sandbox.lytics_members import Audience, MembershipStore, user_record

__all__ = ["DEFAULT_LIMIT", "MAX_LIMIT", "RESET", "Audience", "LyticsSandbox", "MembershipStore", "main"]

DEFAULT_LIMIT = 10
MAX_LIMIT = 100
RESET = "reset"  # fail_next(n, RESET): close the connection (TCP RST) without answering
TOKEN_TTL = 300.0
MAX_BODY = 1 << 20
_MAC_LEN = 16

_SEGMENT_RE = re.compile(r"^/api/segment/([^/]+)(/scan)?/?$")


@dataclass
class _Response:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    reset: bool = False  # drop the connection instead of answering


def _json(status: int, payload: dict | None = None, **headers: str) -> _Response:
    body = {"status": status}
    body.update(payload or {})
    return _Response(status, orjson.dumps(body), dict(headers))


def _error(status: int, message: str) -> _Response:
    return _json(status, {"message": message})


class _TokenError(ValueError):
    pass


class _RateLimiter:
    """Sliding one-second window: at most ``per_sec`` hits in any second."""

    def __init__(self, per_sec: float) -> None:
        self.per_sec = per_sec
        self._hits: collections.deque[float] = collections.deque()
        self._lock = threading.Lock()

    def hit(self) -> bool:
        now = time.monotonic()
        with self._lock:
            while self._hits and self._hits[0] <= now - 1.0:
                self._hits.popleft()
            if len(self._hits) >= self.per_sec:
                return False
            self._hits.append(now)
            return True


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "LyticsSandbox/1.0"
    timeout = 60  # idle keep-alive connections
    disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms delayed-ACK stall
    server: _Server

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - stdlib signature
        if self.server.sandbox.verbose:
            super().log_message(format, *args)

    def log_error(self, format: str, *args) -> None:  # noqa: A002 - stdlib signature
        super().log_message(format, *args)  # always, even when quiet

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        # The stdlib logs the raw request line, which may carry ?key=<token>: log the path only.
        path = urlsplit(self.path).path if hasattr(self, "path") else "-"
        self.log_message('"%s %s" %s %s', getattr(self, "command", "-"), path, code, size)

    def _dispatch(self) -> None:
        sandbox = self.server.sandbox
        split = urlsplit(self.path)
        path = split.path
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            resp = _error(411, "Content-Length required")
        else:
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                length = -1
            if length < 0 or length > MAX_BODY:
                self.close_connection = True
                resp = _error(400 if length < 0 else 413, "invalid request body")
            else:
                if length:
                    self.rfile.read(length)  # GET-only API: bodies are read and ignored
                try:
                    resp = sandbox._handle(self.command, path, split.query, self.headers)
                except Exception as e:  # a sandbox bug must still produce an HTTP answer
                    self.log_error("internal error: %r", e)
                    resp = _error(500, f"internal sandbox error: {type(e).__name__}")
        if resp.reset:
            sandbox._record(self.command, path, 0)
            self._reset()
            return
        sandbox._record(self.command, path, resp.status)
        self._send(resp)

    def _reset(self) -> None:
        """Abort the connection with a TCP RST (SO_LINGER 0), sending no response at all."""
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()  # really closed (-> RST) once rfile/wfile are closed in finish()
        except OSError:
            pass

    def _send(self, resp: _Response) -> None:
        self.send_response(resp.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(resp.body)))
        for k, v in resp.headers.items():
            self.send_header(k, v)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command == "HEAD":
            return
        try:
            self.wfile.write(resp.body)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Protocol-level errors (bad request line, ...) also answer JSON."""
        self.close_connection = True
        self._send(_error(code, message or self.responses.get(code, ("Error",))[0]))

    do_GET = do_POST = do_HEAD = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = _dispatch


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    sandbox: LyticsSandbox


class LyticsSandbox(BackgroundHttpServer):
    """Fake Lytics segment API on loopback. Use as a context manager or start()/stop().

    ``store`` is the live :class:`MembershipStore`: change membership through it (``add``,
    ``remove``, ``churn``) between -- or during -- scans.
    """

    _server_class = _Server
    _handler_class = _Handler
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
        self._limiter = _RateLimiter(rate_limit_per_sec) if rate_limit_per_sec else None
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
    def _handle(self, method: str, path: str, query: str, headers) -> _Response:
        with self._lock:
            injected = self._fail_count > 0
            if injected:
                self._fail_count -= 1
                status = self._fail_status
        if injected:
            if status == RESET:
                return _Response(0, reset=True)
            return _error(status, f"injected failure ({status})")

        params = parse_qs(query, keep_blank_values=True)
        if not self._authorized(headers, params):
            return _error(401, "Unauthorized")
        if self._limiter is not None and not self._limiter.hit():
            return _error(429, "rate limit exceeded")
        if method != "GET":
            return _json(405, {"message": "method not allowed"}, Allow="GET")

        if path.rstrip("/") == "/api/segment":
            table = _param(params, "table")
            return self._list(table)
        m = _SEGMENT_RE.match(path)
        if m is None:
            return _error(404, "not found")
        audience = self._find(unquote(m.group(1)))
        if audience is None:
            return _error(404, "segment not found")
        if m.group(2):
            return self._scan(audience, params)
        return _json(200, {"message": "success", "data": self._describe(audience)})

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

    def _list(self, table: str | None) -> _Response:
        items = [] if table not in (None, "", "user") else [self._describe(a) for a in self.audiences]
        return _json(200, {"message": "success", "data": items})

    def _scan(self, audience: Audience, params: dict[str, list[str]]) -> _Response:
        raw_limit = _param(params, "limit")
        if raw_limit in (None, ""):
            limit = DEFAULT_LIMIT
        else:
            try:
                limit = int(raw_limit)
            except ValueError:
                return _error(400, f"limit must be an integer, got {raw_limit!r}")
            if not 1 <= limit <= MAX_LIMIT:
                return _error(400, f"limit must be between 1 and {MAX_LIMIT}, got {limit}")
        raw_fields = _param(params, "fields")
        fields = None
        if raw_fields:
            fields = [f.strip() for f in raw_fields.split(",") if f.strip()]
        start = _param(params, "start")
        after = -1
        if start:
            try:
                after = self._decode_token(start, audience.id)
            except _TokenError as e:
                return _error(400, str(e))

        page = self.store.next_members(audience.id, after, limit + 1)
        more = len(page) > limit
        page = page[:limit]
        total = self.store.count(audience.id)
        everyone = self.audiences
        data = []
        for i in page:
            segments = [a.slug for a in everyone if self.store.is_member(a.id, i)]
            data.append(user_record(audience, i, segments, fields))
        next_token = self._encode_token(audience.id, page[-1]) if more else ""
        return _json(200, {"message": "success", "_next": next_token, "total": total, "data": data})

    # ------------------------------------------------------------------ scan tokens
    def _encode_token(self, audience_id: str, last: int) -> str:
        payload = f"{audience_id}\x00{last}\x00{time.time():.3f}".encode()
        mac = hmac.new(self._secret, payload, hashlib.sha256).digest()[:_MAC_LEN]
        return base64.urlsafe_b64encode(payload + mac).rstrip(b"=").decode("ascii")

    def _decode_token(self, token: str, audience_id: str) -> int:
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except (binascii.Error, ValueError):
            raise _TokenError("invalid scan token") from None
        if len(raw) <= _MAC_LEN:
            raise _TokenError("invalid scan token")
        payload, mac = raw[:-_MAC_LEN], raw[-_MAC_LEN:]
        good = hmac.new(self._secret, payload, hashlib.sha256).digest()[:_MAC_LEN]
        if not hmac.compare_digest(mac, good):
            raise _TokenError("invalid scan token")
        aid, last, issued = payload.decode().split("\x00")
        if aid != audience_id:
            raise _TokenError("scan token does not belong to this segment")
        if time.time() - float(issued) > self.token_ttl:
            raise _TokenError("scan token expired")
        return int(last)


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
