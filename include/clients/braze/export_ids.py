"""Braze `POST /users/export/ids`: read the profiles of known users, 50 external ids at a time.

Contract (docs/vendor-contracts.md#braze-post-usersexportids, from Braze's "Export user profile by
identifier" docs): body `{"external_ids": [<= 50], "fields_to_export": [...]}` (the field list is
required for workspaces onboarded from August 2024); answer `200 {"message": "success",
"users": [...], "invalid_user_ids": [...]}` where `invalid_user_ids` (optional) lists the ids
with no profile. A user object holds only the fields that have a value. **Custom attributes are
exported only as a whole**, in `custom_attributes` (there is no per-attribute field name), so
reading one array attribute means asking for `custom_attributes` and picking it out.

Rate limit: 250 requests per minute for workspaces onboarded on or after 2024-08-22 (older ones
share the general hourly budget). Every attempt is paced by a
:class:`~include.common.rate_limit.RateLimiter` (smooth: one request every ~0.24 s at 250/min),
which also obeys `X-RateLimit-*` and a 429's `Retry-After`. 429/5xx/timeouts are retried with
the project's backoff; 401/403 (a key without `users.export.ids`), 404 and other 4xx fail at once.

The endpoint only reads, so retrying any attempt is harmless. The API key is sent in the
session's `Authorization` header only and never appears in errors or logs.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import requests

from include.clients.braze.export import braze_session
from include.common.errors import NotFoundError, PermanentError
from include.common.http import raise_for_status, redact_url, request, server_wait_seconds
from include.common.rate_limit import RateLimiter
from include.common.retry import RetryPolicy, retry_call

log = logging.getLogger(__name__)

MAX_IDS_PER_REQUEST = 50  # external_ids per /users/export/ids request (Braze docs)
RATE_LIMIT_PER_MINUTE = 250  # workspaces onboarded on or after 2024-08-22
ENDPOINT = "POST /users/export/ids"

_AUTH_HINT = (
    "Check the REST API key (password of the Braze connection) has the users.export.ids "
    "permission for this workspace."
)
_ODD_ANSWER = ("Check that the host of the Braze connection is your instance's REST endpoint, not a proxy; if it "
               "is, report the answer to Braze support (nothing was changed by this read)")
_NOT_FOUND_HINT = (
    "For /users/export/ids this means the REST endpoint (host of the Braze connection) is not "
    "this workspace's instance, or the API key is unknown there."
)


@dataclass
class ProfileValues:
    """One custom attribute of the users asked for, as Braze holds it."""

    values: dict[str, Any] = field(default_factory=dict)  # external id -> the attribute's value (None: unset)
    not_found: list[str] = field(default_factory=list)  # ids Braze has no profile for, in the order asked
    requests: int = 0
    retries: int = 0


class BrazeExportIdsClient:
    """`POST /users/export/ids` for one workspace (base URL + REST API key).

    `rate_limit_per_minute` paces every attempt (default 250, Braze's limit for newer
    workspaces); pass `limiter` to share one between clients instead. `policy` retries
    429/5xx/timeouts.

    Example::

        client = BrazeExportIdsClient("https://rest.iad-01.braze.com", key)
        found = client.custom_attribute(["u1", "u2"], "lytics_segments")
        found.values  # {"u1": ["vip", "churn_risk"], "u2": None}; found.not_found: []
    """

    def __init__(self, base_url: str, api_key: str, *, rate_limit_per_minute: int = RATE_LIMIT_PER_MINUTE,
                 limiter: RateLimiter | None = None, policy: RetryPolicy | None = None,
                 timeout: tuple[float, float] = (5, 60), session: requests.Session | None = None):
        base_url, self.session = braze_session(base_url, api_key, session)
        self.url = f"{base_url}/users/export/ids"
        self.limiter = limiter or RateLimiter(rate_limit_per_minute, 60.0)
        self.policy = policy or RetryPolicy()
        self.timeout = timeout

    def custom_attribute(self, external_ids: Iterable[str], attribute: str) -> ProfileValues:
        """The value of custom attribute `attribute` for each user, in requests of <= 50 ids.

        Ids are de-duplicated. A user Braze has no profile for goes to `not_found`; a profile
        without the attribute gets None.
        """
        result = ProfileValues()
        for batch in _batches(list(dict.fromkeys(external_ids)), MAX_IDS_PER_REQUEST):
            users, retries = self.export(batch, ["external_id", "custom_attributes"])
            result.requests += 1 + retries
            result.retries += retries
            for external_id in batch:
                user = users.get(external_id)
                if user is None:
                    result.not_found.append(external_id)
                    continue
                custom = user.get("custom_attributes") or {}
                if not isinstance(custom, dict):
                    raise PermanentError(f"Braze {ENDPOINT} returned `custom_attributes` that is not an object "
                                         f"({type(custom).__name__}); cannot read {attribute!r}. {_ODD_ANSWER}")
                result.values[external_id] = custom.get(attribute)
        return result

    def export(self, external_ids: list[str], fields_to_export: list[str]) -> tuple[dict[str, dict], int]:
        """One request (retried as needed): the user objects by external id, and the retries it took.

        Ids missing from `users` have no profile (whether or not Braze listed them in
        `invalid_user_ids`). Raises ValueError for more than 50 ids (a bug in the caller's batching).
        """
        if not 1 <= len(external_ids) <= MAX_IDS_PER_REQUEST:
            raise ValueError(f"{len(external_ids)} ids in one /users/export/ids request; 1..{MAX_IDS_PER_REQUEST} allowed")
        body = orjson.dumps({"external_ids": list(external_ids), "fields_to_export": list(fields_to_export)})
        what = f"reading {len(external_ids)} profiles with Braze /users/export/ids"
        retries = 0

        def count_retry(*_) -> None:
            nonlocal retries
            retries += 1

        def attempt() -> dict[str, dict]:
            self.limiter.acquire()  # every attempt counts against the endpoint's limit
            resp = request(self.session, "POST", self.url, service="Braze", what=ENDPOINT, auth_hint=_AUTH_HINT,
                           timeout=self.timeout, ok=lambda r: True, data=body)
            self.limiter.observe(resp.headers)
            if resp.status_code == 429:
                wait = server_wait_seconds(resp)
                if wait:
                    self.limiter.pause(min(wait, self.policy.max_delay))
            return self._users(resp, set(external_ids))

        users = retry_call(attempt, self.policy, what=what, on_retry=count_retry)
        return users, retries

    def _users(self, resp: requests.Response, asked: set[str]) -> dict[str, dict]:
        """The user objects of one answer by external id, or the typed error for it."""
        try:
            raise_for_status(resp, service="Braze", what=ENDPOINT, auth_hint=_AUTH_HINT)
        except NotFoundError as exc:
            raise NotFoundError(f"{exc}. {_NOT_FOUND_HINT}") from None
        where = f"Braze POST {redact_url(self.url)}"
        try:
            body = resp.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or not isinstance(body.get("users", []), list):
            kind = resp.headers.get("Content-Type", "no content type")
            raise PermanentError(
                f"{where} answered {resp.status_code} ({kind}) with a body that is not the documented "
                f"{{\"users\": [...]}} object, starting {resp.text[:60]!r}. Check that the host of the Braze "
                f"connection is your instance's REST endpoint (e.g. https://rest.iad-01.braze.com), not the "
                f"dashboard or a proxy page."
            )
        if body.get("message") != "success":
            raise PermanentError(f"{where} answered {resp.status_code} with message {body.get('message')!r} "
                                 f"instead of 'success'; the export cannot be trusted. {_ODD_ANSWER}")
        users: dict[str, dict] = {}
        for user in body.get("users") or []:
            external_id = user.get("external_id") if isinstance(user, dict) else None
            if not isinstance(external_id, str) or external_id not in asked:
                # Mapping profiles back to the ids asked for is the whole point: never guess.
                raise PermanentError(f"{where} returned a user object that is not one of the ids asked for "
                                     f"(external_id {'missing' if external_id is None else 'not asked for'}). "
                                     f"{_ODD_ANSWER}")
            users[external_id] = user
        return users


def _batches(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]
