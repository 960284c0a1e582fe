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

This module holds :class:`LyticsSandbox` (auth, routing, scans); the test knobs and the request
log are in :mod:`sandbox.lytics_knobs`, the CLI in :mod:`sandbox.lytics_cli`, the HTTP plumbing in
:mod:`sandbox.lytics_http`, the optional rate limit in :mod:`sandbox.rate_window`, membership in
:mod:`sandbox.lytics_members`. Standard library + orjson only; imports nothing
from ``include/`` or ``plugins/``.

Run in the foreground::

    python -m sandbox.lytics_server --port 8282 --token T --audience aud1:high_value:50000
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import re
import secrets
import sys
import threading
from collections.abc import Iterable
from datetime import UTC, datetime
from urllib.parse import parse_qs, unquote

from sandbox.background_server import BackgroundHttpServer
from sandbox.lytics_collect import DEFAULT_ACCOUNT, CollectStore, is_collect_path
from sandbox.lytics_http import LyticsHandler, LyticsHttpServer, Response, error_response, json_response
from sandbox.lytics_knobs import RESET, LyticsKnobs
from sandbox.lytics_members import Audience, MembershipStore, user_record
from sandbox.lytics_scan_tokens import Cursor, TokenError, decode_token, encode_token
from sandbox.rate_window import SlidingWindowLimiter

__all__ = ["DEFAULT_LIMIT", "MAX_LIMIT", "RESET", "Audience", "LyticsSandbox", "MembershipStore", "main"]

DEFAULT_LIMIT = 10
MAX_LIMIT = 100
TOKEN_TTL = 300.0

_SEGMENT_RE = re.compile(r"^/api/segment/([^/]+)(/scan)?/?$")
CONTROL_PREFIX = "/_sandbox/"
_CONTROL_RE = re.compile(r"^/_sandbox/audiences/([^/]+)/(remove|add)/?$")


class LyticsSandbox(LyticsKnobs, BackgroundHttpServer):
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
        self._init_knobs()
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


def main(argv: list[str] | None = None) -> int:
    """The CLI (:mod:`sandbox.lytics_cli`): ``python -m sandbox.lytics_server --help``."""
    from sandbox.lytics_cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
