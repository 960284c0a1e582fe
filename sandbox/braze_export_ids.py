"""``POST /users/export/ids`` of the Braze sandbox: read profiles back by ``external_id``.

Modelled on Braze docs, "Export user profile by identifier" (``/users/export/ids``; see
docs/vendor-contracts.md#braze-post-usersexportids):

* Body ``{"external_ids": [...], "fields_to_export": [...]}``; at most 50 ``external_ids`` per
  request (more -> 400), none or a missing/empty list -> 400. The other identifiers Braze takes
  (``user_aliases``, ``braze_id``, ``device_id``, ``email_address``, ``phone``) are refused with a
  400 naming them: the sandbox implements only what the pipeline uses.
* ``fields_to_export`` is required (Braze requires it for workspaces onboarded from August 2024,
  the ones with this endpoint's 250-per-minute limit) and must be a non-empty array of strings.
  Names outside Braze's documented list are ignored (nothing is returned for them); the
  documented names are returned when the profile has a value ("we include the least data
  possible": a field missing from a user object means null, false or empty).
* Custom attributes are exported **only as a whole**, in one ``custom_attributes`` object
  (Braze cannot export a single custom attribute by name: ``"lytics_segments"`` in
  ``fields_to_export`` returns nothing). Array attributes come back as stored, in insertion order.
* Answer ``200 {"message": "success", "users": [...], "invalid_user_ids": [...]}``; users
  appear in the order asked (each once), ``invalid_user_ids`` lists the ids with no profile and
  is left out when there are none (Braze documents it as optional).
* Its own exact sliding-window rate limit: 250 requests per 60 s by default (Braze's limit for
  workspaces onboarded on or after 2024-08-22); ``429`` with ``Retry-After`` and the
  ``X-RateLimit-*`` headers on every answer, as on ``/users/track``. Only authenticated requests
  count; a ``429`` reads nothing.

Profiles are those of :class:`sandbox.braze_profiles.ProfileStore`: what ``/users/track``
wrote. Standard library + orjson.
"""

from __future__ import annotations

import threading
from typing import Any

from sandbox.braze_http import Response, json_object, json_response
from sandbox.braze_profiles import ProfileStore
from sandbox.rate_window import SlidingWindowLimiter

__all__ = [
    "EXPORT_IDS_MAX_IDS",
    "EXPORT_IDS_PATH",
    "EXPORT_IDS_RATE_LIMIT",
    "EXPORT_IDS_RATE_WINDOW",
    "STANDARD_FIELDS",
    "UsersExportIds",
]

EXPORT_IDS_PATH = "/users/export/ids"
EXPORT_IDS_MAX_IDS = 50  # external_ids (or user_aliases) per request
EXPORT_IDS_RATE_LIMIT = 250  # requests per EXPORT_IDS_RATE_WINDOW seconds (newer workspaces)
EXPORT_IDS_RATE_WINDOW = 60.0
# Braze's documented `fields_to_export` that the sandbox can answer from a profile written by
# /users/track: a stored attribute of this name is a standard field, every other stored
# attribute is a custom attribute (returned inside `custom_attributes`).
STANDARD_FIELDS = frozenset((
    "country", "dob", "email", "email_subscribe", "first_name", "gender", "home_city", "language",
    "last_name", "phone", "push_subscribe", "time_zone",
))
# The rest of the documented list (apps, braze_id, created_at, custom_events, devices, purchases, ...)
# holds nothing in the sandbox: like a name Braze does not know, it returns nothing.
_OTHER_IDENTIFIERS = ("user_aliases", "braze_id", "device_id", "email_address", "phone")
STAT_NAMES = ("requests", "answered", "rate_limited", "unauthorized", "bad_requests", "ids_asked", "ids_found")


class UsersExportIds:
    """The ``/users/export/ids`` endpoint over a profile store, with its own limiter and counters.

    ``lock`` is the sandbox-wide lock (it guards ``stats``). ``rate_limit`` requests are allowed
    in any ``rate_window`` seconds.
    """

    def __init__(self, lock: threading.Lock, profiles: ProfileStore, *, rate_limit: int = EXPORT_IDS_RATE_LIMIT,
                 rate_window: float = EXPORT_IDS_RATE_WINDOW) -> None:
        if rate_limit < 1 or rate_window <= 0:
            raise ValueError("export_ids_rate_limit must be >= 1 and export_ids_rate_window > 0")
        self._lock = lock
        self.profiles = profiles
        self.limiter = SlidingWindowLimiter(rate_limit, rate_window)
        self.stats: dict[str, int] = dict.fromkeys(STAT_NAMES, 0)

    def _count(self, **increments: int) -> None:
        with self._lock:
            for name, n in increments.items():
                self.stats[name] += n

    def handle(self, authorized: bool, headers, body: bytes) -> Response:
        """One ``POST /users/export/ids`` that no fault intercepted."""
        self._count(requests=1)
        if not authorized:
            self._count(unauthorized=1)
            return json_response(401, {"message": "Invalid API key"}, **self.limiter.peek())
        allowed, rl_headers, retry = self.limiter.hit()
        if not allowed:
            self._count(rate_limited=1)
            return json_response(429, {"message": "Rate limit exceeded"}, **rl_headers,
                                 **{"Retry-After": str(retry)})
        payload, problem = json_object(headers, body)
        ids, fields = (None, None) if problem else (payload.get("external_ids"), payload.get("fields_to_export"))
        problem = problem or _problem(payload, ids, fields)
        if problem:
            self._count(bad_requests=1)
            return json_response(400, {"message": problem}, **rl_headers)
        users, invalid = [], []
        for external_id in dict.fromkeys(ids):  # each user once, in the order asked
            profile = self.profiles.get(external_id)
            if profile is None:
                invalid.append(external_id)
            else:
                users.append(_export(external_id, profile, set(fields)))
        self._count(answered=1, ids_asked=len(ids), ids_found=len(users))
        out: dict[str, Any] = {"users": users}
        if invalid:
            out["invalid_user_ids"] = invalid
        out["message"] = "success"
        return json_response(200, out, **rl_headers)


def _problem(payload: dict, ids: Any, fields: Any) -> str | None:
    """The 400 message for a request the sandbox does not take, or None."""
    others = [k for k in _OTHER_IDENTIFIERS if k in payload]
    if others:
        return f"The sandbox supports only 'external_ids' as identifiers (got {', '.join(others)})"
    if ids is None or ids == []:
        return "'external_ids' must be provided: a non-empty array of external ids"
    if not isinstance(ids, list) or not all(isinstance(i, str) and i for i in ids):
        return "'external_ids' must be an array of non-empty strings"
    if len(ids) > EXPORT_IDS_MAX_IDS:
        return f"Too many external_ids: {len(ids)} (at most {EXPORT_IDS_MAX_IDS} per request)"
    if not isinstance(fields, list) or not fields or not all(isinstance(f, str) for f in fields):
        return "'fields_to_export' is required: a non-empty array of field names"
    return None


def _export(external_id: str, profile: dict[str, Any], fields: set[str]) -> dict[str, Any]:
    """The user object: only the fields asked for that hold a value (Braze's "least data possible")."""
    user: dict[str, Any] = {}
    if "external_id" in fields:
        user["external_id"] = external_id
    for name in sorted(fields & STANDARD_FIELDS):
        if profile.get(name) is not None:
            user[name] = profile[name]
    if "custom_attributes" in fields:
        custom = {k: v for k, v in profile.items() if k not in STANDARD_FIELDS}
        if custom:
            user["custom_attributes"] = custom
    return user
