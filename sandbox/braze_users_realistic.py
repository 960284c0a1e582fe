"""Realistic fake Braze users (``SegmentSpec(realistic=True)``), assembled as JSON bytes, fast.

What a consumer must survive, all deterministic (pure function of ``segment_id``, ``seed``, ``i``):

* names, cities, notes and nested values in many scripts (:mod:`sandbox.braze_vocab_realistic`),
  emoji with skin tones, ZWJ sequences and flags, U+2028/U+2029/U+0085 raw inside strings,
  quotes, commas, CR/LF and tabs inside values, the literal strings "null"/"NULL"/"None", JSON
  ``null`` values, empty strings, e-mails in odd case, with ``+tags``, spaces or an IDN domain;
* nested ``custom_attributes`` (lists of strings and numbers, objects, lists of objects, empty
  ones; the flat keys ``tier``, ``loyalty_points``, ``vip``, ``favourite_store`` and ``note`` of
  the plain generator are always there), ``custom_events`` and ``purchases`` lists, ``devices``
  and ``user_aliases``, ``phone`` numbers;
* ~0.2% of users with a multi-KB ``note`` (2,000-8,000 characters);
* ~2% of users without ``external_id`` and ~0.5% carrying the id of a user at least 5,000
  positions earlier (:mod:`sandbox.braze_segment`).

Speed (a 500,000-user export in a few seconds, ~100,000 users/s on one idle core): 128 random
bytes per user (one ``shake_256`` call per 64 users, :func:`sandbox.braze_segment.realistic_bytes`)
unpacked with one ``struct`` call; they pick pre-encoded JSON fragments (escaped once by orjson
when the tables are built) from weighted 4,096-slot tables, several correlated fields per slot
(names; place and gender; subscriptions; events and purchases; the rest of
``custom_attributes``), built once per requested field set; per-user values (ids, e-mail, phone,
dates, numbers, hex ids) are formatted into bytes directly. No dict and no ``orjson.dumps`` per
user: a line is one ``bytes.join``. :func:`realistic_user` parses a line back for the ground truth.

Imports nothing from ``include/`` or ``plugins/``.
"""

from __future__ import annotations

import struct
from binascii import hexlify
from collections.abc import Iterator
from datetime import date
from functools import lru_cache
from itertools import chain

import orjson

from sandbox import braze_vocab_realistic as V
from sandbox.braze_segment import (
    ALL_FIELDS,
    BLOCK,
    DUP_MIN_DISTANCE,
    REALISTIC_DUPLICATE,
    REALISTIC_LEN,
    REALISTIC_MISSING_ID,
    SegmentSpec,
    carried_id,
    realistic_block,
    realistic_bytes,
)
from sandbox.braze_vocab_realistic import SLOTS, group, slots

__all__ = ["realistic_line", "realistic_lines", "realistic_user"]


_EMPTY = (b"",) * SLOTS
_TIERS = ("bronze", "bronze", "bronze", "silver", "silver", "gold", "platinum", "null", None)

# User i's 128 random bytes, unpacked in one call. The first 8 are the identity draws that
# sandbox.braze_segment.carried_id reads (missing id, duplicate, duplicate target); then
# braze_id(12) idfv0(16) idfv1(16) | names email_draw domain email_style phone_style phone_digits cc |
# place dob day time bucket | subs tier points ca_rest long_flag long_pick activity |
# n_alias alias_labels alias0(5) alias1(5) n_dev dev0 dev1.
_LAYOUT = struct.Struct(">HHI12s16s16sHHBBBIBHHHIHHBIHBBHBB5s5sBBB24x")
assert _LAYOUT.size == REALISTIC_LEN  # one record per user: iter_unpack walks a block


def _records(segment_id: str, seed: int, start: int, stop: int) -> Iterator[tuple]:
    """The unpacked random bytes of users ``start .. stop-1``, block by block."""

    def blocks() -> Iterator:
        for b in range(start // BLOCK, -(-stop // BLOCK)):
            base = b * BLOCK
            lo, hi = (
                (max(start, base) - base) * REALISTIC_LEN,
                (min(stop, base + BLOCK) - base) * REALISTIC_LEN,
            )
            yield _LAYOUT.iter_unpack(memoryview(realistic_block(segment_id, seed, b))[lo:hi])

    return chain.from_iterable(blocks())


def _has_id_knobs(spec: SegmentSpec) -> bool:
    return bool(spec.missing_id_every or spec.duplicate_every or spec.malformed_every)


@lru_cache(maxsize=16)
def _line_maker(fields: frozenset[str] | None):
    """A generator function ``(spec, start, stop) -> lines`` for exports restricted to ``fields``.

    The tables are built once per field set (~0.2 s); the per-user body is one loop iteration.
    """
    g = slots()
    want = frozenset(ALL_FIELDS) if fields is None else fields
    names, place = group(g["names"], want), group(g["place"], want)
    subs, activity = group(g["subs"], want), group(g["activity"], want)
    slugs = g["slugs"]
    ca_rest, ca_long = tuple(g["ca_rest"]), tuple(g["ca_long"])
    ca_head = tuple(
        b',"custom_attributes":{"tier":' + orjson.dumps(x) + b',"loyalty_points":' for x in _TIERS
    )
    dobs = (
        tuple(
            b',"dob":"' + date.fromordinal(o).isoformat().encode() + b'"'
            for o in range(date(1940, 1, 1).toordinal(), date(2010, 12, 31).toordinal() + 1)
        )
        if "dob" in want
        else _EMPTY
    )
    null_dob = b',"dob":null' if "dob" in want else b""
    created_days = tuple(
        b',"created_at":"' + date.fromordinal(o).isoformat().encode() + b"T"
        for o in range(date(2016, 1, 1).toordinal(), date(2026, 6, 30).toordinal() + 1)
    )
    clock = tuple(b"%02d:%02d:%02d" % (k // 3600, k // 60 % 60, k % 60) for k in range(86_400))
    buckets = (
        tuple(b',"random_bucket":%d' % k for k in range(10_000))
        if "random_bucket" in want
        else (b"",) * 10_000
    )
    domains = tuple(d.encode() for d in V.DOMAINS)
    ccs = tuple(c.encode() for c in V.COUNTRY_CODES)
    devices = tuple(
        b'{"model":'
        + orjson.dumps(m)
        + b',"os":'
        + orjson.dumps(o)
        + b',"carrier":'
        + orjson.dumps(c)
        + b',"idfv":"'
        for m, o in V.DEVICES
        for c in V.CARRIERS
    )
    aliases = tuple(
        (
            b'{"alias_name":' + orjson.dumps(label[:3])[:-1] + b"_",
            b'","alias_label":' + orjson.dumps(label) + b"}",
        )
        for label in V.ALIAS_LABELS
    )
    w_ext, w_alias, w_braze, w_email, w_phone, w_created, w_custom, w_dev = (
        f in want
        for f in (
            "external_id",
            "user_aliases",
            "braze_id",
            "email",
            "phone",
            "created_at",
            "custom_attributes",
            "devices",
        )
    )
    n_dob, n_days, n_dev_models = len(dobs), len(created_days), len(devices)

    def lines(spec: SegmentSpec, start: int, stop: int) -> Iterator[bytes]:
        fast_ids, prefix = not _has_id_knobs(spec), spec.segment_id.encode() + b"-u"
        no_email_below = spec.missing_email_share * 65_536
        segment_id, seed = spec.segment_id, spec.seed
        records = _records(segment_id, seed, start, stop)
        for i, (
            miss,
            dup,
            _target,
            braze,
            idfv0,
            idfv1,
            nk,
            email_draw,
            domain,
            email_style,
            phone_style,
            phone_digits,
            cc,
            pk,
            dob,
            day,
            tod,
            bucket,
            sk,
            tier,
            points,
            rest,
            long_flag,
            long_pick,
            ak,
            n_alias,
            labels,
            alias0,
            alias1,
            n_dev,
            dev0,
            dev1,
        ) in zip(range(start, stop), records, strict=True):
            ext = b""
            if w_ext:
                if fast_ids and (
                    miss < REALISTIC_MISSING_ID or i < DUP_MIN_DISTANCE or dup >= REALISTIC_DUPLICATE
                ):
                    if miss >= REALISTIC_MISSING_ID:
                        ext = b',"external_id":"%s%08d"' % (prefix, i)
                else:
                    carried = carried_id(spec, i, realistic_bytes(spec, i))[0]
                    if carried is not None:
                        ext = b',"external_id":"%s"' % carried.encode()
            alias_part = b""
            if w_alias:
                n_alias %= 7
                if n_alias < 3:
                    alias_part = b',"user_aliases":[]'
                elif n_alias < 6:
                    pre, post = aliases[labels & 3]
                    alias_part = b',"user_aliases":[%s%s%s]' % (pre, hexlify(alias0), post)
                else:
                    pre, post = aliases[labels & 3]
                    pre1, post1 = aliases[labels >> 2 & 3]
                    alias_part = b',"user_aliases":[%s%s%s,%s%s%s]' % (
                        pre,
                        hexlify(alias0),
                        post,
                        pre1,
                        hexlify(alias1),
                        post1,
                    )
            email = b""
            if w_email and email_draw >= no_email_below:
                fs, ls = slugs[nk & 4095]
                email_style &= 15
                if email_style == 0:
                    email = b',"email":"%s.%s.%d@%s"' % (fs.upper(), ls.upper(), i, domains[domain & 7])
                elif email_style == 1:
                    email = b',"email":"%s.%s.%d+braze@%s"' % (fs, ls, i, domains[domain & 7])
                elif email_style == 2:
                    email = b',"email":" %s.%s.%d@%s "' % (fs, ls, i, domains[domain & 7])
                else:
                    email = b',"email":"%s.%s.%d@%s"' % (fs, ls, i, domains[domain & 7])
            phone = b""
            if w_phone:
                phone_style %= 10
                if phone_style < 6:
                    phone = b',"phone":"+%s%09d"' % (ccs[cc % 14], phone_digits % 1_000_000_000)
                elif phone_style < 8:
                    phone = b',"phone":"+1 (555) 01%d-%04d"' % (phone_digits % 10, phone_digits % 10_000)
            created = b""
            if w_created:
                tod %= 86_400_000
                created = b'%s%s.%03dZ"' % (created_days[day % n_days], clock[tod // 1000], tod % 1000)
            custom = b""
            if w_custom:
                tail = ca_long[long_pick & 15] if long_flag == 0 and long_pick < 128 else ca_rest[rest & 4095]
                custom = b"%s%d%s" % (ca_head[tier % 9], points % 100_000, tail)
            device_part = b""
            if w_dev:
                n_dev %= 6
                if n_dev == 0:
                    device_part = b',"devices":[]'
                else:
                    h = hexlify(idfv0).upper()
                    device_part = b',"devices":[%s%s-%s-%s-%s-%s"}' % (
                        devices[dev0 % n_dev_models],
                        h[:8],
                        h[8:12],
                        h[12:16],
                        h[16:20],
                        h[20:],
                    )
                    if n_dev >= 4:
                        h = hexlify(idfv1).upper()
                        device_part += b',%s%s-%s-%s-%s-%s"}' % (
                            devices[dev1 % n_dev_models],
                            h[:8],
                            h[8:12],
                            h[12:16],
                            h[16:20],
                            h[20:],
                        )
                    device_part += b"]"
            body = b"".join(
                (
                    ext,
                    alias_part,
                    b',"braze_id":"%s"' % hexlify(braze) if w_braze else b"",
                    names[nk & 4095],
                    email,
                    phone,
                    null_dob if dob < 2_000 else dobs[dob % n_dob],
                    place[pk & 4095],
                    created,
                    buckets[bucket % 10_000],
                    subs[sk & 4095],
                    custom,
                    activity[ak & 4095],
                    device_part,
                )
            )
            yield b"{%s}\n" % body[1:]

    return lines


def realistic_line(spec: SegmentSpec, i: int, fields: frozenset[str] | None = None) -> bytes:
    """User ``i``'s NDJSON line (ending in ``b"\\n"``), restricted to ``fields`` (None: all)."""
    return next(_line_maker(fields)(spec, i, i + 1))


def realistic_lines(spec: SegmentSpec, fields: frozenset[str] | None) -> Iterator[bytes]:
    """The lines of users ``0..size-1`` (no malformed-line knob: the caller applies it)."""
    return _line_maker(fields)(spec, 0, spec.size)


def realistic_user(spec: SegmentSpec, i: int) -> dict:
    """User ``i`` as a dict (all fields), parsed from its line."""
    return orjson.loads(realistic_line(spec, i))
