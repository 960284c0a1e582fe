"""Profile state behind the Braze sandbox's ``POST /users/track``.

A thread-safe in-memory store of user profiles. Each profile is a dict of attributes; array
attributes (e.g. ``lytics_segments``) behave as sets that keep insertion order.

Identifier namespaces are kept apart: a profile written by ``external_id`` lives under that id;
profiles written by ``braze_id`` / ``email`` / ``phone`` / ``user_alias`` live in their own
namespace (the sandbox does not link identifiers the way Braze's identity resolution would).
Everything keyed without ``by=`` means ``external_id``.

Data points (Braze's billing unit; Braze docs, "Data points") are counted as:

* every scalar attribute write (including ``null``, which removes the attribute) = 1;
* a plain list (replaces the whole array) = 1;
* every value in an ``add`` or ``remove`` list = 1, even when it changes nothing (the value was
  already present / absent) -- sending only deltas is the client's job.

Array length cap (``max_array_length``, default 500): when an array is full, further added
values are dropped silently (the first ``max_array_length`` values are kept, nothing is
reported); a plain list longer than the cap keeps its first ``max_array_length`` values.

Standard library only.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ID_KINDS", "ArrayOps", "ProfileStore", "Update"]

ID_KINDS = ("external_id", "braze_id", "user_alias", "email", "phone")
DEFAULT_MAX_ARRAY_LENGTH = 500


@dataclass(frozen=True, slots=True)
class ArrayOps:
    """``{"add": [...], "remove": [...]}``: add first, then remove."""

    add: tuple[str, ...] = ()
    remove: tuple[str, ...] = ()


@dataclass(slots=True)
class Update:
    """One validated attributes object.

    ``attrs`` maps attribute name to a scalar (``None`` removes the attribute), a ``list`` of
    strings (replaces the array) or :class:`ArrayOps`.
    """

    key: str
    attrs: dict[str, Any] = field(default_factory=dict)
    kind: str = "external_id"
    update_existing_only: bool = False


class ProfileStore:
    """Thread-safe map ``external_id -> {attribute: value}`` (plus the other identifier namespaces)."""

    def __init__(self, max_array_length: int = DEFAULT_MAX_ARRAY_LENGTH) -> None:
        if max_array_length < 1:
            raise ValueError("max_array_length must be >= 1")
        self.max_array_length = max_array_length
        self._lock = threading.Lock()
        # Array attributes are stored as dict[str, None]: an insertion-ordered set.
        self._ns: dict[str, dict[str, dict[str, Any]]] = {kind: {} for kind in ID_KINDS}
        self._data_points = 0

    # ------------------------------------------------------------------ reads
    @property
    def data_points(self) -> int:
        with self._lock:
            return self._data_points

    def count(self, by: str = "external_id") -> int:
        with self._lock:
            return len(self._ns[by])

    def __len__(self) -> int:
        return self.count()

    def __contains__(self, external_id: object) -> bool:
        with self._lock:
            return external_id in self._ns["external_id"]

    def exists(self, key: str, by: str = "external_id") -> bool:
        with self._lock:
            return key in self._ns[by]

    def get(self, key: str, by: str = "external_id") -> dict[str, Any] | None:
        """A copy of the profile (arrays as lists, in insertion order), or ``None``."""
        with self._lock:
            profile = self._ns[by].get(key)
            if profile is None:
                return None
            return {k: (list(v) if isinstance(v, dict) else v) for k, v in profile.items()}

    def array(self, key: str, attr: str = "lytics_segments", by: str = "external_id") -> set[str]:
        """The values of an array attribute (empty set when the user or the attribute is missing)."""
        with self._lock:
            profile = self._ns[by].get(key)
            value = profile.get(attr) if profile is not None else None
            return set(value) if isinstance(value, dict) else set()

    def snapshot(self, attr: str = "lytics_segments", by: str = "external_id") -> dict[str, frozenset[str]]:
        """``{key: frozenset(values)}`` for every user whose array ``attr`` is non-empty."""
        with self._lock:
            out = {}
            for key, profile in self._ns[by].items():
                value = profile.get(attr)
                if isinstance(value, dict) and value:
                    out[key] = frozenset(value)
            return out

    # ------------------------------------------------------------------ writes
    def apply(self, update: Update) -> bool:
        """Apply one update. Returns False when skipped (``update_existing_only`` and unknown user)."""
        return self.apply_many((update,))[0] == 1

    def apply_many(self, updates: Iterable[Update]) -> tuple[int, int]:
        """Apply updates atomically (one lock). Returns ``(applied, skipped)``."""
        applied = skipped = 0
        cap = self.max_array_length
        with self._lock:
            points = 0
            for u in updates:
                ns = self._ns[u.kind]
                profile = ns.get(u.key)
                if profile is None:
                    if u.update_existing_only:
                        skipped += 1
                        continue
                    profile = ns[u.key] = {}
                applied += 1
                for name, value in u.attrs.items():
                    if isinstance(value, ArrayOps):
                        current = profile.get(name)
                        if not isinstance(current, dict):
                            current = profile[name] = {}
                        for v in value.add:
                            if len(current) < cap:
                                current.setdefault(v, None)
                        for v in value.remove:
                            current.pop(v, None)
                        points += len(value.add) + len(value.remove)
                    elif isinstance(value, list):
                        profile[name] = _first_unique(value, cap)
                        points += 1
                    elif value is None:
                        profile.pop(name, None)
                        points += 1
                    else:
                        profile[name] = value
                        points += 1
            self._data_points += points
        return applied, skipped

    def clear(self) -> None:
        with self._lock:
            for ns in self._ns.values():
                ns.clear()
            self._data_points = 0


def _first_unique(values: list[str], n: int) -> dict[str, None]:
    """The first ``n`` distinct values, as an insertion-ordered set."""
    seen = dict.fromkeys(values)
    if len(seen) <= n:
        return seen
    return dict.fromkeys(list(seen)[:n])
