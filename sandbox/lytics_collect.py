"""The Lytics sandbox's collect endpoints: what a Braze webhook step (or any collector) posts to.

* ``POST /c/{account}/{stream}?key=<token>`` -- the URL Lytics' Braze guide gives for webhooks;
* ``POST /collect/json/{stream}`` with ``Authorization: <token>`` -- the JSON collect API (the
  account is the token's: the sandbox's first account).

Authentication (401) and injected failures are :class:`sandbox.lytics_server.LyticsSandbox`'s, as
for every endpoint. Then, strictly, in this order:

=====================================================  =====================================
request                                                answer
=====================================================  =====================================
not ``POST``                                           405 (``Allow: POST``)
account unknown (``/c/`` only)                         404 ``account not found``
stream name not ``[A-Za-z0-9_][A-Za-z0-9_-]*``         400 ``invalid stream name``
stream not in ``restrict_streams(...)`` (when set)     404 ``stream not found``
``Content-Type`` not ``application/json``              415
body empty                                             400 ``empty body``
body over 4,096 bytes                                  413 ``event too large``
body not JSON                                          400 ``body is not valid JSON``
body JSON but not an object (array, string, ...)       400 ``body must be a JSON object``
otherwise                                              200 ``{"status": 200, "message": "success"}``
=====================================================  =====================================

Lytics documents the 4 KB limit ("max input size: byte size of a single input record") but not
the answer to a larger record; the sandbox answers 413 Content Too Large (RFC 9110), the status
made for it. Lytics creates a stream when data first arrives, so any well-formed stream name is
accepted unless a test restricts them. Lytics' JavaScript tag posts to ``/c/{account}`` without a
key, so Lytics may accept keyless events there; the sandbox demands the key (the stricter
choice), so a wrong key shows up in tests. Accepted events are recorded (:meth:`CollectStore.events`).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import unquote

import orjson

from sandbox.lytics_http import Response, error_response, json_response

__all__ = ["DEFAULT_ACCOUNT", "MAX_EVENT_BYTES", "CollectStore", "CollectedEvent", "is_collect_path"]

DEFAULT_ACCOUNT = "1234"
MAX_EVENT_BYTES = 4096

_C_PATH = re.compile(r"^/c/([^/]+)/([^/]+)/?$")
_JSON_PATH = re.compile(r"^/collect/json/([^/]+)/?$")
_STREAM = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,99}")
_ACCOUNT = re.compile(r"[A-Za-z0-9_-]{1,64}")


def is_collect_path(path: str) -> bool:
    return bool(_C_PATH.match(path) or _JSON_PATH.match(path))


@dataclass(frozen=True)
class CollectedEvent:
    """One accepted event: where it was posted and the JSON object received."""

    account: str
    stream: str
    endpoint: str  # "c" (/c/{account}/{stream}) or "collect_json" (/collect/json/{stream})
    fields: dict
    received_at: float


class CollectStore:
    """Accounts, an optional stream restriction, and every event accepted (thread-safe)."""

    def __init__(self, accounts: Iterable[str] = (DEFAULT_ACCOUNT,)) -> None:
        self._lock = threading.Lock()
        self._accounts: list[str] = []
        self._streams: frozenset[str] | None = None
        self._events: list[CollectedEvent] = []
        for account in accounts:
            self.add_account(account)

    # ------------------------------------------------------------------ test knobs
    def add_account(self, account: str) -> None:
        if not _ACCOUNT.fullmatch(account):
            raise ValueError(f"not an account number: {account!r}")
        with self._lock:
            if account not in self._accounts:
                self._accounts.append(account)

    @property
    def accounts(self) -> list[str]:
        with self._lock:
            return list(self._accounts)

    def restrict_streams(self, streams: Iterable[str] | None) -> None:
        """Only these streams exist (others: 404 ``stream not found``); None: any stream (Lytics' behaviour)."""
        with self._lock:
            self._streams = None if streams is None else frozenset(streams)

    def events(self, stream: str | None = None, account: str | None = None) -> list[CollectedEvent]:
        """The events accepted so far, oldest first (of one stream / account when given)."""
        with self._lock:
            return [e for e in self._events
                    if (stream is None or e.stream == stream) and (account is None or e.account == account)]

    def clear(self) -> None:
        with self._lock:
            self._events.clear()

    # ------------------------------------------------------------------ handling
    def handle(self, method: str, path: str, headers, body: bytes) -> Response:
        """Answer an authenticated request to a collect path (see the module docstring)."""
        if method != "POST":
            return json_response(405, {"message": "method not allowed"}, Allow="POST")
        m = _C_PATH.match(path)
        if m is not None:
            endpoint, account, stream = "c", unquote(m.group(1)), unquote(m.group(2))
            if account not in self.accounts:
                return error_response(404, "account not found")
        else:
            m = _JSON_PATH.match(path)
            if m is None:
                return error_response(404, "not found")
            accounts = self.accounts
            if not accounts:
                return error_response(404, "account not found")
            endpoint, account, stream = "collect_json", accounts[0], unquote(m.group(1))
        if not _STREAM.fullmatch(stream):
            return error_response(400, f"invalid stream name {stream[:100]!r}")
        with self._lock:
            streams = self._streams
        if streams is not None and stream not in streams:
            return error_response(404, "stream not found")
        content_type = (headers.get("Content-Type") or "").split(";", 1)[0].strip().lower()
        if content_type != "application/json":
            return error_response(415, f"Content-Type must be application/json, got {content_type or 'none'!r}")
        if not body:
            return error_response(400, "empty body")
        if len(body) > MAX_EVENT_BYTES:
            return error_response(413, f"event too large: {len(body)} bytes, at most {MAX_EVENT_BYTES}")
        try:
            fields = orjson.loads(body)
        except orjson.JSONDecodeError:
            return error_response(400, "body is not valid JSON")
        if not isinstance(fields, dict):
            return error_response(400, f"body must be a JSON object, got a JSON {type(fields).__name__}")
        with self._lock:
            self._events.append(CollectedEvent(account, stream, endpoint, fields, time.time()))
        return json_response(200, {"message": "success"})
