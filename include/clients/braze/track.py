"""Braze `POST /users/track`: send one batch of attributes objects, learn which ones failed.

Contract (docs/vendor-contracts.md#braze-post-userstrack, from Braze's "Track users" docs):
at most 75 objects per request (50 on the "Monthly Active Users CY 24-25" plan); `201`
`{"message": "success", "errors": [{"type", "input_array", "index"}]}` where `index` is the
position in the array we sent; `202 {"message": "queued"}` during maintenance = accepted;
400/401/403/404 are not retried; 429/5xx are, with backoff. 3,000 requests per 3 s per
workspace, paced client-side by a shared :class:`~include.common.rate_limit.RateLimiter`.

`track()` may be called from several threads at once (`deliver_chunk` keeps a few requests in
flight): every attempt goes through the one limiter, and the session the client makes keeps up to
`POOL_CONNECTIONS` keep-alive connections, one per thread.

Idempotence: the pipeline writes array attributes with `{"add": [...], "remove": [...]}`,
which Braze applies as set operations. Re-sending a batch whose earlier attempt timed out
(and may or may not have been applied) therefore ends in the same profile state, which is
what makes retrying timeouts and dropped connections safe. (A scalar attribute is also
rewritten with the same value; only data-point billing counts twice.)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import orjson
import requests
from requests.adapters import HTTPAdapter

from include.clients.braze.export import braze_session
from include.clients.braze.limits import MAU_PLAN_MAX_OBJECTS, MAX_OBJECTS_PER_REQUEST
from include.common.errors import ConfigError, NotFoundError, PermanentError
from include.common.http import raise_for_status, redact_url, request, server_wait_seconds
from include.common.rate_limit import RateLimiter
from include.common.retry import RetryPolicy, retry_call

log = logging.getLogger(__name__)

POOL_CONNECTIONS = 32  # keep-alive connections per host in the client's own session (> requests in flight)


_AUTH_HINT = (
    "Check the REST API key (password of connection braze_default) has the users.track "
    "permission for this workspace."
)
_NOT_FOUND_HINT = (
    "For /users/track this means the REST endpoint (host of connection braze_default) is not "
    "this workspace's instance, or the API key is unknown there."
)


@dataclass
class TrackResult:
    """What happened to one batch."""

    sent: int  # objects Braze accepted (sent minus failed)
    failed: list[tuple[int, str]] = field(default_factory=list)  # (index in the batch, Braze error type)
    retries: int = 0  # attempts beyond the first
    queued: bool = False  # 202 "queued" (maintenance): accepted, applied later, no per-object errors


class BrazeTrackClient:
    """`POST /users/track` for one workspace (base URL + REST API key).

    `limiter` paces every attempt (share one between the threads/clients of a workspace;
    default: a private one at Braze's default 3,000 per 3 s). `policy` retries 429/5xx/timeouts.
    `batch_limit` is the most objects one `track()` call may send: 75, or 50 for MAU-plan
    workspaces.

    Example::

        client = BrazeTrackClient("https://rest.iad-01.braze.com", key, limiter=RateLimiter(3000, 3.0))
        result = client.track([{"external_id": "u1", "lytics_segments": {"add": ["vip"]}}])
        for index, error in result.failed: ...
    """

    def __init__(self, base_url: str, api_key: str, *, limiter: RateLimiter | None = None,
                 policy: RetryPolicy | None = None, timeout: tuple[float, float] = (5, 30),
                 batch_limit: int = MAX_OBJECTS_PER_REQUEST, session: requests.Session | None = None):
        if not 1 <= batch_limit <= MAX_OBJECTS_PER_REQUEST:
            raise ConfigError(
                f"Braze batch size {batch_limit} is out of range: 1..{MAX_OBJECTS_PER_REQUEST} (hard max 75 per "
                f"Braze docs; {MAU_PLAN_MAX_OBJECTS} for 'Monthly Active Users CY 24-25' workspaces)"
            )
        base_url, self.session = braze_session(base_url, api_key, session or _pooled_session())
        self.url = f"{base_url}/users/track"
        self.limiter = limiter or RateLimiter()
        self.policy = policy or RetryPolicy()
        self.timeout = timeout
        self.batch_limit = batch_limit

    def track(self, attributes: list[dict], *, update_existing_only: bool = False) -> TrackResult:
        """Send one batch; per-object rejections come back in `failed`, whole-request failures raise.

        Raises ValueError for more than `batch_limit` objects (a bug in the caller's batching),
        AuthError/NotFoundError/PermanentError for 401-403/404/other 4xx, TransientError when
        429/5xx/timeouts outlast the retry policy.
        """
        n = len(attributes)
        if n > self.batch_limit:
            raise ValueError(f"{n} objects in one /users/track batch; at most {self.batch_limit} allowed")
        if n == 0:
            return TrackResult(sent=0)
        objects = [{**obj, "_update_existing_only": True} for obj in attributes] if update_existing_only \
            else list(attributes)
        # Encoded once, before any limiter slot is taken: the request leaves as soon as its turn
        # comes (less spread between our pacing and the server's arrival times), retries reuse it.
        body = orjson.dumps({"attributes": objects})
        what = f"sending {n} attributes objects to Braze /users/track"
        retries = 0

        def count_retry(*_) -> None:
            nonlocal retries
            retries += 1

        def attempt() -> TrackResult:
            self.limiter.acquire()  # every attempt counts against the workspace's limit
            # One attempt per limiter slot (retry_call below owns the retries); ok=... hands every
            # HTTP answer back to us, to read the rate-limit headers and per-object errors first.
            resp = request(self.session, "POST", self.url, service="Braze", what="POST /users/track",
                           auth_hint=_AUTH_HINT, timeout=self.timeout, ok=lambda r: True, data=body)
            self.limiter.observe(resp.headers)
            if resp.status_code == 429:
                # The limit is per workspace: hold every thread, not just this one.
                wait = server_wait_seconds(resp)
                if wait:
                    self.limiter.pause(min(wait, self.policy.max_delay))
            return self._result(resp, n)

        result = retry_call(attempt, self.policy, what=what, on_retry=count_retry)
        result.retries = retries
        if result.failed:
            log.info("Braze rejected %d of %d objects: %s", len(result.failed), n, _summary(result.failed))
        return result

    def _result(self, resp: requests.Response, n: int) -> TrackResult:
        """Turn one answer into a TrackResult, or raise the typed error for it."""
        code = resp.status_code
        if code == 202:
            return TrackResult(sent=n, queued=True)
        if code == 400:
            failed = _every_object_failed(resp, n)
            if failed is not None:
                # Nothing was valid, so Braze refused the whole request; but each object failed on
                # its own merits, exactly as it would have in a 201 next to valid ones. An object's
                # fate must not depend on its batch-mates: report them as rows, and let the caller's
                # rejected-rows threshold stop a run where *everything* fails (a systematic bug).
                return TrackResult(sent=0, failed=failed)
        try:
            raise_for_status(resp, service="Braze", what="POST /users/track", auth_hint=_AUTH_HINT)
        except NotFoundError as exc:
            raise NotFoundError(f"{exc}. {_NOT_FOUND_HINT}") from None
        try:
            errors = resp.json().get("errors") or []
        except (ValueError, AttributeError):
            raise PermanentError(
                f"Braze POST {redact_url(self.url)} answered {code} with a body that is not a JSON object; "
                f"cannot tell which objects failed. Check that the host of the Braze connection is your "
                f"instance's REST endpoint (e.g. https://rest.iad-01.braze.com), not the dashboard or a proxy page"
            ) from None
        if not isinstance(errors, list) or not all(isinstance(e, dict) for e in errors):
            raise PermanentError(
                f"Braze POST {redact_url(self.url)} answered {code} with 'errors' that are not a list of objects "
                f"({str(errors)[:100]!r}); cannot tell which objects failed. Check that the host of the Braze "
                f"connection is your instance's REST endpoint, not a proxy"
            )
        failed = _attribute_errors(errors, n)
        return TrackResult(sent=n - len({i for i, _ in failed}), failed=failed)


def _pooled_session() -> requests.Session:
    """A session whose connection pool has room for every thread sending at once."""
    session = requests.Session()
    adapter = HTTPAdapter(pool_connections=1, pool_maxsize=POOL_CONNECTIONS)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return session


def _attribute_errors(errors: list, n: int) -> list[tuple[int, str]]:
    """(index, type) of the `attributes` entries; an index outside the batch breaks the contract."""
    failed = []
    for e in errors:
        if not isinstance(e, dict) or e.get("input_array") != "attributes":
            continue
        index = e.get("index")
        if not isinstance(index, int) or not 0 <= index < n:
            # Mapping errors back to rows is the whole point (Segment shipped a bug here): never guess.
            raise PermanentError(f"Braze /users/track reported an error for index {index!r} in a batch of {n}: {e}; "
                                 f"the rejected users cannot be told apart, so nothing is guessed: report this "
                                 f"answer to Braze support, then clear the task")
        failed.append((index, str(e.get("type", ""))))
    return failed


def _every_object_failed(resp: requests.Response, n: int) -> list[tuple[int, str]] | None:
    """The per-object errors of a 400 when they cover every object sent, else None (a request error)."""
    try:
        errors = resp.json().get("errors")
    except (ValueError, AttributeError):
        return None
    if not isinstance(errors, list) or not errors:
        return None
    try:
        failed = _attribute_errors(errors, n)
    except PermanentError:
        return None
    return failed if {i for i, _ in failed} == set(range(n)) else None


def _summary(failed: list[tuple[int, str]]) -> str:
    """Error types with counts, for one log line (no user ids: they are personal data)."""
    counts: dict[str, int] = {}
    for _, kind in failed:
        counts[kind] = counts.get(kind, 0) + 1
    return ", ".join(f"{kind} x{c}" for kind, c in sorted(counts.items()))
