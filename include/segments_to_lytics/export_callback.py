"""Braze's export callback: a secret per-export URL that Braze POSTs to once the export is ready.

`POST /users/export/segment` takes an optional ``callback_endpoint``; Braze calls it (once, best
effort, unauthenticated, body not documented) when the export is available. When a segment sets
``callback_base_url`` (the public https address of this deployment's Airflow API server), each
export asks Braze to call::

    <callback_base_url>/braze-lytics/export-callback/<token>

where ``token`` is a fresh ``secrets.token_urlsafe(32)`` (256 bits) per export. The URL is the
only credential of the caller, so:

* the token itself is never stored, logged or put in XCom: the state store keeps its SHA-256
  (``export-callbacks/<sha256>.json``, written before Braze is asked), XCom carries the same
  digest (useless for calling the endpoint), logs show ``callback <first 8 hex digits>``;
* the endpoint finds the record by the digest of the token it is given and compares digests with
  ``hmac.compare_digest``; a malformed, unknown or expired token gets the same bare 404;
* the endpoint only ever *adds* a "ready" record (``export-callbacks/<sha256>.done.json``),
  written once (a repeated call changes nothing), holding no part of the body but a sane
  ``object_prefix`` / ``status`` (a ``url`` in the body is a bearer link: never stored).

The callback only ever makes the wait shorter: the sensor completes on a recorded callback OR on
the usual fallback (quiet period for bucket exports, the ranged GET for links), whichever comes
first, so a lost callback never hangs a run. Everything here works on a
:class:`~include.clients.state_store.StateStore`; the Airflow glue opens it. See
docs/export-callback.md.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

from include.common.errors import BrazeLyticsError, NotFoundError
from include.common.http import is_loopback

log = logging.getLogger(__name__)

CALLBACK_PATH = "/braze-lytics/export-callback"  # where the plugin mounts the endpoint (plugins/braze_lytics/plugin.py)
STORE_PREFIX = "export-callbacks"
TOKEN_BYTES = 32  # secrets.token_urlsafe(32): 43 URL-safe characters, 256 random bits
TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]{43}$")
MAX_BODY_BYTES = 16 * 1024  # Braze's callback body is small; anything larger is refused (413)
EXPIRY_MARGIN = timedelta(days=1)  # a record is honoured until the export's timeout plus this
SWEEP_LIMIT = 200  # records looked at per sweep of expired ones (best effort)
_PREFIX_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,199}$")
_STATUS_RE = re.compile(r"^[A-Za-z0-9_ .-]{1,40}$")


def check_base_url(value: object) -> str | None:
    """What is wrong with a ``callback_base_url`` value, or None when it is usable.

    https, or http only to this machine (a test API server on loopback): Braze would otherwise
    send the URL, token included, in clear over the internet. No credentials, query or fragment.
    """
    if not isinstance(value, str) or not value.strip():
        return "must be the https:// base URL of this Airflow's API server as Braze reaches it"
    try:
        parts = urlsplit(value.strip())
        port = parts.port  # raises ValueError for a bad port
    except ValueError:
        return "is not a URL"
    del port
    if parts.scheme not in ("https", "http") or not parts.hostname:
        return "must be an absolute https:// URL like https://airflow.example.com"
    if parts.scheme == "http" and not is_loopback(parts.hostname):
        return ("must use https:// (plain http:// is allowed only for this machine, e.g. http://127.0.0.1:8080): "
                "the callback URL carries a secret token")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        return "must not hold credentials (user:password@); the per-export token is the callback's credential"
    if parts.query or parts.fragment or "?" in value or "#" in value:
        return "must not have a query string or fragment: the endpoint's path is appended to it"
    if any(segment in (".", "..") for segment in parts.path.split("/")):
        return "must not have '.' or '..' path segments"
    return None


def endpoint_for(base_url: str, token: str) -> str:
    """The ``callback_endpoint`` Braze is given: ``<base>/braze-lytics/export-callback/<token>``."""
    return f"{base_url.strip().rstrip('/')}{CALLBACK_PATH}/{token}"


def token_digest(token: str) -> str:
    """The SHA-256 (hex) of a token: what is stored and what XCom carries, never the token."""
    return hashlib.sha256(token.encode("ascii", "replace")).hexdigest()


def short_id(digest: str) -> str:
    """How logs name a callback: the first 8 hex digits of its digest."""
    return f"callback {digest[:8]}"


def pending_key(digest: str) -> str:
    return f"{STORE_PREFIX}/{digest}.json"


def done_key(digest: str) -> str:
    return f"{STORE_PREFIX}/{digest}.done.json"


@dataclass(frozen=True)
class CallbackRequest:
    """A registered callback: the endpoint to give Braze (secret) and the digest to keep."""

    digest: str
    endpoint: str = field(repr=False)  # holds the token: never logged, never in XCom


def _now(now: datetime | None) -> datetime:
    return now or datetime.now(UTC)


def register(store, base_url: str, *, segment: str, expires_in_seconds: float,
             now: datetime | None = None) -> CallbackRequest:
    """Make a new token, record its digest in the state store, return the endpoint for Braze.

    Written *before* Braze is asked for the export, so even an instant callback finds its record.
    """
    sweep_expired(store, now=now)
    token = secrets.token_urlsafe(TOKEN_BYTES)
    digest = token_digest(token)
    created = _now(now)
    store.write_json(pending_key(digest), {
        "version": 1,
        "token_sha256": digest,
        "segment": segment,
        "created_at": created.isoformat(),
        "expires_at": (created + timedelta(seconds=expires_in_seconds) + EXPIRY_MARGIN).isoformat(),
    })
    return CallbackRequest(digest=digest, endpoint=endpoint_for(base_url, token))


def parse_body(body: bytes) -> dict:
    """The parts of a callback body worth keeping: never the ``url`` (a bearer link), only sane strings."""
    info: dict = {"body": "empty" if not body.strip() else "other", "object_prefix": None, "status": None,
                  "url_given": False}
    if info["body"] == "empty":
        return info
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return info
    if not isinstance(payload, dict):
        return info
    info["body"] = "json"
    prefix, status = payload.get("object_prefix"), payload.get("status")
    if isinstance(prefix, str) and _PREFIX_RE.match(prefix):
        info["object_prefix"] = prefix
    if isinstance(status, str) and _STATUS_RE.match(status):
        info["status"] = status
    info["url_given"] = isinstance(payload.get("url"), str) and bool(payload["url"])
    return info


def record_callback(store, token: str, body: bytes = b"", *, now: datetime | None = None) -> str:
    """Record that Braze called back for `token`: "recorded", "already" (a repeat), or "unknown".

    "unknown" covers a malformed token, no record, a digest mismatch and an expired record alike,
    so a caller learns nothing from the answer but "no".
    """
    if not isinstance(token, str) or not TOKEN_RE.match(token):
        return "unknown"
    digest = token_digest(token)
    try:
        record = store.read_json(pending_key(digest))
    except NotFoundError:
        return "unknown"
    if not isinstance(record, dict) or not hmac.compare_digest(str(record.get("token_sha256", "")), digest):
        return "unknown"
    try:
        expires = datetime.fromisoformat(record["expires_at"])
    except (KeyError, TypeError, ValueError):
        return "unknown"
    if _now(now) > expires:
        return "unknown"
    if store.exists(done_key(digest)):
        return "already"
    store.write_json(done_key(digest), {"version": 1, "received_at": _now(now).isoformat(), **parse_body(body)})
    return "recorded"


def received(store, digest: str) -> dict | None:
    """The "ready" record of a callback (see :func:`record_callback`), or None while Braze has not called."""
    try:
        record = store.read_json(done_key(digest))
    except NotFoundError:
        return None
    return record if isinstance(record, dict) else {}


def forget(store, digest: str) -> None:
    """Remove a callback's records (the export is done with: a later call answers 404)."""
    for key in (done_key(digest), pending_key(digest)):
        store.delete(key)


def sweep_expired(store, *, now: datetime | None = None, limit: int = SWEEP_LIMIT) -> int:
    """Delete records of callbacks past their expiry (runs killed before they could forget them).

    Best effort: a problem is logged, never raised. Returns how many callbacks were removed.
    """
    removed = 0
    try:
        keys = [k for k in store.list(STORE_PREFIX) if k.endswith(".json") and not k.endswith(".done.json")]
        for key in keys[:limit]:
            try:
                expires = datetime.fromisoformat(store.read_json(key)["expires_at"])
            except (BrazeLyticsError, KeyError, TypeError, ValueError):
                continue
            if _now(now) > expires:
                forget(store, key.rsplit("/", 1)[-1].removesuffix(".json"))
                removed += 1
    except BrazeLyticsError as exc:
        log.warning("Could not sweep expired export callbacks: %s", exc)
    return removed
