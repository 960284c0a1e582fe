"""Deterministic, changeable audience membership for the Lytics sandbox.

All audiences share one *user universe*: user ``i`` (``i >= 0``) is the same person in every
audience, with ``braze_id`` ``f"u{i:08d}"`` (zero-padded, so ascending index == ascending
``braze_id`` for ``i < 10**8``), a stable e-mail address and first name. An audience is a set
of user indices, held by :class:`MembershipStore` as a ``bytearray`` with one byte per user
of the audience's universe (1 = member). Hence:

* 10,000,000 members (default universe ``ceil(10M / 0.6)``) cost ~16.7 MB;
* "next member after index k" is ``bytearray.find(b"\\x01", k + 1)`` -- C speed, so pages of
  a 10M-member scan are produced on the fly, at any position;
* counts are kept incrementally (``bytearray.count`` checks them in tests).

Initial membership is a pure function of ``(audience.id, seed, population, universe)``:
``random.Random`` (string seed -> SHA-512, independent of ``PYTHONHASHSEED``) draws one
byte per user; bytes below a threshold are members (``bytes.translate``, C speed), then a
few seeded random probes add/remove members until the count is *exactly* ``population``.
After that, membership changes only through :meth:`MembershipStore.add`,
:meth:`~MembershipStore.remove` and :meth:`~MembershipStore.churn` (deterministic given
their arguments and the current state).

Standard library only; imports nothing from ``include/`` or ``plugins/``.
"""

from __future__ import annotations

import math
import random
import re
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

__all__ = ["DEFAULT_DENSITY", "USER_FIELDS", "Audience", "MembershipStore", "braze_id", "user_record"]

DEFAULT_DENSITY = 0.6  # population / universe when no universe is given
_CHUNK = 1 << 20  # bytes drawn per step while building the initial bitmap
_ONE = b"\x01"

_SLUG_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,127}")
_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_FIELD_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")

_FIRST_NAMES = (
    "James", "Mary", "Olivia", "Liam", "Noah", "Emma", "José", "Zoë", "Łukasz", "Chloé",
    "伟", "Priya", "Anne-Marie", "D'Andre", "Siobhán", "Kai",
)  # fmt: skip
_EMAIL_DOMAINS = ("example.com", "example.org", "example.net")


@dataclass(frozen=True)
class Audience:
    """One Lytics audience ("segment" with ``table=user``).

    * ``population`` -- exact initial member count.
    * ``universe`` -- size of the index range members are drawn from (default
      ``ceil(population / 0.6)``); membership changes may grow it.
    * ``id_field`` -- the user field carrying the Braze id (``u{i:08d}``).
    * ``missing_id_every=N`` -- every Nth user (``i % N == N - 1``) has no ``id_field`` in
      this audience's scan output.
    * ``invalid_id_every=N`` -- every Nth user (``i % N == 0``, when it has an id) carries an id
      Braze can never accept as an external id (Lytics stores any string): 300 characters,
      only spaces, or with a line break, in turn (``bad_id``).
    """

    id: str
    slug: str
    name: str
    population: int
    seed: int = 0
    id_field: str = "braze_id"
    missing_id_every: int = 0
    universe: int | None = None
    invalid_id_every: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not _ID_RE.fullmatch(self.id):
            raise ValueError(f"audience id must match {_ID_RE.pattern!r}, got {self.id!r}")
        if not isinstance(self.slug, str) or not _SLUG_RE.fullmatch(self.slug):
            raise ValueError(f"slug must match {_SLUG_RE.pattern!r}, got {self.slug!r}")
        if not isinstance(self.population, int) or self.population < 0:
            raise ValueError(f"population must be an int >= 0, got {self.population!r}")
        if not isinstance(self.missing_id_every, int) or self.missing_id_every < 0:
            raise ValueError(f"missing_id_every must be an int >= 0, got {self.missing_id_every!r}")
        if not isinstance(self.id_field, str) or not _FIELD_RE.fullmatch(self.id_field):
            raise ValueError(f"id_field must match {_FIELD_RE.pattern!r}, got {self.id_field!r}")
        if self.id_field in ("email", "first_name", "segments"):
            raise ValueError(f"id_field must not clash with another user field: {self.id_field!r}")
        if self.universe is not None and (
            not isinstance(self.universe, int) or self.universe < self.population
        ):
            raise ValueError(f"universe must be an int >= population, got {self.universe!r}")

    @property
    def universe_size(self) -> int:
        if self.universe is not None:
            return self.universe
        return math.ceil(self.population / DEFAULT_DENSITY)

    def has_id(self, i: int) -> bool:
        n = self.missing_id_every
        return not (n > 0 and i % n == n - 1)

    def bad_id(self, i: int) -> str | None:
        """The unusable id user ``i`` carries in this audience, or None (see ``invalid_id_every``)."""
        n = self.invalid_id_every
        if not (n > 0 and i % n == 0 and self.has_id(i)):
            return None
        kind = (i // n) % 3
        return (braze_id(i) + "x" * 291, "   ", f"{braze_id(i)}\n")[kind]

    def usable_id(self, i: int) -> bool:
        """User ``i`` has an id Braze accepts in this audience's scan output."""
        return self.has_id(i) and self.bad_id(i) is None

    @property
    def fields(self) -> tuple[str, ...]:
        """User fields a scan of this audience returns by default (``segments`` comes on top)."""
        return (self.id_field, "email", "first_name")


USER_FIELDS = ("email", "first_name")  # besides the audience's id_field and "segments"


def braze_id(i: int) -> str:
    return f"u{i:08d}"


def user_record(audience: Audience, i: int, segments: list[str], fields: Iterable[str] | None = None) -> dict:
    """User ``i`` as a scan of ``audience`` returns it: the requested fields that the user has
    (all of ``audience.fields`` when ``fields`` is None) plus ``segments``, always."""
    want = audience.fields if fields is None else fields
    rec: dict = {}
    for f in want:
        if f == audience.id_field:
            if audience.has_id(i):
                rec[f] = audience.bad_id(i) or braze_id(i)
        elif f == "email":
            name = _FIRST_NAMES[i % len(_FIRST_NAMES)].lower().encode("ascii", "ignore").decode()
            local = "".join(c for c in name if c.isalnum()) or "user"
            rec[f] = f"{local}.{i}@{_EMAIL_DOMAINS[i % len(_EMAIL_DOMAINS)]}"
        elif f == "first_name":
            rec[f] = _FIRST_NAMES[i % len(_FIRST_NAMES)]
    rec["segments"] = segments
    return rec


def _as_indices(indices: Iterable[int] | int) -> Iterable[int]:
    if isinstance(indices, int):
        return (indices,)
    return indices


class MembershipStore:
    """Thread-safe member sets, one ``bytearray`` bitmap (a byte per user) per audience."""

    def __init__(self, audiences: Iterable[Audience] = ()) -> None:
        self._lock = threading.RLock()
        self._bits: dict[str, bytearray] = {}
        self._counts: dict[str, int] = {}
        self._versions: dict[str, int] = {}
        for a in audiences:
            self.register(a)

    # ------------------------------------------------------------------ setup
    def register(self, audience: Audience) -> None:
        """(Re)create ``audience``'s initial membership: exactly ``population`` members."""
        bits = _initial_bitmap(audience)
        with self._lock:
            self._bits[audience.id] = bits
            self._counts[audience.id] = audience.population
            self._versions[audience.id] = self._versions.get(audience.id, -1) + 1

    def unregister(self, audience_id: str) -> None:
        with self._lock:
            self._bitmap(audience_id)
            del self._bits[audience_id], self._counts[audience_id]

    def audience_ids(self) -> list[str]:
        with self._lock:
            return list(self._bits)

    def _bitmap(self, audience_id: str) -> bytearray:
        try:
            return self._bits[audience_id]
        except KeyError:
            raise KeyError(f"unknown audience {audience_id!r}") from None

    # ------------------------------------------------------------------ queries
    def count(self, audience_id: str) -> int:
        with self._lock:
            self._bitmap(audience_id)
            return self._counts[audience_id]

    def is_member(self, audience_id: str, i: int) -> bool:
        with self._lock:
            bits = self._bitmap(audience_id)
            return 0 <= i < len(bits) and bits[i] == 1

    def universe(self, audience_id: str) -> int:
        """Current size of the audience's index range (members are all ``< universe``)."""
        with self._lock:
            return len(self._bitmap(audience_id))

    def nbytes(self, audience_id: str) -> int:
        """Memory held for the audience's membership (the bitmap)."""
        with self._lock:
            return len(self._bitmap(audience_id))

    def version(self, audience_id: str) -> int:
        """Bumped on every membership change (register/add/remove/churn)."""
        with self._lock:
            self._bitmap(audience_id)
            return self._versions[audience_id]

    def next_members(self, audience_id: str, after: int, limit: int) -> list[int]:
        """Up to ``limit`` member indices ``> after``, ascending, as of now."""
        return self._next_indices(audience_id, after, limit, _ONE)

    def next_nonmembers(self, audience_id: str, after: int, limit: int) -> list[int]:
        """Up to ``limit`` indices ``> after`` that are *not* members, ascending, as of now; past the
        universe's end every index is a non-member (``add`` grows the universe to take them)."""
        return self._next_indices(audience_id, after, limit, b"\x00")

    def _next_indices(self, audience_id: str, after: int, limit: int, bit: bytes) -> list[int]:
        """Up to ``limit`` indices ``> after`` whose bit is ``bit``; a 0 bit also matches past the end."""
        out: list[int] = []
        with self._lock:
            bits = self._bitmap(audience_id)
            find = bits.find
            pos = max(after + 1, 0)
            while len(out) < limit:
                found = find(bit, pos)
                if found < 0:
                    if bit != _ONE:
                        start = max(pos, len(bits))
                        out.extend(range(start, start + limit - len(out)))
                    break
                out.append(found)
                pos = found + 1
        return out

    def members(self, audience_id: str) -> Iterator[int]:
        """Member indices in ascending order. Live: changes made while iterating ahead of the
        cursor are seen, changes behind it are not (no index is yielded twice)."""
        self.count(audience_id)  # unknown audience -> KeyError now, not at first next()
        after = -1
        while page := self.next_members(audience_id, after, 4096):
            yield from page
            after = page[-1]

    # ------------------------------------------------------------------ changes
    def add(self, audience_id: str, indices: Iterable[int] | int) -> int:
        """Make the given users members (growing the universe if needed). Returns how many
        were not members before."""
        with self._lock:
            bits = self._bitmap(audience_id)
            if isinstance(indices, range) and indices.step == 1 and len(indices) > 0:
                lo, hi = indices.start, indices.stop
                if lo < 0:
                    raise ValueError(f"user index must be >= 0, got {lo}")
                if hi > len(bits):
                    bits.extend(bytes(hi - len(bits)))
                added = (hi - lo) - bits.count(_ONE, lo, hi)
                bits[lo:hi] = _ONE * (hi - lo)
            else:
                added = 0
                for i in _as_indices(indices):
                    if i < 0:
                        raise ValueError(f"user index must be >= 0, got {i}")
                    if i >= len(bits):
                        bits.extend(bytes(i + 1 - len(bits)))
                    if bits[i] == 0:
                        bits[i] = 1
                        added += 1
            self._counts[audience_id] += added
            self._versions[audience_id] += 1
            return added

    def remove(self, audience_id: str, indices: Iterable[int] | int) -> int:
        """Drop the given users from the audience. Returns how many were members."""
        with self._lock:
            bits = self._bitmap(audience_id)
            n = len(bits)
            if isinstance(indices, range) and indices.step == 1:
                lo, hi = max(indices.start, 0), min(indices.stop, n)
                removed = bits.count(_ONE, lo, hi) if hi > lo else 0
                if hi > lo:
                    bits[lo:hi] = bytes(hi - lo)
            else:
                removed = 0
                for i in _as_indices(indices):
                    if 0 <= i < n and bits[i] == 1:
                        bits[i] = 0
                        removed += 1
            self._counts[audience_id] -= removed
            self._versions[audience_id] += 1
            return removed

    def churn(self, audience_id: str, share: float, seed: int = 0) -> tuple[list[int], list[int]]:
        """Move ``round(share * count)`` current members out and as many current non-members
        in (the count stays the same); grows the universe if there are too few non-members.
        Deterministic given the current membership, ``share`` and ``seed``.
        Returns ``(removed, added)``, each sorted ascending."""
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"share must be within [0, 1], got {share!r}")
        with self._lock:
            bits = self._bitmap(audience_id)
            count = self._counts[audience_id]
            k = round(share * count)
            if k == 0:
                return [], []
            nonmembers = len(bits) - count
            if nonmembers < k:
                bits.extend(bytes(k - nonmembers))
            rng = random.Random(f"churn:{audience_id}:{seed}:{share!r}:{count}:{len(bits)}")
            out_mask = _pick(bits, 1, k, rng)
            in_mask = _pick(bits, 0, k, rng)
            flip = int.from_bytes(out_mask, "big") | int.from_bytes(in_mask, "big")
            bits[:] = (int.from_bytes(bits, "big") ^ flip).to_bytes(len(bits), "big")
            self._versions[audience_id] += 1
        return _indices(out_mask), _indices(in_mask)


_IS = {v: bytes(1 if b == v else 0 for b in range(256)) for v in (0, 1)}


def _pick(bits: bytearray, value: int, k: int, rng: random.Random) -> bytearray:
    """A mask (1 = chosen) of ``k`` distinct indices whose byte in ``bits`` is ``value``.

    C speed whatever ``k``: candidates are drawn in bulk (random bytes below a threshold,
    AND-ed with ``bits == value`` through big-int bitwise ops), then a few seeded random
    probes fix the count to exactly ``k``."""
    n = len(bits)
    eligible = bits.translate(_IS[value])
    total = eligible.count(_ONE)
    if k > total:
        raise ValueError(f"cannot pick {k} of {total}")
    threshold = math.floor(k / total * 256) if total else 0
    if threshold == 0:
        mask = bytearray(n)
    else:
        draw = rng.randbytes(n).translate(bytes(1 if b < threshold else 0 for b in range(256)))
        both = int.from_bytes(eligible, "big") & int.from_bytes(draw, "big")
        mask = bytearray(both.to_bytes(n, "big"))
    got = mask.count(_ONE)
    randbelow = rng.randrange
    while got < k:  # eligible but not chosen -> chosen
        i = randbelow(n)
        if eligible[i] == 1 and mask[i] == 0:
            mask[i] = 1
            got += 1
    while got > k:  # chosen -> not chosen
        i = randbelow(n)
        if mask[i] == 1:
            mask[i] = 0
            got -= 1
    return mask


def _indices(mask: bytes | bytearray) -> list[int]:
    out: list[int] = []
    find, pos = mask.find, 0
    while (pos := find(_ONE, pos)) >= 0:
        out.append(pos)
        pos += 1
    return out


def _initial_bitmap(audience: Audience) -> bytearray:
    universe, population = audience.universe_size, audience.population
    bits = bytearray(universe)
    if universe == 0:
        return bits
    rng = random.Random(f"lytics-audience:{audience.id}:{audience.seed}:{population}:{universe}")
    threshold = round(population / universe * 256)
    table = bytes(1 if b < threshold else 0 for b in range(256))
    for lo in range(0, universe, _CHUNK):
        hi = min(lo + _CHUNK, universe)
        bits[lo:hi] = rng.randbytes(hi - lo).translate(table)
    diff = population - bits.count(_ONE)
    if diff > 0:
        for i in _indices(_pick(bits, 0, diff, rng)):
            bits[i] = 1
    elif diff < 0:
        for i in _indices(_pick(bits, 1, -diff, rng)):
            bits[i] = 0
    return bits
