"""A small, strict imitation of the Lytics segment API, served over real HTTP.

Endpoints (``GET`` unless noted, all JSON ``{"status": ..., "message": ..., ...}``):

* ``/api/segment?table=user`` -- the audiences: ``id``, ``slug_name``, ``name``, ``kind``,
  ``table``, ``segment_ql``, ``updated``.
* ``/api/segment/{id-or-slug}`` -- one audience; 404 ``segment not found`` if unknown.
* ``/api/segment/{id-or-slug}/scan?limit=N&start=<token>&fields=a,b`` -- the members, in
  ascending user index (== ascending ``braze_id``), ``limit`` 1..100 (default 10; more is a
  400), ``_next`` is ``""`` on the last page, ``total`` is the member count *now*.

and the collect endpoints a Braze webhook step posts to (``POST /c/{account}/{stream}?key=...``,
``POST /collect/json/{stream}``; :mod:`sandbox.lytics_collect`, events recorded in ``collect``).

Not Lytics: two **control endpoints** for tests that drive a sandbox running in another process (the
local stack of ``scripts/up.sh``), where ``store`` cannot be reached: ``POST
/_sandbox/audiences/{id-or-slug}/remove`` with ``{"share": 0.6}`` (or ``{"count": N}``) makes that
many members leave the audience (lowest user indices first) and answers ``{"data": {"removed": N,
"members": M}}``; ``POST /_sandbox/audiences/{id-or-slug}/add`` with ``{"count": N}`` (or
``{"share": 0.5}`` of the current members) makes that many users join (the lowest user indices that
are not members, growing the universe past its end if needed) and answers ``{"data": {"added": N,
"members": M}}``. They need the token like every endpoint and exist only while the sandbox listens
on a loopback address (the default, and the stack's); otherwise they are a 404.

Auth: ``Authorization: <token>`` (raw -- ``Bearer <token>`` is refused) or, for older clients,
``?key=<token>``. The token never appears in logs (the request log drops the query string).

Scan cursors: ``start`` tokens are opaque (:mod:`sandbox.lytics_scan_tokens`: URL-safe base64
of the audience id, the last user index served, the issue time and the scan's page counts,
HMAC-signed with a per-process secret). They expire ``token_ttl`` seconds after the page that
carried them was served (400 ``scan token expired``); a forged/truncated token, or one from
another audience, is a 400 too. Pages are computed when served: a scan sees membership changes
ahead of its cursor, never yields a user twice, and misses users added behind the cursor (like a
live scan).

Knobs for what a real Lytics account can do to a scan (each documented on its method):
``empty_pages`` (pages with ``"data": []`` but a ``_next`` token), ``end_scans_after`` (a scan
ends with ``"_next": ""`` although members remain), ``total_offset`` (a ``total`` that disagrees
with the members), ``expire_tokens`` (every outstanding scan token expires now) and
``rename_user_field`` (a user field renamed or removed from the account's schema).

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
import ipaddress
import json
import os
import re
import secrets
import signal
import sys
import threading
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from urllib.parse import parse_qs, unquote

from sandbox.background_server import BackgroundHttpServer
from sandbox.lytics_collect import DEFAULT_ACCOUNT, CollectStore, is_collect_path
from sandbox.lytics_http import LyticsHandler, LyticsHttpServer, Response, error_response, json_response
from sandbox.lytics_members import Audience, MembershipStore, user_record
from sandbox.lytics_scan_tokens import Cursor, TokenError, decode_token, encode_token
from sandbox.rate_window import SlidingWindowLimiter

__all__ = ["DEFAULT_LIMIT", "MAX_LIMIT", "RESET", "Audience", "LyticsSandbox", "MembershipStore", "main"]

DEFAULT_LIMIT = 10
MAX_LIMIT = 100
RESET = "reset"  # fail_next(n, RESET): close the connection (TCP RST) without answering
TOKEN_TTL = 300.0

_SEGMENT_RE = re.compile(r"^/api/segment/([^/]+)(/scan)?/?$")
CONTROL_PREFIX = "/_sandbox/"
_CONTROL_RE = re.compile(r"^/_sandbox/audiences/([^/]+)/(remove|add)/?$")


class LyticsSandbox(BackgroundHttpServer):
    """Fake Lytics segment API on loopback. Use as a context manager or start()/stop().

    ``store`` is the live :class:`MembershipStore`: change membership through it (``add``,
    ``remove``, ``churn``) between -- or during -- scans. ``collect`` is the
    :class:`~sandbox.lytics_collect.CollectStore` of ``accounts``: the events posted to it.
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
        accounts: Iterable[str] = (DEFAULT_ACCOUNT,),
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
        self.collect = CollectStore(accounts)
        self._secret = secrets.token_bytes(32)
        self._lock = threading.Lock()
        self._audiences: dict[str, Audience] = {}  # id -> audience, in registration order
        self._slugs: dict[str, str] = {}  # slug -> id
        self._updated: dict[str, str] = {}  # id -> ISO time the audience was (re)defined
        self._requests: list[tuple[str, str, int]] = []
        self._fail_count = 0
        self._fail_status: int | str = 500
        self._empty_pages: dict[str | None, tuple[int, int]] = {}  # audience id (None: any) -> (after, run)
        self._end_after: dict[str | None, int] = {}  # audience id (None: any) -> pages
        self._total_offset: dict[str | None, int] = {}  # audience id (None: any) -> delta
        self._renamed: dict[str, str | None] = {}  # user field -> its new name (None: removed)
        self._tokens_valid_from = 0.0
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

    def empty_pages(self, run: int, after: int = 1, audience_id: str | None = None) -> None:
        """In every scan (of ``audience_id``, or of any audience), once ``after`` pages with members
        were served, serve ``run`` pages with ``"data": []`` and a non-empty ``_next`` (pointing at
        the same place), then go on. ``run=0`` turns it off. Lytics scans walk the user table in
        parts, so a page may hold no member of the audience and still not be the last."""
        if run < 0 or after < 0:
            raise ValueError("run and after must be >= 0")
        with self._lock:
            if run:
                self._empty_pages[audience_id] = (after, run)
            else:
                self._empty_pages.pop(audience_id, None)

    def end_scans_after(self, pages: int | None, audience_id: str | None = None) -> None:
        """Scans (of ``audience_id``, or of any audience) end with ``"_next": ""`` after ``pages``
        pages although members remain (``total`` still counts them all); None turns it off."""
        if pages is not None and pages < 1:
            raise ValueError("pages must be >= 1 (or None)")
        with self._lock:
            if pages is None:
                self._end_after.pop(audience_id, None)
            else:
                self._end_after[audience_id] = pages

    def total_offset(self, delta: int, audience_id: str | None = None) -> None:
        """Scan pages report ``total`` = members + ``delta`` (a count that disagrees with the scan)."""
        with self._lock:
            if delta:
                self._total_offset[audience_id] = delta
            else:
                self._total_offset.pop(audience_id, None)

    def expire_tokens(self) -> None:
        """Every scan token issued so far is refused from now on (400 ``scan token expired``), as
        when a long scan outlives its cursor; scans started afterwards work."""
        with self._lock:
            self._tokens_valid_from = time.time()

    def rename_user_field(self, old: str, new: str | None) -> None:
        """Rename a user field account-wide (``new=None``: remove it): scans no longer return
        ``old`` (asking for it in ``fields`` gives records without it) and return the values under
        ``new`` instead; ``restore_user_fields`` undoes every rename."""
        if new is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,63}", new):
            raise ValueError(f"not a field name: {new!r}")
        with self._lock:
            self._renamed[old] = new

    def restore_user_fields(self) -> None:
        with self._lock:
            self._renamed.clear()

    def _knob(self, knobs: dict, audience_id: str):
        return knobs.get(audience_id, knobs.get(None))

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
    def _handle(self, method: str, path: str, query: str, headers, body: bytes = b"") -> Response:
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
        if path.startswith(CONTROL_PREFIX):
            return self._control(method, path, body)
        if is_collect_path(path):
            return self.collect.handle(method, path, headers, body)
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

    def _control(self, method: str, path: str, body: bytes) -> Response:
        """The test control endpoints (see the module docstring): members leave or join an audience."""
        m = _CONTROL_RE.match(path)
        if m is None or not _is_loopback(self.host):
            return error_response(404, "not found")
        if method != "POST":
            return json_response(405, {"message": "method not allowed"}, Allow="POST")
        audience = self._find(unquote(m.group(1)))
        if audience is None:
            return error_response(404, "segment not found")
        try:
            req = json.loads(body or b"{}")
            if not isinstance(req, dict) or len(req.keys() & {"share", "count"}) != 1:
                raise ValueError
            members = self.store.count(audience.id)
            if "share" in req:
                share = float(req["share"])
                if not 0.0 <= share <= 1.0:
                    raise ValueError
                count = round(share * members)
            else:
                count = req["count"]
                if type(count) is not int or count < 0:
                    raise ValueError
        except (ValueError, TypeError):
            return error_response(400, 'expected {"share": 0..1} or {"count": N >= 0}')
        if m.group(2) == "add":
            joining = self.store.next_nonmembers(audience.id, -1, count) if count else []
            added = self.store.add(audience.id, joining)
            return json_response(200, {"message": "success",
                                       "data": {"added": added, "members": self.store.count(audience.id)}})
        leaving = self.store.next_members(audience.id, -1, count) if count else []
        removed = self.store.remove(audience.id, leaving)
        return json_response(200, {"message": "success",
                                   "data": {"removed": removed, "members": self.store.count(audience.id)}})

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
        with self._lock:
            not_before = self._tokens_valid_from
            empty_knob = self._knob(self._empty_pages, audience.id)
            end_after = self._knob(self._end_after, audience.id)
            offset = self._knob(self._total_offset, audience.id) or 0
            renamed = dict(self._renamed)
        cursor = Cursor(-1)
        if start:
            try:
                cursor = decode_token(self._secret, start, audience.id, self.token_ttl, not_before)
            except TokenError as e:
                return error_response(400, str(e))
        total = max(0, self.store.count(audience.id) + offset)
        if empty_knob is not None:
            after_pages, run = empty_knob
            if cursor.pages >= after_pages and cursor.empty < run \
                    and self.store.next_members(audience.id, cursor.last, 1):
                token = encode_token(self._secret, audience.id, cursor.last, cursor.pages, cursor.empty + 1)
                return json_response(200, {"message": "success", "_next": token, "total": total, "data": []})

        page = self.store.next_members(audience.id, cursor.last, limit + 1)
        more = len(page) > limit
        page = page[:limit]
        if end_after is not None and cursor.pages + 1 >= end_after:
            more = False  # the scan "ends" here, members remain
        everyone = self.audiences
        data = []
        for i in page:
            segments = [a.slug for a in everyone if self.store.is_member(a.id, i)]
            data.append(_renamed_record(audience, i, segments, fields, renamed))
        next_token = encode_token(self._secret, audience.id, page[-1], cursor.pages + 1, cursor.empty) if more else ""
        return json_response(200, {"message": "success", "_next": next_token, "total": total, "data": data})


def _renamed_record(audience: Audience, i: int, segments: list[str], fields: list[str] | None,
                    renamed: dict[str, str | None]) -> dict:
    """``user_record`` as seen through the account's renamed fields (``old -> new``, None: removed)."""
    if not renamed:
        return user_record(audience, i, segments, fields)
    back = {new: old for old, new in renamed.items() if new}
    if fields is None:  # the default fields, under their current names
        fields = [renamed.get(f, f) for f in audience.fields if renamed.get(f, f)]
    wanted = [back.get(f, f) for f in fields if f in back or f not in renamed]
    rec = user_record(audience, i, segments, wanted)
    for old, new in renamed.items():
        if old in rec:
            value = rec.pop(old)
            if new:
                rec[new] = value
    return rec


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


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
    ap.add_argument("--account", action="append", default=[], metavar="ACCOUNT",
                    help=f"account number taking collect events; repeatable (default: {DEFAULT_ACCOUNT})")
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
        accounts=args.account or (DEFAULT_ACCOUNT,),
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
