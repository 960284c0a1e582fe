"""Deterministic fake Braze users for the Braze sandbox.

Every user is a pure function of ``(segment_id, seed, i)`` (plus the knobs of its
:class:`SegmentSpec`): the same spec always yields byte-identical exports, in any process,
on any machine. Randomness comes from ``hashlib.shake_256`` over the stable string
``f"{segment_id}:{seed}:{i}"`` -- never from Python's ``hash()`` (randomised per process)
and not from ``random.Random`` either: seeding a Mersenne Twister costs ~4 us per user,
which alone would eat half of the time budget for a 500,000-user export.

The data is deliberately awkward for consumers: unicode names and cities, names and
notes with commas, double quotes, newlines and tabs, nulls, optional keys, and -- through
the knobs -- users without ``external_id``, duplicated ``external_id`` values and broken
JSON lines.

This module is "the other side" of the contract: it imports nothing from ``include/`` or
``plugins/``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import date

import orjson

__all__ = ["ALL_FIELDS", "SegmentSpec", "expected_users", "export_lines", "user"]

# Top-level keys a generated user can carry, in the order they appear in an export line.
ALL_FIELDS: tuple[str, ...] = (
    "external_id",
    "user_aliases",
    "braze_id",
    "first_name",
    "last_name",
    "email",
    "dob",
    "country",
    "home_city",
    "language",
    "time_zone",
    "gender",
    "created_at",
    "random_bucket",
    "email_subscribe",
    "custom_attributes",
    "devices",
)

_SEGMENT_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


@dataclass(frozen=True)
class SegmentSpec:
    """One fake Braze segment.

    Knobs (all counted on the 0-based user index ``i``; "every Nth" means
    ``i % N == N - 1``):

    * ``missing_email_share`` -- share of users without an ``email`` key.
    * ``missing_id_every=N`` -- every Nth user has no ``external_id`` key.
    * ``duplicate_every=N`` (N >= 2) -- every Nth user carries the external_id of the previous
      user (``f"{segment_id}-u{i-1:08d}"``) with otherwise different data.
    * ``malformed_every=N`` -- every Nth line of the export is a truncated, unparseable JSON
      line that replaces that user's line.

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

    def external_id(self, i: int) -> str:
        """The natural external_id of user ``i`` (before the missing/duplicate knobs)."""
        return f"{self.segment_id}-u{i:08d}"

    def is_malformed(self, i: int) -> bool:
        n = self.malformed_every
        return n > 0 and i % n == n - 1


# --------------------------------------------------------------------------- vocabulary
# (display name, ascii slug for e-mail addresses)
_FIRST_NAMES: tuple[tuple[str, str], ...] = (
    ("James", "james"),
    ("Mary", "mary"),
    ("Olivia", "olivia"),
    ("Liam", "liam"),
    ("Noah", "noah"),
    ("Emma", "emma"),
    ("Ava", "ava"),
    ("Lucas", "lucas"),
    ("Sophia", "sophia"),
    ("Mia", "mia"),
    ("Ethan", "ethan"),
    ("Amelia", "amelia"),
    ("José", "jose"),
    ("Zoë", "zoe"),
    ("Łukasz", "lukasz"),
    ("Jürgen", "jurgen"),
    ("François", "francois"),
    ("Søren", "soren"),
    ("Ángela", "angela"),
    ("Chloé", "chloe"),
    ("伟", "wei"),
    ("さくら", "sakura"),
    ("Priya", "priya"),
    ("Mohammed", "mohammed"),
    ("Anne-Marie", "anne-marie"),
    ("Mary Ann", "mary.ann"),
    ('The "Rock"', "the.rock"),
    ("D'Andre", "dandre"),
    ("Siobhán", "siobhan"),
    ("Björk", "bjork"),
    ("Nguyễn", "nguyen"),
    ("Oliver", "oliver"),
    ("Isla", "isla"),
    ("Mateo", "mateo"),
    ("Elif", "elif"),
    ("Kai", "kai"),
)
_LAST_NAMES: tuple[tuple[str, str], ...] = (
    ("Smith", "smith"),
    ("Johnson", "johnson"),
    ("Williams", "williams"),
    ("Brown", "brown"),
    ("Jones", "jones"),
    ("Garcia", "garcia"),
    ("Miller", "miller"),
    ("Davis", "davis"),
    ("Müller", "mueller"),
    ("Schröder", "schroeder"),
    ("Kowalczyk", "kowalczyk"),
    ("García Márquez", "garcia.marquez"),
    ("O'Brien", "obrien"),
    ("Smith, Jr.", "smith.jr"),
    ("van der Berg", "vanderberg"),
    ("李", "li"),
    ("佐藤", "sato"),
    ("Dubois", "dubois"),
    ("Østergaard", "ostergaard"),
    ("Nowak", "nowak"),
    ("Rossi", "rossi"),
    ("Silva", "silva"),
    ("Patel", "patel"),
    ("Kim", "kim"),
    ("Wilson, III", "wilson.iii"),
    ("Nakamura", "nakamura"),
    ("Ferreira", "ferreira"),
    ("Yılmaz", "yilmaz"),
    ("Doe", "doe"),
    ("Taylor", "taylor"),
    ("Anderson", "anderson"),
    ("Thomas", "thomas"),
)
_EMAIL_DOMAINS = ("example.com", "example.org", "example.net", "mail.example", "inbox.example")

# (country, home_city, language, time_zone)
_PLACES: tuple[tuple[str, str, str, str], ...] = (
    ("US", "New York", "en", "America/New_York"),
    ("US", "San Francisco", "en", "America/Los_Angeles"),
    ("US", "Chicago", "en", "America/Chicago"),
    ("US", "Washington, D.C.", "en", "America/New_York"),
    ("GB", "London", "en", "Europe/London"),
    ("GB", "Manchester", "en", "Europe/London"),
    ("IE", "Dún Laoghaire", "en", "Europe/Dublin"),
    ("DE", "München", "de", "Europe/Berlin"),
    ("DE", "Köln", "de", "Europe/Berlin"),
    ("FR", "Paris", "fr", "Europe/Paris"),
    ("ES", "Málaga", "es", "Europe/Madrid"),
    ("BR", "São Paulo", "pt", "America/Sao_Paulo"),
    ("PL", "Łódź", "pl", "Europe/Warsaw"),
    ("NL", "'s-Hertogenbosch", "nl", "Europe/Amsterdam"),
    ("CN", "北京", "zh", "Asia/Shanghai"),
    ("JP", "東京", "ja", "Asia/Tokyo"),
    ("MX", "Ciudad de México", "es", "America/Mexico_City"),
    ("CA", "Montréal", "fr", "America/Toronto"),
    ("AU", "Sydney", "en", "Australia/Sydney"),
    ("IN", "Bengaluru", "en", "Asia/Kolkata"),
    ("TR", "İstanbul", "tr", "Europe/Istanbul"),
)
_EMOJI = ("🎉", "🦄", "🌮", "☕", "👩‍💻")
_GENDERS = ("M", "F", "M", "F", "M", "F", "O", "N", "P")
_EMAIL_SUBSCRIBE = ("opted_in", "subscribed", "subscribed", "subscribed", "unsubscribed")
_TIERS = ("bronze", "bronze", "bronze", "silver", "silver", "gold", "platinum")
_STORES = (
    None,
    None,
    "Downtown",
    "Airport T2",
    "Mall of the Americas",
    "Kurfürstendamm",
    "Les Halles",
    "Shibuya 109",
    "Store #12, Main St.",
    'The "Flagship"',
)
# {n} is replaced by a per-user number so notes are not all identical.
_NOTES = (
    "Prefers e-mail over SMS",
    "Called support, asked about refund #{n}",
    'Said "thanks!" at checkout',
    "First line\nsecond line",
    'Wrote: "ship it, please"\nthen hung up',
    "Loves café au lait ☕ (order {n})",
    "",
    "  padded with spaces  ",
    "Tab\tseparated\tnote",
    "Windows line\r\nending",
    "Path C:\\temp\\{n}.txt",
    "=1+{n}",
    "Birthday in März, gift card #{n}",
    "plain note {n}",
    "plain note",
    "VIP; do not disturb",
)
_DEVICES = (
    ("iPhone 15", "iOS 17.4"),
    ("iPhone 13", "iOS 16.7.2"),
    ("iPhone SE (3rd generation)", "iOS 17.1"),
    ("Pixel 8", "Android 14"),
    ("SM-S918B", "Android 14"),
    ("moto g(30)", "Android 12"),
    ("iPad Pro (11-inch)", "iPadOS 17.3"),
    ("SM-A546B", "Android 13"),
)
_CARRIERS = ("Verizon", "T-Mobile", "AT&T", "Vodafone", "O2 - DE", "Orange F", "Telekom.de", None)
_ALIAS_LABELS = ("lytics_id", "legacy_crm_id", "shopify_customer_id")

_DOB_FIRST = date(1950, 1, 1).toordinal()
_DOBS = tuple(date.fromordinal(o).isoformat() for o in range(_DOB_FIRST, date(2007, 12, 31).toordinal() + 1))
_CREATED_DAYS = tuple(
    date.fromordinal(o).isoformat()
    for o in range(date(2019, 1, 1).toordinal(), date(2025, 12, 31).toordinal() + 1)
)
_D2 = tuple(f"{k:02d}" for k in range(100))
_D3 = tuple(f"{k:03d}" for k in range(1000))
_ALIAS_COUNTS = (0, 0, 0, 1, 1, 1, 2)
_DEVICE_COUNTS = (0, 1, 1, 1, 1, 2, 2)

# Byte layout of the per-user digest (one shake_256 call per user; a byte per small choice,
# the tiny modulo bias is irrelevant here).
_DIGEST_LEN = 96


def _uuid_upper(b: bytes) -> str:
    h = b.hex().upper()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


def user(spec: SegmentSpec, i: int) -> dict:
    """The i-th user of the segment, as Braze's segment export would show it (all fields).

    Pure function of ``(spec.segment_id, spec.seed, i)`` and the spec's knobs; the
    missing-email, missing-id and duplicate-id knobs are applied here, the malformed-line
    knob only in :func:`export_lines` (it concerns the line, not the user).
    """
    if not 0 <= i < spec.size:
        raise IndexError(f"user index {i} out of range for segment of size {spec.size}")
    r = hashlib.shake_256(f"{spec.segment_id}:{spec.seed}:{i}".encode()).digest(_DIGEST_LEN)

    first, first_slug = _FIRST_NAMES[r[44] % len(_FIRST_NAMES)]
    last, last_slug = _LAST_NAMES[r[45] % len(_LAST_NAMES)]
    if r[46] == 0 and r[47] < 128:  # ~1 in 512
        first = f"{first} {_EMOJI[r[47] % len(_EMOJI)]}"
    country, city, language, tz = _PLACES[r[48] % len(_PLACES)]

    aliases = []
    for k in range(_ALIAS_COUNTS[r[64] % len(_ALIAS_COUNTS)]):
        o = 65 + 6 * k
        label = _ALIAS_LABELS[(r[o] + k) % len(_ALIAS_LABELS)]
        aliases.append({"alias_name": f"{label[:3]}_{r[o + 1 : o + 6].hex()}", "alias_label": label})

    devices = []
    for k in range(_DEVICE_COUNTS[r[78] % len(_DEVICE_COUNTS)]):
        model, os_ = _DEVICES[r[79 + 2 * k] % len(_DEVICES)]
        devices.append(
            {
                "model": model,
                "os": os_,
                "carrier": _CARRIERS[r[80 + 2 * k] % len(_CARRIERS)],
                "idfv": _uuid_upper(r[12 + 16 * k : 28 + 16 * k]),
            }
        )

    u: dict = {}
    n_missing = spec.missing_id_every
    n_dup = spec.duplicate_every
    if not (n_missing and i % n_missing == n_missing - 1):
        if n_dup and i % n_dup == n_dup - 1:
            u["external_id"] = f"{spec.segment_id}-u{i - 1:08d}"
        else:
            u["external_id"] = f"{spec.segment_id}-u{i:08d}"
    u["user_aliases"] = aliases
    u["braze_id"] = r[:12].hex()
    u["first_name"] = first
    u["last_name"] = last
    if (r[49] << 16 | r[50] << 8 | r[51]) >= spec.missing_email_share * 16_777_216:
        u["email"] = f"{first_slug}.{last_slug}.{i}@{_EMAIL_DOMAINS[r[52] % len(_EMAIL_DOMAINS)]}"
    u["dob"] = _DOBS[(r[53] << 8 | r[54]) % len(_DOBS)]
    u["country"] = country
    u["home_city"] = city
    u["language"] = language
    u["time_zone"] = tz
    u["gender"] = _GENDERS[r[83] % len(_GENDERS)]
    u["created_at"] = (
        f"{_CREATED_DAYS[(r[55] << 8 | r[56]) % len(_CREATED_DAYS)]}T{_D2[r[57] % 24]}:{_D2[r[58] % 60]}:"
        f"{_D2[r[59] % 60]}.{_D3[(r[60] << 8 | r[61]) % 1000]}Z"
    )
    u["random_bucket"] = (r[84] << 8 | r[85]) % 10_000
    u["email_subscribe"] = _EMAIL_SUBSCRIBE[r[86] % len(_EMAIL_SUBSCRIBE)]
    note = _NOTES[r[62] % len(_NOTES)]
    if "{n}" in note:
        note = note.replace("{n}", str(r[63] << 4 | r[92] & 15))
    u["custom_attributes"] = {
        "tier": _TIERS[r[87] % len(_TIERS)],
        "loyalty_points": (r[88] << 16 | r[89] << 8 | r[90]) % 100_000,
        "vip": r[91] < 26,
        "favourite_store": _STORES[r[93] % len(_STORES)],
        "note": note,
    }
    u["devices"] = devices
    return u


def _restrict(u: dict, fields: frozenset[str] | None) -> dict:
    if fields is None:
        return u
    return {k: v for k, v in u.items() if k in fields}


def _fieldset(fields: Iterable[str] | None) -> frozenset[str] | None:
    if fields is None:
        return None
    if isinstance(fields, str):
        raise TypeError("fields must be a list of field names, not a string")
    return frozenset(fields)


def _malformed(line: bytes) -> bytes:
    """A truncated copy of a JSON line: never valid JSON, still valid UTF-8, one line."""
    cut = line[: max(1, (len(line) - 1) // 2)]
    return cut.decode("utf-8", "ignore").encode() + b"\n"


def export_lines(spec: SegmentSpec, fields: list[str] | None) -> Iterator[bytes]:
    """NDJSON lines (each ending in ``b"\\n"``) of the segment export, users 0..size-1.

    Each user is restricted to the requested top-level ``fields`` (None = all); knobs applied.
    """
    fieldset = _fieldset(fields)
    dumps = orjson.dumps
    n_bad = spec.malformed_every
    for i in range(spec.size):
        line = dumps(_restrict(user(spec, i), fieldset), option=orjson.OPT_APPEND_NEWLINE)
        if n_bad and i % n_bad == n_bad - 1:
            line = _malformed(line)
        yield line


def expected_users(spec: SegmentSpec, fields: list[str] | None) -> Iterator[dict | None]:
    """The parsed users of :func:`export_lines`, in order; ``None`` where the line is malformed."""
    fieldset = _fieldset(fields)
    for i in range(spec.size):
        yield None if spec.is_malformed(i) else _restrict(user(spec, i), fieldset)
