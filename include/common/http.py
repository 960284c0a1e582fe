"""One HTTP attempt with the project's error classification (retries: `include.common.retry`).

One place decides what a status code means for the on-call person:
401/403 -> AuthError, 404 -> NotFoundError, other 4xx -> PermanentError (fix the request),
429/5xx/timeouts/connection resets -> TransientError (retried with backoff).
Rate-limit headers are matched case-insensitively (HTTP/2 lower-cases them; requests'
headers mapping is case-insensitive already).

Credentials never travel in clear: `require_tls` refuses a plain ``http://`` endpoint unless its
host is this machine (loopback: the sandboxes) or the connection explicitly allows it (extra
``allow_insecure_http: true``, for a test server on a trusted network). TLS certificates are
always verified (requests' default; nothing in the project turns verification off).
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable
from urllib.parse import urlsplit, urlunsplit

import requests

from include.common.errors import (
    AuthError,
    ConfigError,
    NotFoundError,
    PermanentError,
    RetryAfterError,
    TransientError,
)

DEFAULT_TIMEOUT = (10.0, 120.0)  # (connect, read) seconds
# What requests (or urllib, http.client) raises for a request that cannot even be sent - no host, a bad
# port, scheme or IPv6 address, a header value (the API key) with a line break or a character outside
# latin-1 - is a ValueError (requests' InvalidURL/InvalidSchema/MissingSchema/InvalidHeader, UnicodeError).
_UNUSABLE = (ValueError,)


def redact_url(url: str, *, keep_path: bool = True) -> str:
    """The URL without query string or credentials (pre-signed links and ?key= tokens are secrets).

    `keep_path=False` also hides the path, for download links whose path is itself the token.
    """
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path if keep_path else "/...", "", ""))


def is_loopback(host: str | None) -> bool:
    """True for `localhost` and loopback addresses (127.0.0.0/8, ::1): traffic that never leaves the machine."""
    host = (host or "").strip().strip("[]").rstrip(".").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def require_tls(url: str, *, what: str, allow_insecure_http: bool = False) -> str:
    """`url` if credentials may be sent to it: https, or http to loopback, or http explicitly allowed
    (anything that is not an http(s) URL is returned as is, for the client's own check).

    `what` names the endpoint and where it is configured, e.g. "the Braze REST endpoint of
    connection 'braze_default'". Raises `ConfigError` otherwise (never retried).
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "https":
        return url
    if scheme == "http" and (allow_insecure_http or is_loopback(parts.hostname)):
        return url
    if scheme != "http":
        return url  # not a URL at all: the client's own check says so
    raise ConfigError(
        f"{what} is {redact_url(url)}: plain http:// to a host that is not this machine would send the "
        f"credentials unencrypted, so it is refused. Use https://, or - only for a test server on a trusted "
        f"network - set the connection's extra {{\"allow_insecure_http\": true}}"
    )


def server_wait_seconds(resp: requests.Response, now: float | None = None) -> float | None:
    """How long the server asked us to wait: Retry-After, else X-RateLimit-Reset when none remain."""
    retry_after = resp.headers.get("Retry-After")
    if retry_after:
        try:
            return max(0.0, float(retry_after))
        except ValueError:
            pass  # HTTP-date form: fall through to our own backoff
    remaining = resp.headers.get("X-RateLimit-Remaining")
    reset = resp.headers.get("X-RateLimit-Reset")
    if remaining is not None and reset:
        try:
            if int(float(remaining)) <= 0:
                return max(0.0, float(reset) - (now if now is not None else time.time()))
        except ValueError:
            return None
    return None


def _message_of(resp: requests.Response) -> str:
    try:
        body = resp.json()
    except ValueError:
        return resp.text[:300]
    if isinstance(body, dict):
        msg = body.get("message") or body.get("error") or ""
        errors = body.get("errors")
        return f"{msg} {errors}" if errors else str(msg)
    return str(body)[:300]


def raise_for_status(resp: requests.Response, *, service: str, what: str, auth_hint: str,
                     secret_path: bool = False) -> None:
    """Turn a non-2xx response into the typed error that tells the on-call person what to do."""
    if resp.status_code < 400:
        return
    where = f"{service} {resp.request.method} {redact_url(resp.url, keep_path=not secret_path)}"
    detail = _message_of(resp)
    code = resp.status_code
    if code in (401, 403):
        raise AuthError(f"{what}: {where} answered {code} ({detail}). {auth_hint}")
    if code == 404:
        raise NotFoundError(f"{what}: {where} answered 404 ({detail}); check the id in the configuration")
    if code == 429 or code >= 500:
        raise RetryAfterError(f"{what}: {where} answered {code} ({detail})", server_wait_seconds(resp))
    raise PermanentError(f"{what}: {where} answered {code} ({detail}); the request needs fixing, not retrying")


def request(
    session: requests.Session,
    method: str,
    url: str,
    *,
    service: str,
    what: str,
    auth_hint: str,
    timeout: tuple[float, float] = DEFAULT_TIMEOUT,
    ok: Callable[[requests.Response], bool] | None = None,
    secret_path: bool = False,
    **kwargs,
) -> requests.Response:
    """One HTTP attempt, no retries: the response, or the typed error that says what to do.

    Timeouts, dropped connections and answers that break off mid-body raise `TransientError`; error
    statuses are classified by `raise_for_status`. `ok(resp)` may accept a response that would
    otherwise be an error (e.g. 404 = "not ready yet"). Callers that want retries wrap the call in
    `include.common.retry.retry_call`, the project's one retry mechanism.
    """
    try:
        resp = session.request(method, url, timeout=timeout, **kwargs)
    except (requests.Timeout, requests.ConnectionError) as exc:
        shown = redact_url(url, keep_path=not secret_path)
        raise TransientError(f"{what}: {service} {method} {shown} failed: {type(exc).__name__}") from None
    except (requests.exceptions.ChunkedEncodingError, requests.exceptions.ContentDecodingError) as exc:
        # The answer broke off mid-body (connection closed before Content-Length / the last chunk): as
        # transient as a reset, and the request may have been applied (callers retry idempotent requests).
        shown = redact_url(url, keep_path=not secret_path)
        raise TransientError(f"{what}: {service} {method} {shown}: the answer broke off ({type(exc).__name__})") \
            from None
    except _UNUSABLE as exc:  # never the exception's text: an invalid header quotes the API key
        try:
            shown = redact_url(url, keep_path=not secret_path) if "://" in url else "(not a URL)"
        except ValueError:
            shown = "(not a valid URL)"
        raise ConfigError(
            f"{what}: {service} {method} {shown} cannot be sent ({type(exc).__name__}): the URL or the "
            f"credentials cannot go into an HTTP request. Check the connection: its host must be a URL like "
            f"https://host[:port], and its password (API key / token) one line of plain ASCII"
        ) from None
    if ok is not None and ok(resp):
        return resp
    raise_for_status(resp, service=service, what=what, auth_hint=auth_hint, secret_path=secret_path)
    return resp
