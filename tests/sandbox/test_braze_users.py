"""Tests of the Braze sandbox's user generators (plain and realistic) and their ground truth."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from sandbox.braze_users import (
    DUPLICATE,
    KEPT,
    MALFORMED,
    MISSING_ID,
    SegmentSpec,
    expected_rows,
    expected_users,
    export_lines,
    row_status,
    user,
)

pytestmark = pytest.mark.sandbox

ROOT = Path(__file__).resolve().parents[2]
KNOBS = SegmentSpec("seg_knobs", 200, missing_id_every=5, malformed_every=7, duplicate_every=4, seed=3)
REAL = SegmentSpec("seg_real", 40_000, realistic=True, seed=11)


@pytest.fixture(scope="module")
def real_lines() -> list[bytes]:
    return list(export_lines(REAL, None))


def consumer_view(lines: list[bytes]) -> list[tuple[str, str | None, int | None]]:
    """What a careful consumer makes of an export, in order: first occurrence wins."""
    first: dict[str, int] = {}
    out = []
    for i, line in enumerate(lines):
        try:
            u = orjson.loads(line)
        except orjson.JSONDecodeError:
            out.append((MALFORMED, None, None))
            continue
        eid = u.get("external_id")
        if eid is None:
            out.append((MISSING_ID, None, None))
        elif eid in first:
            out.append((DUPLICATE, eid, first[eid]))
        else:
            first[eid] = i
            out.append((KEPT, eid, i))
    return out


# --------------------------------------------------------------------------- plain generator
def test_user_is_deterministic_and_realistic():
    spec = SegmentSpec("seg_x", 5_000)
    users = list(expected_users(spec, None))
    assert users == [user(spec, i) for i in range(spec.size)]
    assert users[0] != user(SegmentSpec("seg_x", 5_000, seed=1), 0)
    assert users[0] != user(SegmentSpec("seg_y", 5_000), 0)
    hexre = re.compile(r"[0-9a-f]{24}")
    for i, u in enumerate(users):
        assert u["external_id"] == f"seg_x-u{i:08d}"
        assert hexre.fullmatch(u["braze_id"])
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", u["dob"])
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z", u["created_at"])
        assert re.fullmatch(r"[A-Z]{2}", u["country"])
        assert u["email_subscribe"] in ("opted_in", "subscribed", "unsubscribed")
        assert 0 <= u["random_bucket"] < 10_000
        ca = u["custom_attributes"]
        assert isinstance(ca["tier"], str) and isinstance(ca["loyalty_points"], int)
        assert isinstance(ca["vip"], bool) and isinstance(ca["note"], str)
        assert ca["favourite_store"] is None or isinstance(ca["favourite_store"], str)
        assert 0 <= len(u["devices"]) <= 2
        for d in u["devices"]:
            assert set(d) == {"model", "os", "carrier", "idfv"}
        for a in u["user_aliases"]:
            assert set(a) == {"alias_name", "alias_label"}
    missing = sum("email" not in u for u in users)  # ~5% without email (key absent)
    assert 150 < missing < 350
    assert len({u["braze_id"] for u in users}) == len(users)
    notes = [u["custom_attributes"]["note"] for u in users]
    assert any("\n" in n for n in notes) and any('"' in n for n in notes) and any("," in n for n in notes)
    text = "".join(u["first_name"] + u["last_name"] + u["home_city"] for u in users)
    for s in ("José", "Zoë", "Łukasz", "李", "Müller", "São Paulo", "Smith, Jr.", "O'Brien", 'The "Rock"'):
        assert s in text
    assert any(ord(c) > 0xFFFF for c in text)  # an emoji somewhere
    assert {None} < {u["custom_attributes"]["favourite_store"] for u in users}
    assert any(not u["user_aliases"] for u in users) and any(not u["devices"] for u in users)


def test_export_lines_roundtrip_and_field_restriction():
    spec = SegmentSpec("seg_rt", 500)
    lines = list(export_lines(spec, None))
    assert all(line.endswith(b"\n") and line.count(b"\n") == 1 for line in lines)
    assert [orjson.loads(line) for line in lines] == list(expected_users(spec, None))
    fields = ["email", "external_id", "custom_attributes", "phone"]  # phone: the plain generator has none
    sub = [orjson.loads(line) for line in export_lines(spec, fields)]
    assert sub == list(expected_users(spec, fields))
    assert all(set(u) <= {"email", "external_id", "custom_attributes"} for u in sub)
    assert all("external_id" in u and "custom_attributes" in u for u in sub)


def test_knobs_in_generator():
    lines = list(export_lines(KNOBS, None))
    expected = list(expected_users(KNOBS, None))
    for i, (line, exp) in enumerate(zip(lines, expected, strict=True)):
        if i % 7 == 6:
            assert exp is None
            with pytest.raises(orjson.JSONDecodeError):
                orjson.loads(line)
            line.decode("utf-8")  # broken JSON, but still one valid UTF-8 line
            assert line.endswith(b"\n") and line.count(b"\n") == 1
            continue
        u = orjson.loads(line)
        assert u == exp
        if i % 5 == 4:
            assert "external_id" not in u
        elif i % 4 == 3:
            assert u["external_id"] == KNOBS.external_id(i - 1)
            assert u["braze_id"] != user(KNOBS, i - 1)["braze_id"]
        else:
            assert u["external_id"] == KNOBS.external_id(i)


@pytest.mark.parametrize("realistic", [False, True])
def test_generator_is_stable_across_processes(realistic):
    """No dependence on Python's per-process hash randomisation."""
    code = (
        "import hashlib; from sandbox.braze_users import SegmentSpec, export_lines;"
        f"print(hashlib.sha256(b''.join(export_lines(SegmentSpec('seg_p', 300, seed=9, realistic={realistic}), "
        "None))).hexdigest())"
    )
    digests = {
        subprocess.run(
            [sys.executable, "-c", code],
            cwd=ROOT,
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        for seed in ("1", "2")
    }
    lines = export_lines(SegmentSpec("seg_p", 300, seed=9, realistic=realistic), None)
    assert digests == {hashlib.sha256(b"".join(lines)).hexdigest()}


def test_spec_validation():
    for bad in (
        dict(segment_id="bad/id", size=1),
        dict(segment_id="seg", size=-1),
        dict(segment_id="seg", size=1, missing_email_share=1.5),
        dict(segment_id="seg", size=1, duplicate_every=1),
        dict(segment_id="seg", size=1, realistic=1),
    ):
        with pytest.raises(ValueError):
            SegmentSpec(**bad)


# --------------------------------------------------------------------------- realistic generator
def test_realistic_lines_are_valid_json_lines_and_match_user(real_lines):
    assert len(real_lines) == REAL.size
    for i in (0, 1, 4_999, 5_000, 12_345, REAL.size - 1):
        assert orjson.loads(real_lines[i]) == user(REAL, i)
    for line in real_lines:
        assert line.endswith(b"\n") and line.count(b"\n") == 1 and b"\r" not in line
    parsed = [orjson.loads(line) for line in real_lines]
    assert parsed == list(expected_users(REAL, None))
    # Raw U+2028 / U+2029 / U+0085 inside strings: str.splitlines() would cut these lines apart.
    raw = b"".join(real_lines)
    for sep in ("\u2028", "\u2029", "\u0085"):
        assert sep.encode() in raw
    assert any(len(line.decode().splitlines()) > 1 for line in real_lines)


def _strings(v, out: list[str]) -> list[str]:
    if isinstance(v, str):
        out.append(v)
    elif isinstance(v, dict):
        for k, x in v.items():
            out.append(k)
            _strings(x, out)
    elif isinstance(v, list):
        for x in v:
            _strings(x, out)
    return out


def test_realistic_content_is_awkward(real_lines):
    users = [orjson.loads(line) for line in real_lines[:20_000]]
    strings = _strings(users, [])
    text = "".join(strings)
    scripts = {
        "Latin with diacritics": "[À-ɏ]",
        "Cyrillic": "[Ѐ-ӿ]",
        "Greek": "[Ͱ-Ͽ]",
        "Arabic": "[؀-ۿ]",
        "Hebrew": "[֐-׿]",
        "CJK": "[一-鿿]",
        "Kana": "[぀-ヿ]",
        "Hangul": "[가-힯]",
        "Devanagari": "[ऀ-ॿ]",
        "Thai": "[฀-๿]",
    }
    for name, pattern in scripts.items():
        assert re.search(pattern, text), name
    assert "\u200d" in text  # ZWJ sequences
    assert re.search("[\U0001f1e6-\U0001f1ff]{2}", text)  # a flag
    assert re.search("[\U0001f3fb-\U0001f3ff]", text)  # a skin tone
    for s in ("null", "NULL", "None"):
        assert s in strings  # the literal strings, as whole values
    for ch in ('"', ",", "\r\n", "\r", "\n", "\t", "\u2028", "\u2029"):
        assert any(ch in s for s in strings), repr(ch)
    assert any(len(s) >= 2_000 for s in strings)  # occasional multi-KB fields
    assert any(u.get("dob", 0) is None for u in users)  # JSON nulls too
    cas = [u["custom_attributes"] for u in users]
    assert all({"tier", "loyalty_points", "vip", "favourite_store", "note"} <= set(ca) for ca in cas)
    assert any(isinstance(v, list) and v for ca in cas for v in ca.values())
    assert any(
        isinstance(v, dict) and any(isinstance(x, dict) for x in v.values())
        for ca in cas
        for v in ca.values()
    )
    assert any(isinstance(v, list) and v and isinstance(v[0], dict) for ca in cas for v in ca.values())
    assert any(len(u["user_aliases"]) == 2 for u in users) and any(len(u["devices"]) == 2 for u in users)
    assert len({u["braze_id"] for u in users}) == len(users)


def test_realistic_missing_and_far_duplicate_ids(real_lines):
    rows = list(expected_rows(REAL, users=False))
    counts = {s: sum(r.status == s for r in rows) for s in (KEPT, DUPLICATE, MISSING_ID, MALFORMED)}
    assert 0.015 * REAL.size < counts[MISSING_ID] < 0.025 * REAL.size  # ~2%
    eligible = REAL.size - 5_000
    assert 0.003 * eligible < counts[DUPLICATE] < 0.007 * eligible  # ~0.5%
    assert counts[MALFORMED] == 0
    dups = [r for r in rows if r.status == DUPLICATE]
    for r in dups:
        assert r.index - r.first_index >= 5_000  # in an earlier file whenever users_per_file <= 5,000
        assert rows[r.first_index].status == KEPT and rows[r.first_index].external_id == r.external_id
        first, later = orjson.loads(real_lines[r.first_index]), orjson.loads(real_lines[r.index])
        assert first["braze_id"] != later["braze_id"]  # different data under the same id
    assert len({r.index // 5_000 for r in dups}) >= 6 and len({r.first_index // 5_000 for r in dups}) >= 6
    assert [(r.status, r.external_id, r.first_index) for r in rows] == consumer_view(real_lines)


@pytest.mark.parametrize(
    "spec",
    [
        KNOBS,
        SegmentSpec(
            "seg_gt", 12_000, realistic=True, missing_id_every=97, duplicate_every=89, malformed_every=83
        ),
        SegmentSpec("seg_gt2", 9_000, realistic=True, malformed_every=2),
        SegmentSpec("seg_gt3", 3_000, duplicate_every=2, missing_id_every=3),
    ],
    ids=["plain-knobs", "realistic-knobs", "realistic-half-malformed", "plain-dup-after-missing"],
)
def test_ground_truth_matches_a_consumer(spec):
    lines = list(export_lines(spec, None))
    rows = list(expected_rows(spec))
    assert [(r.status, r.external_id, r.first_index) for r in rows] == consumer_view(lines)
    assert [r.user for r in rows] == list(expected_users(spec, None))
    assert [row_status(spec, i) for i in range(0, spec.size, 37)] == [
        (r.status, r.external_id, r.first_index) for r in rows[::37]
    ]


def test_ground_truth_with_restricted_fields():
    spec = SegmentSpec("seg_f", 6_000, realistic=True, malformed_every=50)
    fields = ["email", "custom_attributes", "phone"]
    lines = list(export_lines(spec, fields))
    for line, row in zip(lines, expected_rows(spec, fields), strict=True):
        if row.status == MALFORMED:
            assert row.user is None
            continue
        assert row.status == MISSING_ID and orjson.loads(line) == row.user
        assert set(row.user) <= set(fields) and "custom_attributes" in row.user
    ids = [orjson.loads(x) for x in list(export_lines(spec, ["external_id"]))[:40]]
    assert [r.user for r in list(expected_rows(spec, ["external_id"]))[:40]] == ids
    assert all(set(u) <= {"external_id"} for u in ids) and any(ids)


@pytest.mark.slow
def test_realistic_500k_users_generate_fast():
    spec = SegmentSpec("seg_big", 500_000, realistic=True)
    list(export_lines(SegmentSpec("seg_warm", 10, realistic=True), None))  # tables built once per process
    cpu, wall = time.process_time(), time.perf_counter()
    n = size = 0
    for line in export_lines(spec, None):
        n += 1
        size += len(line)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    assert n == spec.size and size > 500 * spec.size
    # ~100k users/s on an idle core; the floor leaves room for a busy shared CI machine.
    assert spec.size / cpu > 50_000, f"{spec.size / cpu:,.0f} users/s of CPU ({spec.size / wall:,.0f}/s wall)"
