"""``POST /users/track`` of the Braze sandbox: body validation and applying it to the profiles.

Modelled on Braze docs, "POST: Track users" (``/users/track``) and the attributes, event and
purchase object pages:

* ``{"attributes": [...], "events": [...], "purchases": [...]}`` with at most ``max_objects``
  (75; 50 for "Monthly Active Users CY 24-25" workspaces) objects in total across the three
  arrays; more -> 400, none -> 400.
* Each object is validated on its own (partial success): the valid ones are applied and the
  answer is ``201`` with an ``errors`` list (``type``, ``input_array``, ``index`` in the array
  sent) for the others; only when none is valid is it a ``400``.
* Attributes objects are written to :class:`sandbox.braze_profiles.ProfileStore`; events and
  purchases are validated and counted, not stored.
* Its own sliding-window rate limit: 3,000 requests per 3 seconds (Braze docs, "Rate limits").
* ``response_delay`` (0 s; set it on ``sandbox.track``): every answer is held that long after the
  request was counted and applied, like a distant or busy Braze as seen from the client (round
  trips of tens of milliseconds); the rate limit still counts the request when it arrives.

Also the sandbox-only read-back of the profiles (``GET /_sandbox/profiles``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection, Iterable
from typing import Any
from urllib.parse import parse_qs

from sandbox.braze_http import Response, json_object, json_response
from sandbox.braze_profiles import ID_KINDS, ArrayOps, ProfileStore, Update
from sandbox.rate_window import SlidingWindowLimiter

__all__ = [
    "MAX_TRACK_BODY",
    "MAX_TRACK_OBJECTS",
    "TRACK_PATH",
    "TRACK_RATE_LIMIT",
    "TRACK_RATE_WINDOW",
    "UsersTrack",
]

TRACK_PATH = "/users/track"
TRACK_ARRAYS = ("attributes", "events", "purchases")
TRACK_RATE_LIMIT = 3_000  # requests per TRACK_RATE_WINDOW seconds (Braze's default per workspace)
TRACK_RATE_WINDOW = 3.0
MAX_TRACK_OBJECTS = 75  # in total across attributes + events + purchases
MAX_TRACK_BODY = 16 << 20  # Braze documents no byte limit; 75 full 500-item arrays stay below this
MAX_STRING = 255
STAT_NAMES = (
    "requests",  # every POST /users/track that reached the sandbox
    "accepted",  # 201 answers
    "rate_limited",  # 429 from the limiter (injected 429s count as faults)
    "faults_injected",  # fail_next + track_faults on /users/track
    "unauthorized",
    "bad_requests",  # 400 answers
    "objects_applied",  # attributes objects written to a profile
    "objects_skipped",  # _update_existing_only for an unknown user
    "objects_rejected",  # entries in "errors"
    "events_processed",
    "purchases_processed",
)
_ARRAY_OP_KEYS = frozenset(("add", "remove"))
_IGNORED_KEYS = frozenset(("_update_existing_only", "_merge_objects"))


class UsersTrack:
    """The ``/users/track`` endpoint's settings, rate limit, counters and profile store.

    ``lock`` is the sandbox-wide lock; it guards ``stats`` (which ``BrazeSandbox`` also
    updates for requests and injected faults). See ``BrazeSandbox`` for the options, and the
    module doc for ``response_delay`` (an attribute: ``sandbox.track.response_delay = 0.03``).
    """

    def __init__(
        self,
        lock: threading.Lock,
        *,
        max_objects: int = MAX_TRACK_OBJECTS,
        max_array_length: int = 500,
        invalid_external_ids: Collection[str] | Callable[[str], bool] | None = None,
        array_attributes: Iterable[str] = ("lytics_segments",),
        rate_limit: int = TRACK_RATE_LIMIT,
        rate_window: float = TRACK_RATE_WINDOW,
        response_delay: float = 0.0,
    ) -> None:
        self._lock = lock
        self.response_delay = response_delay  # seconds each answer is held (a simulated round trip)
        self.max_objects = max_objects
        self.invalid_external_ids = invalid_external_ids
        self.array_attributes = frozenset(array_attributes)
        self.profiles = ProfileStore(max_array_length)
        self.limiter = SlidingWindowLimiter(rate_limit, rate_window)
        self.stats: dict[str, int] = dict.fromkeys(STAT_NAMES, 0)

    def handle(self, authorized: bool, headers, body: bytes) -> Response:
        """One ``POST /users/track`` that no fault intercepted (answered after ``response_delay``)."""
        response = self._answer(authorized, headers, body)
        delay = self.response_delay
        if delay > 0:
            time.sleep(delay)  # this request's own handler thread: other requests are not held up
        return response

    def _answer(self, authorized: bool, headers, body: bytes) -> Response:
        stats = self.stats
        if not authorized:
            with self._lock:
                stats["unauthorized"] += 1
            return json_response(401, {"message": "Invalid API key"}, **self.limiter.peek())

        allowed, rl_headers, retry = self.limiter.hit()
        if not allowed:
            with self._lock:
                stats["rate_limited"] += 1
            return json_response(
                429, {"message": "Rate limit exceeded"}, **rl_headers, **{"Retry-After": str(retry)}
            )

        def bad(message: str, errors: list | None = None) -> Response:
            with self._lock:
                stats["bad_requests"] += 1
                stats["objects_rejected"] += len(errors or ())
            payload: dict[str, Any] = {"message": message}
            if errors:
                payload["errors"] = errors
            return json_response(400, payload, **rl_headers)

        payload, problem = json_object(headers, body)
        if problem:
            return bad(problem)
        arrays: dict[str, list] = {}
        for name in TRACK_ARRAYS:
            value = payload.get(name)
            if value is None:
                continue
            if not isinstance(value, list):
                return bad(f"'{name}' must be an array")
            arrays[name] = value
        total = sum(len(v) for v in arrays.values())
        if total > self.max_objects:
            return bad(
                f"Received too many objects in request: {total} "
                f"(at most {self.max_objects} across attributes, events and purchases)"
            )
        if total == 0:
            return bad("Valid data must be provided in the 'attributes', 'events', or 'purchases' fields.")

        errors: list[dict[str, Any]] = []
        updates: list[Update] = []
        for index, obj in enumerate(arrays.get("attributes", ())):
            result = self._validate_attributes(obj)
            if isinstance(result, str):
                errors.append({"type": result, "input_array": "attributes", "index": index})
            else:
                updates.append(result)
        valid_other = {}
        for name in ("events", "purchases"):
            valid = 0
            for index, obj in enumerate(arrays.get(name, ())):
                reason = _validate_event(obj) if name == "events" else _validate_purchase(obj)
                if reason is None:
                    valid += 1
                else:
                    errors.append({"type": reason, "input_array": name, "index": index})
            valid_other[name] = valid
        if not updates and not any(valid_other.values()):
            return bad("No valid objects in request", errors)

        applied, skipped = self.profiles.apply_many(updates)
        with self._lock:
            stats["accepted"] += 1
            stats["objects_applied"] += applied
            stats["objects_skipped"] += skipped
            stats["objects_rejected"] += len(errors)
            stats["events_processed"] += valid_other["events"]
            stats["purchases_processed"] += valid_other["purchases"]
        out: dict[str, Any] = {"message": "success"}
        if "attributes" in arrays:
            out["attributes_processed"] = len(updates)
        if "events" in arrays:
            out["events_processed"] = valid_other["events"]
        if "purchases" in arrays:
            out["purchases_processed"] = valid_other["purchases"]
        if errors:
            out["errors"] = errors
        return json_response(201, out, **rl_headers)

    def _is_invalid_external_id(self, external_id: str) -> bool:
        invalid = self.invalid_external_ids
        if invalid is None:
            return False
        if callable(invalid):
            return bool(invalid(external_id))
        return external_id in invalid

    def _validate_attributes(self, obj: Any) -> Update | str:
        """A validated :class:`Update`, or the error ``type`` string."""
        if not isinstance(obj, dict):
            return "Attributes object must be a JSON object"
        ident = _identify(obj)
        if isinstance(ident, str):
            return ident
        kind, key = ident
        if kind == "external_id" and self._is_invalid_external_id(key):
            return "Invalid 'external_id'"
        update_existing_only = obj.get("_update_existing_only", False)
        if not isinstance(update_existing_only, bool):
            return "'_update_existing_only' must be a boolean"
        attrs: dict[str, Any] = {}
        array_attributes = self.array_attributes
        for name, value in obj.items():
            if name == kind or name in _IGNORED_KEYS:
                continue
            if isinstance(value, str):
                if len(value) > MAX_STRING:
                    return f"Value of '{name}' exceeds {MAX_STRING} characters"
                if name in array_attributes:
                    return f"Invalid value for array attribute '{name}'"
                attrs[name] = value
            elif isinstance(value, list):
                reason = _check_strings(name, value)
                if reason:
                    return reason
                attrs[name] = value
            elif isinstance(value, dict):
                if not value or not value.keys() <= _ARRAY_OP_KEYS:
                    if name in array_attributes:
                        return f"Invalid value for array attribute '{name}'"
                    return f"Nested object for '{name}' is not supported by the sandbox"
                add = value.get("add", [])
                remove = value.get("remove", [])
                for values in (add, remove):
                    if not isinstance(values, list):
                        return f"Invalid value for array attribute '{name}'"
                    reason = _check_strings(name, values)
                    if reason:
                        return reason
                attrs[name] = ArrayOps(tuple(dict.fromkeys(add)), tuple(dict.fromkeys(remove)))
            elif value is None or isinstance(value, int | float):
                if value is not None and name in array_attributes:
                    return f"Invalid value for array attribute '{name}'"
                attrs[name] = value
            else:  # pragma: no cover - orjson produces nothing else
                return f"Invalid value for '{name}'"
        return Update(key, attrs, kind, update_existing_only)

    def readback(self, query: str) -> Response:
        """Sandbox-only: ``{key: [sorted values]}`` of users whose array ``attr`` is non-empty."""
        params = parse_qs(query)
        attr = params.get("attr", ["lytics_segments"])[-1]
        by = params.get("by", ["external_id"])[-1]
        if by not in ID_KINDS:
            return json_response(
                400, {"message": f"Invalid 'by': {by!r} (expected one of {', '.join(ID_KINDS)})"}
            )
        snap = self.profiles.snapshot(attr, by=by)
        return json_response(200, {key: sorted(values) for key, values in snap.items()})


def _check_strings(name: str, values: list) -> str | None:
    for v in values:
        if not isinstance(v, str):
            return f"Invalid value for array attribute '{name}'"
        if len(v) > MAX_STRING:
            return f"Value of '{name}' exceeds {MAX_STRING} characters"
    return None


def _identify(obj: dict) -> tuple[str, str] | str:
    """``(kind, key)`` of the user an object addresses, or the error ``type`` string.

    ``external_id``, ``braze_id`` and ``user_alias`` are pure identifiers: at most one of them.
    Without any of those, ``email`` (else ``phone``) identifies the user; next to one of them,
    ``email`` / ``phone`` are ordinary attributes. A ``user_alias`` is keyed ``"label:name"``.
    """
    present = [k for k in ("external_id", "braze_id", "user_alias") if k in obj]
    if len(present) > 1:
        return "Only one of 'external_id', 'braze_id' or 'user_alias' may be given"
    if present:
        kind = present[0]
    elif "email" in obj:
        kind = "email"
    elif "phone" in obj:
        kind = "phone"
    else:
        return "'external_id', 'braze_id', 'user_alias', 'email' or 'phone' is required"
    value = obj[kind]
    if kind == "user_alias":
        if not isinstance(value, dict):
            return "Invalid 'user_alias': must be an object with 'alias_name' and 'alias_label'"
        name, label = value.get("alias_name"), value.get("alias_label")
        if not (isinstance(name, str) and name and isinstance(label, str) and label):
            return "Invalid 'user_alias': must be an object with 'alias_name' and 'alias_label'"
        value = f"{label}:{name}"
    elif not isinstance(value, str) or not value:
        return f"Invalid '{kind}': must be a non-empty string"
    if len(value) > MAX_STRING:
        return f"Value of '{kind}' exceeds {MAX_STRING} characters"
    return kind, value


def _validate_event(obj: Any) -> str | None:
    """Events are validated and counted, not stored."""
    if not isinstance(obj, dict):
        return "Event object must be a JSON object"
    ident = _identify(obj)
    if isinstance(ident, str):
        return ident
    if not isinstance(obj.get("name"), str) or not obj["name"]:
        return "'name' is required"
    if not isinstance(obj.get("time"), str):
        return "'time' is required"
    return None


def _validate_purchase(obj: Any) -> str | None:
    """Purchases are validated and counted, not stored."""
    if not isinstance(obj, dict):
        return "Purchase object must be a JSON object"
    ident = _identify(obj)
    if isinstance(ident, str):
        return ident
    for key in ("product_id", "currency"):
        if not isinstance(obj.get(key), str) or not obj[key]:
            return f"'{key}' is required"
    price = obj.get("price")
    if isinstance(price, bool) or not isinstance(price, int | float):
        return "'price' is required"
    if not isinstance(obj.get("time"), str):
        return "'time' is required"
    return None
