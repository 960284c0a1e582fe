"""Scan cursors of the Lytics sandbox: the opaque ``start`` / ``_next`` tokens of a segment scan.

A token is the URL-safe base64 (unpadded) of ``<audience id>\\0<last user index served>\\0<issue
time>\\0<pages with members served>\\0<empty pages served>`` followed by a 16-byte HMAC-SHA256
tag made with a per-process secret. Decoding checks, in order: well-formed and correctly signed
(else ``invalid scan token``), issued for this audience (else ``scan token does not belong to this
segment``), and not older than the TTL nor issued before ``not_before`` (else ``scan token
expired``); each failure is a :class:`TokenError`, which the server answers with a 400. The two
page counters let the server's test knobs act at a given point of *each* scan.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from typing import NamedTuple

__all__ = ["Cursor", "TokenError", "decode_token", "encode_token"]

_MAC_LEN = 16


class TokenError(ValueError):
    pass


class Cursor(NamedTuple):
    """Where a scan is: the last user index served, and how many pages it has served so far."""

    last: int
    pages: int = 0  # pages that held members
    empty: int = 0  # pages served with no member (a knob of the sandbox)


def encode_token(secret: bytes, audience_id: str, last: int, pages: int = 0, empty: int = 0) -> str:
    """The cursor that resumes a scan of ``audience_id`` after user index ``last``, issued now."""
    payload = f"{audience_id}\x00{last}\x00{time.time():.6f}\x00{pages}\x00{empty}".encode()
    mac = hmac.new(secret, payload, hashlib.sha256).digest()[:_MAC_LEN]
    return base64.urlsafe_b64encode(payload + mac).rstrip(b"=").decode("ascii")


def decode_token(secret: bytes, token: str, audience_id: str, ttl: float, not_before: float = 0.0) -> Cursor:
    """Where ``token`` says the scan is; :class:`TokenError` if it is not valid (or expired: older
    than ``ttl`` seconds, or issued before the time ``not_before``)."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (binascii.Error, ValueError):
        raise TokenError("invalid scan token") from None
    if len(raw) <= _MAC_LEN:
        raise TokenError("invalid scan token")
    payload, mac = raw[:-_MAC_LEN], raw[-_MAC_LEN:]
    good = hmac.new(secret, payload, hashlib.sha256).digest()[:_MAC_LEN]
    if not hmac.compare_digest(mac, good):
        raise TokenError("invalid scan token")
    aid, last, issued, pages, empty = payload.decode().split("\x00")
    if aid != audience_id:
        raise TokenError("scan token does not belong to this segment")
    if time.time() - float(issued) > ttl or float(issued) < not_before:
        raise TokenError("scan token expired")
    return Cursor(int(last), int(pages), int(empty))
