"""The plain fake Braze users (``SegmentSpec(realistic=False)``, the default): one dict per user.

Mildly awkward data: unicode names and cities, names and notes with commas, double quotes,
newlines and tabs, nulls and optional keys. One ``shake_256`` digest per user
(:func:`sandbox.braze_segment.digest`, first 96 bytes), one byte per small choice. The identity
knobs (missing / duplicate ids) come from :func:`sandbox.braze_segment.carried_id`; the
malformed-line knob is applied by :func:`sandbox.braze_users.export_lines`.

Imports nothing from ``include/`` or ``plugins/``.
"""

from __future__ import annotations

from datetime import date

from sandbox.braze_segment import SegmentSpec, carried_id, digest

__all__ = ["plain_user"]


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


def plain_user(spec: SegmentSpec, i: int) -> dict:
    """The i-th plain user (all fields); the caller has checked ``0 <= i < spec.size``.

    The missing-email, missing-id and duplicate-id knobs are applied here, the malformed-line
    knob only in the export (it concerns the line, not the user).
    """
    r = digest(spec, i, _DIGEST_LEN)

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
    external_id = carried_id(spec, i)[0]
    if external_id is not None:
        u["external_id"] = external_id
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
