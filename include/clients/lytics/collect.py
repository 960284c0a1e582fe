"""Lytics' collect API: post one event to a data stream, the way a Braze webhook step does.

Contract (docs/webhook-kit.md#what-lytics-expects; Lytics' Braze integration guide, Lytics' DataUpload API,
Lytics' platform limits):

* ``POST {base}/c/{account}/{stream}?key={token}`` -- the URL Lytics documents for Braze webhooks
  (``https://api.lytics.io/c/<ACCOUNT-NUMBER>/braze_users?key=<LYTICS-API-TOKEN>``);
* ``POST {base}/collect/json/{stream}`` with the raw token in the ``Authorization`` header (the
  general JSON collect API; the account is the token's);
* body: one JSON object, at most 4 KB (Lytics' "max input size" of a single record);
* success: ``200 {"status": 200, "message": "success"}``.

The token is a secret wherever it appears. Braze needs it in the URL, so the URL is built here
and shown only masked (:func:`mask_key`: ``key=****abcd``); errors name the URL without its query
string (``include.common.http.redact_url``) and are scrubbed of the token besides, in case a
server or proxy echoes it back.

Example::

    client = LyticsCollectClient("https://api.lytics.io", token, account="1234")
    client.send_webhook_event({"email": "someone@example.com", "braze_id": "abc"})
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator
from urllib.parse import quote, urlsplit

import orjson
import requests

from include.common.errors import (
    AuthError,
    BrazeLyticsError,
    ConfigError,
    NotFoundError,
    PermanentError,
    RetryAfterError,
    TransientError,
)
from include.common.http import redact_url, request
from include.common.retry import RetryPolicy, retry_call

DEFAULT_BASE_URL = "https://api.lytics.io"
BRAZE_USERS_STREAM = "braze_users"
MAX_EVENT_BYTES = 4096  # Lytics' platform limit: "Max input size 4 KB, byte size of a single input record"
KEY_TAIL_SHOWN = 4  # characters of the token a masked URL shows
MIN_KEY_FOR_TAIL = 16  # shorter tokens are masked completely: 4 characters of 8 would give half away
DEFAULT_POLICY = RetryPolicy(attempts=3, base_delay=1.0, max_delay=10.0)  # an interactive check: fail in seconds

_ACCOUNT_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
_STREAM_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,99}")
_AUTH_HINT = (
    "Lytics refused the API token: check that it is the account's current token (tokens may expire) "
    "and that its role may write data (Lytics' Braze guide asks for the Data Manager scope)."
)


# ---------------------------------------------------------------------- validation
def validate_base_url(base_url: str) -> str:
    """The API base URL without a trailing slash; a ConfigError if it is not a plain http(s) URL."""
    text = (base_url or "").strip().rstrip("/")
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        raise ConfigError(f"the Lytics base URL {text!r} is not a valid URL; use e.g. {DEFAULT_BASE_URL}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"the Lytics base URL {text!r} is not an http(s) URL; use e.g. {DEFAULT_BASE_URL}")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ConfigError(f"the Lytics base URL {redact_url(text)!r} may hold no query string, fragment or "
                          f"credentials; use e.g. {DEFAULT_BASE_URL} (the token goes in the password)")
    return text


def validate_account(account: str | None) -> str:
    """Lytics' account number (``/c/<ACCOUNT-NUMBER>/...``), as shown under Account Settings."""
    text = str(account).strip() if account is not None else ""
    if not text:
        raise ConfigError("the Lytics account number is missing: set the connection extra "
                          "{\"account_id\": \"<ACCOUNT-NUMBER>\"} (Lytics: Account Settings), or pass --account")
    if not _ACCOUNT_RE.fullmatch(text):
        raise ConfigError(f"the Lytics account number {text!r} is not valid: expected letters, digits, '_' or '-' "
                          f"(Lytics: Account Settings)")
    return text


def validate_stream(stream: str) -> str:
    text = (stream or "").strip()
    if not _STREAM_RE.fullmatch(text):
        raise ConfigError(f"the Lytics stream name {text!r} is not valid: expected letters, digits, '_' or '-', "
                          f"e.g. {BRAZE_USERS_STREAM}")
    return text


def validate_token(token: str | None) -> str:
    """The token as Lytics takes it; the error never repeats it."""
    text = (token or "").strip()
    if not text:
        raise ConfigError("the Lytics API token is empty: put it in the password of the Lytics connection "
                          "(or, for the command, in the environment variable LYTICS_API_TOKEN)")
    if text.lower().startswith("bearer "):
        raise ConfigError("the Lytics API token starts with 'Bearer ': Lytics takes the raw token; store the token alone")
    if any(c.isspace() or ord(c) < 32 for c in text):
        raise ConfigError("the Lytics API token holds spaces or control characters; copy it again from Lytics")
    return text


# ---------------------------------------------------------------------- URLs
def mask_key(token: str) -> str:
    """``****`` plus the token's last 4 characters (just ``****`` for a token under 16 characters)."""
    tail = token[-KEY_TAIL_SHOWN:] if len(token) >= MIN_KEY_FOR_TAIL else ""
    return f"****{tail}"


def webhook_url(base_url: str, account: str, token: str, stream: str = BRAZE_USERS_STREAM, *,
                show_key: bool = False) -> str:
    """``{base}/c/{account}/{stream}?key={token}``: the URL Braze's webhook step calls.

    With ``show_key=False`` (the default) the key is masked (:func:`mask_key`); the full URL is a
    secret, meant to be pasted into Braze and nowhere else.
    """
    base = validate_base_url(base_url)
    account = validate_account(account)
    stream = validate_stream(stream)
    token = validate_token(token)
    key = quote(token, safe="") if show_key else mask_key(token)
    return f"{base}/c/{quote(account, safe='')}/{quote(stream, safe='')}?key={key}"


# ---------------------------------------------------------------------- client
class LyticsCollectClient:
    """Posts events to Lytics streams, for one account (base URL + API token + account number).

    ``policy`` governs retries of 429/5xx/timeouts/resets (default: 3 tries within seconds, for a
    check a person waits for); ``timeout`` is (connect, read) seconds per request.
    """

    def __init__(self, base_url: str, token: str, account: str | None = None, *, policy: RetryPolicy | None = None,
                 timeout: tuple[float, float] = (10.0, 30.0), session: requests.Session | None = None):
        self.base_url = validate_base_url(base_url)
        self._token = validate_token(token)
        self.account = validate_account(account) if account is not None else None
        self.policy = policy or DEFAULT_POLICY
        self.timeout = timeout
        self.session = session or requests.Session()

    def __repr__(self) -> str:  # never the token
        return f"LyticsCollectClient({self.base_url!r}, account={self.account!r}, key={mask_key(self._token)!r})"

    def webhook_url(self, stream: str = BRAZE_USERS_STREAM, *, show_key: bool = False) -> str:
        return webhook_url(self.base_url, self._need_account(), self._token, stream, show_key=show_key)

    def send_webhook_event(self, event: dict, stream: str = BRAZE_USERS_STREAM) -> dict:
        """POST ``event`` to ``/c/{account}/{stream}?key=...`` exactly as Braze's webhook will.

        Returns Lytics' answer (``{"status": 200, "message": "success"}``); raises ``AuthError``
        (401/403), ``NotFoundError`` (404: unknown account or stream), ``PermanentError`` (any other
        refusal, a redirect, an answer that is not JSON) or ``TransientError`` (still 429/5xx/no
        answer after the retries). No message holds the token.
        """
        stream = validate_stream(stream)
        account = self._need_account()
        url = f"{self.base_url}/c/{quote(account, safe='')}/{quote(stream, safe='')}"
        what = f"posting an event to Lytics stream {stream!r} of account {account!r}"
        return self._post(url, {"key": self._token}, {}, event, what=what, account=account, stream=stream)

    def collect_json(self, event: dict, stream: str) -> dict:
        """POST ``event`` to ``/collect/json/{stream}`` with the token in the ``Authorization`` header."""
        stream = validate_stream(stream)
        url = f"{self.base_url}/collect/json/{quote(stream, safe='')}"
        what = f"posting an event to Lytics stream {stream!r}"
        return self._post(url, None, {"Authorization": self._token}, event, what=what, account=None, stream=stream)

    # ------------------------------------------------------------------ internals
    def _need_account(self) -> str:
        if self.account is None:
            raise ConfigError("this Lytics collect client has no account number; pass account=...")
        return self.account

    def _post(self, url: str, params: dict | None, headers: dict, event: dict, *, what: str,
              account: str | None, stream: str) -> dict:
        if not isinstance(event, dict):
            raise ConfigError(f"{what}: an event must be a JSON object (dict), got {type(event).__name__}")
        body = orjson.dumps(event)
        if len(body) > MAX_EVENT_BYTES:
            raise PermanentError(f"{what}: the event is {len(body):,} bytes; Lytics takes at most "
                                 f"{MAX_EVENT_BYTES:,} bytes per event")
        shown = redact_url(url)
        send_headers = {"Content-Type": "application/json", "Accept": "application/json", **headers}

        def answered_here(resp: requests.Response) -> bool:
            # Worded below instead of by request()'s generic classification.
            return resp.status_code in (404, 413) or 300 <= resp.status_code < 400

        def attempt() -> dict:
            try:
                return once()
            except BrazeLyticsError as exc:  # scrubbed before retry_call logs it
                raise self._scrubbed(exc) from None

        def once() -> dict:
            try:
                resp = request(self.session, "POST", url, service="Lytics", what=what, auth_hint=_AUTH_HINT,
                               timeout=self.timeout, ok=answered_here, params=params, data=body,
                               headers=send_headers, allow_redirects=False)
            except (requests.exceptions.ChunkedEncodingError, requests.exceptions.ContentDecodingError) as exc:
                raise TransientError(f"{what}: the answer of Lytics at {shown} broke off ({type(exc).__name__})") \
                    from None
            except requests.RequestException as exc:  # a URL requests cannot use, too many redirects...
                raise PermanentError(f"{what}: the request to {shown} could not be made ({type(exc).__name__}); "
                                     f"check the base URL") from None
            return self._answer(resp, what=what, shown=shown, account=account, stream=stream)

        try:
            with _urllib3_log_scrubbed(self._secrets(), mask_key(self._token)):
                return retry_call(attempt, self.policy, what=what)
        except BrazeLyticsError as exc:
            raise self._scrubbed(exc) from None

    def _answer(self, resp: requests.Response, *, what: str, shown: str, account: str | None, stream: str) -> dict:
        code = resp.status_code
        if 300 <= code < 400:
            target = resp.headers.get("Location", "")
            where = f" to {redact_url(target)}" if target.startswith(("http://", "https://")) else ""
            raise PermanentError(f"{what}: {shown} answered {code}, a redirect{where}; it is not followed (it would "
                                 f"carry the key elsewhere, and clients may drop the POST body on the way), so use "
                                 f"the final address as the base URL (https://api.lytics.io)")
        if code == 404:
            whose = f"no account {account!r} or no stream {stream!r}" if account else f"no stream {stream!r}"
            raise NotFoundError(f"{what}: {shown} answered 404 ({_detail(resp)}): Lytics knows {whose} there; "
                                f"check the account number (Lytics: Account Settings) and the base URL")
        if code == 413:
            raise PermanentError(f"{what}: {shown} answered 413 ({_detail(resp)}): the event is too large for "
                                 f"Lytics (at most {MAX_EVENT_BYTES:,} bytes per event)")
        try:
            answer = orjson.loads(resp.content)
        except orjson.JSONDecodeError:
            kind = resp.headers.get("Content-Type") or "no Content-Type"
            raise PermanentError(f"{what}: {shown} answered {code} with a body that is not JSON ({kind}); the base "
                                 f"URL probably does not point at the Lytics API (use https://api.lytics.io)") from None
        if not isinstance(answer, dict):
            raise PermanentError(f"{what}: {shown} answered {code} with a JSON {type(answer).__name__}, not the "
                                 f"object Lytics answers; the base URL probably does not point at the Lytics API")
        status = answer.get("status", code)
        if status != 200 or str(answer.get("message", "success")).lower() != "success":
            raise PermanentError(f"{what}: {shown} answered {code} but not success: "
                                 f"{orjson.dumps(answer).decode()[:300]}")
        return answer

    def _secrets(self) -> tuple[str, ...]:
        """The token as it may appear in text: raw, and percent-encoded as in a URL."""
        return tuple({self._token, quote(self._token, safe=""), quote(self._token)})

    def _scrubbed(self, exc: BrazeLyticsError) -> BrazeLyticsError:
        """The same error with any trace of the token removed (a server or proxy may echo the URL)."""
        message = _replace_all(str(exc), self._secrets(), mask_key(self._token))
        if isinstance(exc, RetryAfterError):
            return RetryAfterError(message, exc.retry_after)
        for kind in (AuthError, NotFoundError, ConfigError, PermanentError, TransientError):
            if type(exc) is kind:
                return kind(message)
        return PermanentError(message) if isinstance(exc, PermanentError) else TransientError(message)


def _replace_all(text: str, secrets: tuple[str, ...], mask: str) -> str:
    for secret in secrets:
        text = text.replace(secret, mask)
    return text


class _ScrubFilter(logging.Filter):
    """Masks the token in records of the logger it is attached to."""

    def __init__(self, secrets: tuple[str, ...], mask: str) -> None:
        super().__init__()
        self.secrets, self.mask = secrets, mask

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = _replace_all(record.msg, self.secrets, self.mask)
        if isinstance(record.args, tuple):
            record.args = tuple(_replace_all(a, self.secrets, self.mask) if isinstance(a, str) else a
                                for a in record.args)
        return True


@contextlib.contextmanager
def _urllib3_log_scrubbed(secrets: tuple[str, ...], mask: str) -> Iterator[None]:
    """urllib3 logs each request line, query string included, at DEBUG: mask the token there while we post."""
    logger = logging.getLogger("urllib3.connectionpool")
    scrub = _ScrubFilter(secrets, mask)
    logger.addFilter(scrub)
    try:
        yield
    finally:
        logger.removeFilter(scrub)


def _detail(resp: requests.Response) -> str:
    try:
        body = resp.json()
    except ValueError:
        return resp.text[:200]
    if isinstance(body, dict):
        return str(body.get("message") or body.get("error") or body)[:200]
    return str(body)[:200]
