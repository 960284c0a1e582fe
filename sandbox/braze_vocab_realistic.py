"""Vocabulary of the realistic fake Braze users (:mod:`sandbox.braze_users_realistic`).

Text in many scripts -- Latin with diacritics, Cyrillic, Greek, Arabic, Hebrew, CJK (Chinese,
Japanese, Korean), Devanagari, Thai, Georgian, Tamil -- plus the values that break naive
consumers: emoji (skin tones, ZWJ sequences, flags), U+2028/U+2029/U+0085 (line breaks for
``str.splitlines`` and JavaScript, raw bytes inside a JSON string), zero-width and bidi marks,
combining accents (NFD), a BOM, quotes, commas, CR/LF and tabs, spreadsheet formulas, and the
literal strings "null", "NULL", "None", "N/A" and ``\\N``. Items are ``(value, weight)``; weights
are relative within a list.

:func:`slots` turns the vocabulary into 4,096-slot tables of pre-encoded JSON fragments (drawn with
the weights from fixed seeds, every value present at least once) for the generator.
Imports nothing from ``include/`` or ``plugins/``.
"""

from __future__ import annotations

import random
from datetime import date
from functools import cache

import orjson

# fmt: off
__all__ = [
    "ALIAS_LABELS", "CARRIERS", "COUNTRY_CODES", "DEVICES", "DOMAINS", "EVENT_NAMES", "FIRST_NAMES",
    "INTERESTS", "LAST_NAMES", "LONG_BLOCK", "NOTES", "PLACES", "PRODUCTS", "SLOTS", "STREETS", "group", "kv",
    "slots",
]

# (display name, ascii slug for e-mail addresses), weight
FIRST_NAMES: tuple[tuple[tuple[str, str], int], ...] = (
    *(((n, s), 40) for n, s in (
        ("James", "james"), ("Mary", "mary"), ("Olivia", "olivia"), ("Liam", "liam"), ("Noah", "noah"),
        ("Emma", "emma"), ("Lucas", "lucas"), ("Sophia", "sophia"), ("Mateo", "mateo"), ("Isla", "isla"),
    )),
    *(((n, s), 25) for n, s in (
        ("José", "jose"), ("Zoë", "zoe"), ("Łukasz", "lukasz"), ("Jürgen", "jurgen"), ("François", "francois"),
        ("Søren", "soren"), ("Ángela", "angela"), ("Siobhán", "siobhan"), ("Björk", "bjork"), ("Þórunn", "thorunn"),
        ("Çağla", "cagla"), ("Đorđe", "djordje"), ("Žofie", "zofie"), ("Ngọc Ánh", "ngoc.anh"), ("Dženana", "dzenana"),
        ("Алексей", "aleksey"), ("Мария", "mariya"), ("Дмитрий", "dmitriy"), ("Ольга", "olga"), ("Сергій", "serhiy"),
        ("Γιώργος", "giorgos"), ("Ελένη", "eleni"), ("Αθανάσιος", "athanasios"),
        ("محمد", "mohammed"), ("فاطمة", "fatima"), ("عبد الله", "abdullah"),
        ("דוד", "david"), ("שרה", "sara"), ("יעל", "yael"),
        ("伟", "wei"), ("芳", "fang"), ("さくら", "sakura"), ("翔太", "shota"), ("지민", "jimin"), ("서연", "seoyeon"),
        ("प्रिया", "priya"), ("अर्जुन", "arjun"), ("आदित्य", "aditya"),
        ("สมชาย", "somchai"), ("สุดา", "suda"), ("ნინო", "nino"), ("கார்த்திக்", "karthik"),
    )),
    *(((n, s), 8) for n, s in (
        ("Mary Ann", "mary.ann"), ('The "Rock"', "the.rock"), ("D'Andre", "dandre"), ("Anne-Marie", "anne-marie"),
        ("Kai 🏄\u200d♂️", "kai"), ("Léa 🇫🇷", "lea"), ("Ana 👍🏽", "ana"), ("Sam 👨\u200d👩\u200d👧\u200d👦", "sam"),
        ("Zoe\u0308", "zoe"), ("\u200fשרה", "sara"), ("Li\u200bna", "lina"), ("\ufeffEmma", "emma"),
        ("  Padded  ", "padded"), ("Tab\tbed", "tabbed"), ("Zoë\u2028Line", "zoe"), ("Ali\u0085", "ali"),
    )),
    *(((n, s), 4) for n, s in (("null", "null"), ("NULL", "null"), ("None", "none"), ("N/A", "na"), ("", "anon"))),
)

LAST_NAMES: tuple[tuple[tuple[str, str], int], ...] = (
    *(((n, s), 40) for n, s in (
        ("Smith", "smith"), ("Johnson", "johnson"), ("Brown", "brown"), ("Garcia", "garcia"), ("Miller", "miller"),
        ("Taylor", "taylor"), ("Wilson", "wilson"), ("Anderson", "anderson"),
    )),
    *(((n, s), 25) for n, s in (
        ("Müller", "mueller"), ("Schröder", "schroeder"), ("García Márquez", "garcia.marquez"),
        ("Østergaard", "ostergaard"), ("Yılmaz", "yilmaz"), ("Nguyễn", "nguyen"), ("Kowalczyk", "kowalczyk"),
        ("Иванов", "ivanov"), ("Шевченко", "shevchenko"), ("Παπαδόπουλος", "papadopoulos"),
        ("العلي", "alali"), ("كريم", "karim"), ("כהן", "cohen"), ("לוי", "levi"),
        ("李", "li"), ("王", "wang"), ("佐藤", "sato"), ("김", "kim"), ("शर्मा", "sharma"), ("ศรีสุข", "srisuk"),
        ("გელაშვილი", "gelashvili"),
    )),
    *(((n, s), 8) for n, s in (
        ("O'Brien", "obrien"), ("Smith, Jr.", "smith.jr"), ("Wilson, III", "wilson.iii"), ("van der Berg", "vanderberg"),
        ("de la Cruz", "delacruz"), ('"Nick" Jones', "jones"), ("Smith\t", "smith"), ("Lee\u2029", "lee"),
        ("Müller 🇩🇪", "mueller"), ("Null", "null"),
    )),
    *(((n, s), 4) for n, s in (("null", "null"), ("NULL", "null"), ("None", "none"), ("\\N", "n"))),
)

# (country, home_city, language, time_zone), weight
PLACES: tuple[tuple[tuple[str, str, str | None, str | None], int], ...] = (
    *((p, 30) for p in (
        ("US", "New York", "en", "America/New_York"), ("US", "San Francisco", "en", "America/Los_Angeles"),
        ("GB", "London", "en", "Europe/London"), ("DE", "München", "de", "Europe/Berlin"),
        ("FR", "Saint-Étienne", "fr", "Europe/Paris"), ("BR", "São Paulo", "pt", "America/Sao_Paulo"),
    )),
    *((p, 15) for p in (
        ("US", "Washington, D.C.", "en", "America/New_York"), ("PL", "Łódź", "pl", "Europe/Warsaw"),
        ("IS", "Reykjavík", "is", "Atlantic/Reykjavik"), ("TR", "İstanbul", "tr", "Europe/Istanbul"),
        ("VN", "Hà Nội", "vi", "Asia/Ho_Chi_Minh"), ("NL", "'s-Hertogenbosch", "nl", "Europe/Amsterdam"),
        ("RU", "Москва", "ru", "Europe/Moscow"), ("UA", "Київ", "uk", "Europe/Kyiv"),
        ("GR", "Αθήνα", "el", "Europe/Athens"), ("EG", "القاهرة", "ar", "Africa/Cairo"),
        ("SA", "الرياض", "ar", "Asia/Riyadh"), ("IL", "תל אביב-יפו", "he", "Asia/Jerusalem"),
        ("CN", "北京", "zh", "Asia/Shanghai"), ("JP", "東京", "ja", "Asia/Tokyo"), ("KR", "서울", "ko", "Asia/Seoul"),
        ("IN", "मुंबई", "hi", "Asia/Kolkata"), ("TH", "กรุงเทพมหานคร", "th", "Asia/Bangkok"),
        ("GE", "თბილისი", "ka", "Asia/Tbilisi"), ("IN", "சென்னை", "ta", "Asia/Kolkata"),
        ("MX", "Ciudad de México", "es", "America/Mexico_City"), ("CA", "Montréal", "fr", "America/Toronto"),
    )),
    *((p, 3) for p in (
        ("US", "NULL", "en", "America/Chicago"), ("GB", "None", "en", "Europe/London"),
        ("FR", "Paris\u2029Cedex 08", "fr", "Europe/Paris"), ("US", "Springfield\u2028(IL)", None, None),
        ("DE", "Köln\r\nPorz", "de", None), ("ZZ", "", None, None),
    )),
)

NOTES: tuple[tuple[str, int], ...] = (
    *((n, 10) for n in (
        "Prefers e-mail over SMS", "Called support, asked about refund #{n}", 'Said "thanks!" at checkout',
        "First line\nsecond line", "Windows line\r\nending", "CR\ronly", "Tab\tseparated\tnote", "plain note {n}",
        "Loves café au lait ☕ (order {n})", "Позвонить после 18:00, «срочно»", "Ελάτε ξανά! Ευχαριστώ.",
        "شكراً لك، سأعود غداً", "תודה רבה, להתראות", "请在周末联系我。\n谢谢！", "週末に連絡してください",
        "주말에 연락 주세요", "कृपया ईमेल करें, धन्यवाद", "ขอบคุณครับ, แล้วพบกันใหม่", "🎉🦄 party of {n} 👨\u200d👩\u200d👧\u200d👦",
        "Flags 🇯🇵🇧🇷🏳️\u200d🌈 and keycap #️⃣", "Line\u2028separator inside", "Paragraph\u2029separator inside",
        "NEL\u0085inside", "VIP; do not disturb", "  padded with spaces  ", "",
    )),
    *((n, 3) for n in (
        "null", "NULL", "None", "N/A", "\\N", "=1+{n}", '=HYPERLINK("http://example.com","x")', "@SUM(A1:A9)",
        "-{n}", "+{n}", "\ufeffBOM at the start", "zero\u200bwidth\u200bspaces", "Path C:\\temp\\{n}.txt",
        'nested "quotes" and \'apostrophes\', commas, and a\ttab', "a,b,c,\"d\"", "</script><b>html</b> & amp;",
        "Birthday in März, gift card #{n}", "mixed: José 李 Иван 🇺🇦 שלום مرحبا नमस्ते สวัสดี",
    )),
)

STORES: tuple[tuple[str | None, int], ...] = (
    (None, 30), ("Downtown", 10), ("Airport T2", 10), ("Kurfürstendamm", 8), ("Les Halles", 8),
    ("Shibuya 109", 8), ("Store #12, Main St.", 6), ('The "Flagship"', 6), ("ГУМ, Москва", 6),
    ("תל אביב, דיזנגוף", 4), ("null", 2), ("None", 2),
)
INTERESTS: tuple[str, ...] = (
    "tennis 🎾", "jazz", "K-pop", "café", "yoga", "football", "cricket", "анимэ", "ποδόσφαιρο", "الطبخ",
    "צילום", "摄影", "料理", "등산", "योग", "มวยไทย", "null", "None", "a,b", 'say "hi"', "line\nbreak", "",
)
STREETS: tuple[str, ...] = (
    "1 Main St.", "Königsallee 12", "ул. Тверская, д. 7, кв. 15", "Οδός Ερμού 5", "شارع التحرير 10",
    "רחוב הרצל 3", "東京都渋谷区1-2-3", "서울특별시 강남구 테헤란로 1", "MG Road, मुंबई", "ถนนสุขุมวิท 21",
    "Apt 4B\n221B Baker Street", "Rua Augusta, 1500\tfundos",
)
PRODUCTS: tuple[str, ...] = (
    "T-shirt (M)", 'Poster 24"x36"', "Café 250 g", "Чайник", "Καφές", "قهوة", "קפה", "咖啡豆", "抹茶",
    "김치", "चाय", "ชาไทย", "Gift card 🎁", "Bundle: A, B & C",
)
EVENT_NAMES: tuple[str, ...] = (
    "viewed_product", "added_to_cart", "checkout started", "app.opened", "Übung abgeschlossen", "просмотр",
    "📈 level up", "null",
)
DOMAINS: tuple[str, ...] = (
    "example.com", "example.org", "example.net", "mail.example", "inbox.example", "exämple.com",
    "EXAMPLE.COM", "example.co.uk",
)
COUNTRY_CODES: tuple[str, ...] = ("1", "44", "49", "33", "7", "30", "20", "972", "86", "81", "82", "91", "66", "55")
DEVICES: tuple[tuple[str, str], ...] = (
    ("iPhone 15", "iOS 17.4"), ("iPhone 13", "iOS 16.7.2"), ("iPhone SE (3rd generation)", "iOS 17.1"),
    ("Pixel 8", "Android 14"), ("SM-S918B", "Android 14"), ("moto g(30)", "Android 12"),
    ("iPad Pro (11-inch)", "iPadOS 17.3"), ("Redmi Note 12", "Android 13"),
)
CARRIERS: tuple[str | None, ...] = (
    "Verizon", "T-Mobile", "AT&T", "Vodafone", "O2 - DE", "Orange F", "МТС", "中国移动", "SK텔레콤", "AIS", None, "",
)
ALIAS_LABELS: tuple[str, ...] = ("lytics_id", "legacy_crm_id", "shopify_customer_id", "amplitude id")

# Repeated (and cut) to make the occasional multi-KB field; every script appears in it.
LONG_BLOCK = (
    "Lorem ipsum, dolor \"sit\" amet;\tconsectetur\r\n"
    "Съешь же ещё этих мягких французских булок, да выпей чаю. "
    "Ξεσκεπάζω την ψυχοφθόρα βδελυγμία. "
    "نص حكيم له سر قاطع وذو شأن عظيم. "
    "עטלף אבק נס דרך מזגן שהתפוצץ כי חם. "
    "我能吞下玻璃而不伤身体。いろはにほへと 다람쥐 헌 쳇바퀴에 타고파. "
    "ऋषियों को सताने वाले दुष्ट राक्षसों के राजा रावण का सर्वनाश करने वाले विष्णुवतार भगवान श्रीराम. "
    "เป็นมนุษย์สุดประเสริฐเลิศคุณค่า 👨\u200d👩\u200d👧 🇧🇷\u2028next\u2029para\n"
)
# fmt: on


# --------------------------------------------------------------------------- weighted slot tables
SLOTS = 4096  # weighted tables are indexed with 12 bits


def _j(v) -> bytes:
    return orjson.dumps(v)


def _table(items, seed: int) -> tuple:
    """A ``SLOTS``-long tuple of ``items``' values drawn with their weights; every value present."""
    rng = random.Random(seed)
    values = [v for v, _ in items]
    slots = rng.choices(values, weights=[w for _, w in items], k=SLOTS)
    for k, pos in enumerate(rng.sample(range(SLOTS), len(values))):
        slots[pos] = values[k]
    return tuple(slots)


def kv(key: str, value) -> bytes:
    """``b'"key":value'``, JSON-encoded."""
    return _j(key) + b":" + _j(value)


def _nested(rng: random.Random) -> bytes:
    """Extra ``custom_attributes`` keys (with a leading comma), or b"" for none."""
    d: dict = {}
    if rng.random() < 0.6:
        d["interests"] = rng.sample(INTERESTS, rng.randint(0, 5))
    if rng.random() < 0.3:
        d["lucky_numbers"] = [
            rng.choice((0, 7, -1, 3.5, 1e-7, 2**31, 9_007_199_254_740_993)) for _ in range(3)
        ]
    if rng.random() < 0.5:
        d["address"] = {
            "street": rng.choice(STREETS),
            "postcode": f"{rng.randint(0, 99999):05d}",
            "geo": {"lat": round(rng.uniform(-90, 90), 6), "lon": round(rng.uniform(-180, 180), 6)},
            "unit": None,
        }
    if rng.random() < 0.4:
        d["orders"] = [
            {
                "id": f"A-{rng.randint(1, 99999)}",
                "total": round(rng.uniform(0, 500), 2),
                "currency": rng.choice(("EUR", "USD", "JPY", "ILS")),
                "items": rng.sample(PRODUCTS, rng.randint(1, 3)),
                "gift": rng.choice((None, True, False)),
            }
            for _ in range(rng.randint(0, 3))
        ]
    if rng.random() < 0.3:
        d["preferences"] = {
            "channels": {"email": rng.random() < 0.5, "sms": rng.random() < 0.5},
            "quiet_hours": ["22:00", "07:00"],
            "tags": [],
        }
    if rng.random() < 0.2:
        d["nickname"] = rng.choice(("null", "NULL", "None", "", "Bubbles 🫧", "«Сашa»"))
    if rng.random() < 0.05:
        d["meta"] = {}
    return b"," + _j(d)[1:-1] if d else b""


def _events(rng: random.Random, key: str, names) -> bytes | None:
    if rng.random() < 0.3:
        return None
    items = []
    for _ in range(rng.randint(0, 3)):
        first = date(2024, 1, 1).toordinal() + rng.randint(0, 600)
        last = first + rng.randint(0, 90)
        items.append(
            {
                "name": rng.choice(names),
                "first": f"{date.fromordinal(first).isoformat()}T{rng.randint(0, 23):02d}:00:00.000Z",
                "last": f"{date.fromordinal(last).isoformat()}T{rng.randint(0, 23):02d}:30:00.000Z",
                "count": rng.randint(1, 500),
            }
        )
    return kv(key, items)


@cache
def slots() -> dict:
    """Mask-independent, per-slot values: ``{group: [ {field: b'"key":value' or None}, ... ]}``.

    Built once per process (~0.2 s) from fixed seeds; each group has ``SLOTS`` slots.
    """
    rng = random.Random(20261123)
    first, last = _table(FIRST_NAMES, 1), _table(LAST_NAMES, 2)
    places, notes, stores = _table(PLACES, 3), _table(NOTES, 4), _table(STORES, 5)
    genders = ("M", "F", "M", "F", "M", "F", "O", "N", "P", "U", None)
    subs = ("opted_in", "subscribed", "subscribed", "subscribed", "unsubscribed")
    events = [_events(rng, "custom_events", EVENT_NAMES) for _ in range(512)]
    purchases = [_events(rng, "purchases", PRODUCTS) for _ in range(512)]
    g: dict = {"names": [], "slugs": [], "place": [], "subs": [], "activity": [], "ca_rest": []}
    for k in range(SLOTS):
        (fn, fs), (ln, ls) = first[k], last[rng.randrange(SLOTS)]
        g["names"].append({"first_name": kv("first_name", fn), "last_name": kv("last_name", ln)})
        g["slugs"].append((fs.encode(), ls.encode()))
        country, city, lang, tz = places[k]
        g["place"].append(
            {
                "country": kv("country", country),
                "home_city": kv("home_city", city),
                "language": kv("language", lang),
                "time_zone": kv("time_zone", tz),
                "gender": kv("gender", rng.choice(genders)),
            }
        )
        push = rng.choice((*subs, None, None))
        g["subs"].append(
            {
                "email_subscribe": kv("email_subscribe", rng.choice(subs)),
                "push_subscribe": None if push is None else kv("push_subscribe", push),
            }
        )
        g["activity"].append({"custom_events": rng.choice(events), "purchases": rng.choice(purchases)})
        note = notes[rng.randrange(SLOTS)].replace("{n}", str(rng.randrange(100_000)))
        g["ca_rest"].append(
            b',"vip":'
            + _j(rng.random() < 0.1)
            + b',"favourite_store":'
            + _j(stores[k])
            + b","
            + kv("note", note)
            + _nested(rng)
            + b"}"
        )
    g["ca_long"] = [  # ~0.2% of users: a 2,000-8,000 character note
        b',"vip":false,"favourite_store":null,'
        + kv("note", (LONG_BLOCK * 40)[: rng.randint(2_000, 8_000)])
        + b"}"
        for _ in range(16)
    ]
    return g


def group(slots: list[dict], want: frozenset[str]) -> tuple[bytes, ...]:
    """Per slot, the wanted fields' fragments, each with a leading comma, joined (b"": none)."""
    return tuple(b"".join(b"," + v for f, v in slot.items() if f in want and v is not None) for slot in slots)
