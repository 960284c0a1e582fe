"""A fake Braze segment (:class:`SegmentSpec`) and who carries which ``external_id`` in its export.

Every user is a pure function of ``(segment_id, seed, i)`` plus the spec's knobs. Randomness comes
from ``hashlib.shake_256`` -- never from Python's ``hash()`` (randomised per process) and not from
``random.Random`` either: seeding a Mersenne Twister costs ~4 us per user, which alone would eat
half of the time budget for a 500,000-user export. The plain generator hashes the stable string
``f"{segment_id}:{seed}:{i}"`` per user (:func:`digest`); the realistic one, whose budget is
tighter, takes user ``i``'s 128 bytes from one digest per block of 64 users, over
``f"{segment_id}:{seed}:block{i // 64}"`` (:func:`realistic_bytes`).

Identity rules (shared by both generators and by the ground truth in :mod:`sandbox.braze_users`):

* The *natural* id of user ``i`` is ``f"{segment_id}-u{i:08d}"`` (:meth:`SegmentSpec.external_id`).
* A user with a **missing id** has no ``external_id`` key: every ``missing_id_every``-th user, and
  with ``realistic=True`` also ~2% of users drawn from the digest.
* A **duplicate** carries someone else's natural id, with otherwise different data:

  - ``duplicate_every=N``: every Nth user carries the natural id of the user just before it;
  - ``realistic=True``: ~0.5% of the users from index ``DUP_MIN_DISTANCE`` (5,000) on carry the
    natural id of an *earlier* user at least 5,000 positions back (uniform over all of them), so
    with any ``users_per_file`` <= 5,000 the first occurrence is in an earlier file and duplicates
    are spread over many files. The target is always a user whose own line carries its own id and
    parses (see :func:`realistic_target`).

* A **malformed** line (every ``malformed_every``-th) replaces the user's line with broken JSON.

Precedence: a malformed line replaces the user whatever else applies; a missing id beats a
duplicate; ``duplicate_every`` beats the realistic duplicate draw.

This module is "the other side" of the contract: it imports nothing from ``include/``/``plugins/``.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import lru_cache

__all__ = [
    "ALL_FIELDS",
    "DUP_MIN_DISTANCE",
    "SegmentSpec",
    "carried_id",
    "digest",
    "first_occurrence",
    "realistic_block",
    "realistic_bytes",
    "realistic_target",
]

# Top-level keys a generated user can carry, in the order they appear in an export line. The
# plain generator never writes phone, push_subscribe, custom_events or purchases.
ALL_FIELDS: tuple[str, ...] = (
    "external_id",
    "user_aliases",
    "braze_id",
    "first_name",
    "last_name",
    "email",
    "phone",
    "dob",
    "country",
    "home_city",
    "language",
    "time_zone",
    "gender",
    "created_at",
    "random_bucket",
    "email_subscribe",
    "push_subscribe",
    "custom_attributes",
    "custom_events",
    "purchases",
    "devices",
)

_SEGMENT_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")

DUP_MIN_DISTANCE = 5_000  # a realistic duplicate's first occurrence is at least this far back
REALISTIC_MISSING_ID = 1_311  # out of 65,536: ~2.0%
REALISTIC_DUPLICATE = 328  # out of 65,536: ~0.5%
DIGEST_LEN = 96  # bytes of shake_256 output per plain user
REALISTIC_LEN = 128  # random bytes per realistic user
BLOCK = 64  # realistic users per shake_256 call


def digest(spec: SegmentSpec, i: int, n: int = DIGEST_LEN) -> bytes:
    """The plain generator's per-user random bytes: ``shake_256(f"{segment_id}:{seed}:{i}")``."""
    return hashlib.shake_256(f"{spec.segment_id}:{spec.seed}:{i}".encode()).digest(n)


@lru_cache(maxsize=64)
def realistic_block(segment_id: str, seed: int, b: int) -> bytes:
    """The random bytes of realistic users ``64*b .. 64*b+63``, ``REALISTIC_LEN`` bytes each."""
    return hashlib.shake_256(f"{segment_id}:{seed}:block{b}".encode()).digest(BLOCK * REALISTIC_LEN)


def realistic_bytes(spec: SegmentSpec, i: int) -> bytes:
    """Realistic user ``i``'s ``REALISTIC_LEN`` random bytes."""
    off = (i % BLOCK) * REALISTIC_LEN
    return realistic_block(spec.segment_id, spec.seed, i // BLOCK)[off : off + REALISTIC_LEN]


@dataclass(frozen=True)
class SegmentSpec:
    """One fake Braze segment.

    Knobs (all counted on the 0-based user index ``i``; "every Nth" means ``i % N == N - 1``):

    * ``missing_email_share`` -- share of users without an ``email`` key.
    * ``missing_id_every=N`` -- every Nth user has no ``external_id`` key.
    * ``duplicate_every=N`` (N >= 2) -- every Nth user carries the external_id of the previous
      user (``f"{segment_id}-u{i-1:08d}"``) with otherwise different data.
    * ``malformed_every=N`` -- every Nth line of the export is a truncated, unparseable JSON
      line that replaces that user's line.
    * ``realistic`` -- generate the awkward, realistic data of :mod:`sandbox.braze_users_realistic`
      (many scripts, emoji, U+2028/U+2029, literal "null" strings, nested attributes, ~2% missing
      ids, ~0.5% far-back duplicates, a few KB-long fields). The knobs above apply on top.

    Precedence: a malformed line replaces the user whatever else applies; a missing id
    beats a duplicate id.
    """

    segment_id: str
    size: int
    name: str = ""
    seed: int = 0
    missing_email_share: float = 0.05
    missing_id_every: int = 0
    malformed_every: int = 0
    duplicate_every: int = 0
    realistic: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.segment_id, str) or not _SEGMENT_ID_RE.fullmatch(self.segment_id):
            raise ValueError(f"segment_id must match {_SEGMENT_ID_RE.pattern!r}, got {self.segment_id!r}")
        if not isinstance(self.size, int) or self.size < 0:
            raise ValueError(f"size must be an int >= 0, got {self.size!r}")
        if not 0.0 <= self.missing_email_share <= 1.0:
            raise ValueError(f"missing_email_share must be within [0, 1], got {self.missing_email_share!r}")
        for knob in ("missing_id_every", "malformed_every", "duplicate_every"):
            value = getattr(self, knob)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"{knob} must be an int >= 0, got {value!r}")
        if self.duplicate_every == 1:
            raise ValueError("duplicate_every must be 0 (off) or >= 2")
        if not isinstance(self.realistic, bool):
            raise ValueError(f"realistic must be a bool, got {self.realistic!r}")

    def external_id(self, i: int) -> str:
        """The natural external_id of user ``i`` (before the missing/duplicate knobs)."""
        return f"{self.segment_id}-u{i:08d}"

    def is_malformed(self, i: int) -> bool:
        n = self.malformed_every
        return n > 0 and i % n == n - 1


# --------------------------------------------------------------------------- identity
def _knob_missing(spec: SegmentSpec, i: int) -> bool:
    n = spec.missing_id_every
    return n > 0 and i % n == n - 1


def _knob_duplicate(spec: SegmentSpec, i: int) -> bool:
    n = spec.duplicate_every
    return n > 0 and i % n == n - 1


def _realistic_missing(r: bytes) -> bool:
    return (r[0] << 8 | r[1]) < REALISTIC_MISSING_ID


def _realistic_duplicate_drawn(i: int, r: bytes) -> bool:
    return i >= DUP_MIN_DISTANCE and (r[2] << 8 | r[3]) < REALISTIC_DUPLICATE


def _own_id_parses(spec: SegmentSpec, k: int) -> bool:
    """Whether user ``k``'s line parses and carries ``k``'s natural id (a valid duplicate target)."""
    if spec.is_malformed(k) or _knob_missing(spec, k) or _knob_duplicate(spec, k):
        return False
    if not spec.realistic:
        return True
    r = realistic_bytes(spec, k)
    return not _realistic_missing(r) and not _realistic_duplicate_drawn(k, r)


def realistic_target(spec: SegmentSpec, i: int, r: bytes) -> int | None:
    """The index whose natural id the realistic duplicate ``i`` carries (None: not a duplicate).

    Drawn uniformly from ``[0, i - DUP_MIN_DISTANCE]``, then walked back to the nearest user whose
    own line parses and carries its own id, so the target is always the id's first occurrence.
    """
    if not spec.realistic or not _realistic_duplicate_drawn(i, r):
        return None
    k = int.from_bytes(r[4:8], "big") % (i - DUP_MIN_DISTANCE + 1)
    while k >= 0 and not _own_id_parses(spec, k):
        k -= 1
    return k if k >= 0 else None


def carried_id(spec: SegmentSpec, i: int, r: bytes | None = None) -> tuple[str | None, int | None]:
    """``(external_id or None, index whose natural id it is)`` for user ``i``'s line.

    ``r`` is the user's :func:`realistic_bytes` (computed if not given; only the realistic draws
    read it).
    """
    if _knob_missing(spec, i):
        return None, None
    if spec.realistic:
        if r is None:
            r = realistic_bytes(spec, i)
        if _realistic_missing(r):
            return None, None
    if _knob_duplicate(spec, i):
        return spec.external_id(i - 1), i - 1
    if spec.realistic:
        k = realistic_target(spec, i, r)
        if k is not None:
            return spec.external_id(k), k
    return spec.external_id(i), i


def first_occurrence(spec: SegmentSpec, k: int) -> int:
    """The export index where the natural id of user ``k`` first appears on a parseable line.

    Callers guarantee some parseable line carries it. Only ``k`` itself or a ``duplicate_every``
    duplicate right after it can come first: realistic duplicates only target users whose own
    line carries their own id.
    """
    return k if _own_id_parses(spec, k) else k + 1
