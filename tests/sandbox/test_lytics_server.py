"""Tests of the Lytics sandbox itself (membership store + HTTP server), over real HTTP on loopback."""

from __future__ import annotations

import base64
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from sandbox.lytics_members import Audience, MembershipStore, braze_id, user_record
from sandbox.lytics_server import MAX_LIMIT, LyticsSandbox

pytestmark = pytest.mark.sandbox

TOKEN = "lytics-test-token-abc"
AUTH = {"Authorization": TOKEN}
ROOT = Path(__file__).resolve().parents[2]

SMALL = Audience("aud_small", "small_aud", "Small audience", 1_234, seed=1)
OTHER = Audience("aud_other", "other_aud", "Other audience", 700, seed=2)
KNOBS = Audience("aud_knobs", "knobs_aud", "Knobs", 50, seed=3, id_field="user_id", missing_id_every=5)
EMPTY = Audience("aud_empty", "empty_aud", "Empty", 0)


@pytest.fixture(scope="module")
def sb():
    with LyticsSandbox(TOKEN, [SMALL, OTHER, KNOBS, EMPTY]) as sandbox:
        yield sandbox


@pytest.fixture(scope="module")
def http():
    with requests.Session() as s:
        yield s


def _get(http, sb, path, headers=AUTH, **params):
    return http.get(f"{sb.url}{path}", headers=headers, params=params, timeout=10)


def _scan_all(http, sb, seg, limit=MAX_LIMIT, **params):
    """Every page of a scan; returns (records, pages)."""
    records, pages, start = [], [], None
    while True:
        p = dict(params, limit=limit)
        if start:
            p["start"] = start
        r = _get(http, sb, f"/api/segment/{seg}/scan", **p)
        assert r.status_code == 200, r.text
        body = r.json()
        pages.append(body)
        records.extend(body["data"])
        start = body["_next"]
        if not start:
            return records, pages


# ---------------------------------------------------------------------- membership store
def test_initial_membership_is_exact_and_deterministic():
    a = Audience("a1", "a_one", "A", 10_000, seed=5)
    s1, s2 = MembershipStore([a]), MembershipStore([a])
    assert s1.count("a1") == 10_000
    m1 = list(s1.members("a1"))
    assert m1 == list(s2.members("a1"))
    assert len(m1) == 10_000 and m1 == sorted(set(m1))
    assert m1[-1] < a.universe_size
    # a different seed gives a different subset of the same size
    s3 = MembershipStore([Audience("a1", "a_one", "A", 10_000, seed=6)])
    assert s3.count("a1") == 10_000 and list(s3.members("a1")) != m1


def test_add_remove_is_member():
    s = MembershipStore([Audience("x", "x", "X", 10, universe=20)])
    before = set(s.members("x"))
    non = next(i for i in range(20) if i not in before)
    assert not s.is_member("x", non)
    assert s.add("x", [non, non]) == 1 and s.is_member("x", non) and s.count("x") == 11
    assert s.add("x", 50) == 1 and s.universe("x") == 51  # grows the universe
    assert s.remove("x", [non, 50, 999]) == 2 and s.count("x") == 10
    assert set(s.members("x")) == before
    assert s.add("x", range(0, 20)) == 10 and s.count("x") == 20
    assert s.remove("x", range(5, 100)) == 15 and list(s.members("x")) == [0, 1, 2, 3, 4]
    with pytest.raises(KeyError):
        s.count("nope")


def test_churn_moves_members_out_and_in():
    a = Audience("c", "c", "C", 5_000, seed=9)
    s = MembershipStore([a])
    before = set(s.members("c"))
    removed, added = s.churn("c", 0.1, seed=1)
    after = set(s.members("c"))
    assert len(removed) == len(added) == 500
    assert set(removed) <= before and not set(added) & before
    assert after == (before - set(removed)) | set(added)
    assert s.count("c") == 5_000 == len(after)
    # deterministic
    s2 = MembershipStore([a])
    assert s2.churn("c", 0.1, seed=1) == (removed, added)
    # a full churn needs more non-members than the universe has: it grows
    s2.churn("c", 1.0, seed=2)
    assert s2.count("c") == 5_000 and s2.universe("c") >= 10_000


def test_store_memory_for_10m_members_is_small():
    s = MembershipStore([Audience("big", "big", "Big", 10_000_000, seed=1)])
    assert s.count("big") == 10_000_000
    assert s.nbytes("big") <= 20_000_000
    t = time.perf_counter()
    page = s.next_members("big", 9_000_000, 100)
    assert len(page) == 100 and page[0] > 9_000_000 and page == sorted(page)
    assert time.perf_counter() - t < 0.1


def test_user_record_fields_and_missing_id():
    rec = user_record(KNOBS, 3, ["knobs_aud"])
    assert rec == {
        "user_id": "u00000003",
        "email": rec["email"],
        "first_name": rec["first_name"],
        "segments": ["knobs_aud"],
    }
    assert "user_id" not in user_record(KNOBS, 4, [])  # every 5th user (i % 5 == 4)
    assert user_record(KNOBS, 3, [], ["email", "nope"]) == {"email": rec["email"], "segments": []}
    assert braze_id(12) == "u00000012"


# ---------------------------------------------------------------------- auth
def test_auth(http, sb):
    assert _get(http, sb, "/api/segment", table="user").status_code == 200
    assert _get(http, sb, "/api/segment", headers={}, key=TOKEN).status_code == 200
    for headers, params in [
        ({"Authorization": f"Bearer {TOKEN}"}, {}),
        ({}, {}),
        ({"Authorization": "wrong"}, {}),
        ({}, {"key": "wrong"}),
        ({"Authorization": f"Bearer {TOKEN}"}, {"key": TOKEN}),  # a bad header is not rescued by ?key=
    ]:
        r = _get(http, sb, "/api/segment", headers=headers, **params)
        assert r.status_code == 401, (headers, params)
        assert r.json() == {"status": 401, "message": "Unauthorized"}
    # the token never reaches the request log
    assert all(TOKEN not in path for _, path, _ in sb.requests)


# ---------------------------------------------------------------------- segments
def test_list_and_get(http, sb):
    r = _get(http, sb, "/api/segment", table="user")
    body = r.json()
    assert body["status"] == 200 and body["message"] == "success"
    assert [s["slug_name"] for s in body["data"]] == ["small_aud", "other_aud", "knobs_aud", "empty_aud"]
    item = body["data"][0]
    assert set(item) >= {"id", "slug_name", "name", "kind", "table", "segment_ql", "updated"}
    assert item["id"] == "aud_small" and item["kind"] == "segment" and item["table"] == "user"
    assert _get(http, sb, "/api/segment", table="content").json()["data"] == []

    for ref in ("aud_small", "small_aud"):
        one = _get(http, sb, f"/api/segment/{ref}").json()
        assert one["status"] == 200 and one["data"] == item
    r = _get(http, sb, "/api/segment/nope")
    assert r.status_code == 404 and r.json() == {"status": 404, "message": "segment not found"}
    r = _get(http, sb, "/api/segment/nope/scan")
    assert r.status_code == 404
    assert _get(http, sb, "/api/other").status_code == 404
    assert http.post(f"{sb.url}/api/segment", headers=AUTH, timeout=10).status_code == 405


# ---------------------------------------------------------------------- scans
def test_scan_covers_every_member_once(http, sb):
    records, pages = _scan_all(http, sb, "small_aud")
    ids = [r["braze_id"] for r in records]
    expected = [braze_id(i) for i in sb.store.members("aud_small")]
    assert ids == expected and len(ids) == 1_234  # ascending, no duplicates, none missing
    assert (
        len(pages) == 13 and all(len(p["data"]) == 100 for p in pages[:-1]) and len(pages[-1]["data"]) == 34
    )
    assert all(p["total"] == 1_234 and p["status"] == 200 and p["message"] == "success" for p in pages)
    assert all(p["_next"] for p in pages[:-1]) and pages[-1]["_next"] == ""
    assert all(set(r) == {"braze_id", "email", "first_name", "segments"} for r in records)
    assert all("small_aud" in r["segments"] for r in records)
    # segments lists every audience the user is in
    both = set(sb.store.members("aud_small")) & set(sb.store.members("aud_other"))
    assert both
    for r in records:
        i = int(r["braze_id"][1:])
        assert ("other_aud" in r["segments"]) == (i in both)


def test_scan_default_limit_and_exact_last_page(http, sb):
    body = _get(http, sb, "/api/segment/aud_small/scan").json()
    assert len(body["data"]) == 10 and body["_next"]
    records, pages = _scan_all(http, sb, "aud_knobs", limit=25)  # 50 members: 2 full pages, no empty 3rd
    assert len(pages) == 2 and pages[-1]["_next"] == "" and len(records) == 50
    empty = _get(http, sb, "/api/segment/empty_aud/scan", limit=100).json()
    assert empty["data"] == [] and empty["_next"] == "" and empty["total"] == 0


def test_scan_limit_validation(http, sb):
    for bad in ("101", "0", "-1", "abc"):
        r = _get(http, sb, "/api/segment/aud_small/scan", limit=bad)
        assert r.status_code == 400, bad
        assert r.json()["status"] == 400 and "limit" in r.json()["message"]
    assert _get(http, sb, "/api/segment/aud_small/scan", limit=100).status_code == 200


def test_scan_fields_and_missing_ids(http, sb):
    body = _get(http, sb, "/api/segment/aud_small/scan", fields="email,nonexistent").json()
    assert all(set(r) == {"email", "segments"} for r in body["data"])
    records, _ = _scan_all(http, sb, "knobs_aud", fields="user_id")
    members = list(sb.store.members("aud_knobs"))
    assert [r.get("user_id") for r in records] == [None if i % 5 == 4 else braze_id(i) for i in members]
    assert all(set(r) <= {"user_id", "segments"} for r in records)


def test_scan_token_tampered_or_foreign(http, sb):
    start = _get(http, sb, "/api/segment/aud_small/scan").json()["_next"]
    raw = bytearray(base64.urlsafe_b64decode(start + "=" * (-len(start) % 4)))
    raw[len("aud_small") + 2] ^= 1  # change the cursor position
    forged = base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()
    for bad in (forged, start[:-3], "not-a-token!!", "QUJD"):
        r = _get(http, sb, "/api/segment/aud_small/scan", start=bad)
        assert r.status_code == 400, bad
        assert r.json() == {"status": 400, "message": "invalid scan token"}
    r = _get(http, sb, "/api/segment/aud_other/scan", start=start)
    assert r.status_code == 400 and "segment" in r.json()["message"]
    assert _get(http, sb, "/api/segment/small_aud/scan", start=start).status_code == 200  # slug == id


def test_scan_token_expires(http):
    with LyticsSandbox(TOKEN, [SMALL], token_ttl=0.2) as sb:
        start = _get(http, sb, "/api/segment/aud_small/scan").json()["_next"]
        assert _get(http, sb, "/api/segment/aud_small/scan", start=start).status_code == 200
        time.sleep(0.3)
        r = _get(http, sb, "/api/segment/aud_small/scan", start=start)
        assert r.status_code == 400 and r.json() == {"status": 400, "message": "scan token expired"}


def test_membership_changes_are_reflected(http):
    with LyticsSandbox(TOKEN, [Audience("aud_c", "churny", "Churny", 3_000, seed=4)]) as sb:
        first = {r["braze_id"] for r in _scan_all(http, sb, "churny")[0]}
        removed, added = sb.store.churn("aud_c", 0.05, seed=1)
        second = {r["braze_id"] for r in _scan_all(http, sb, "churny")[0]}
        assert len(first) == len(second) == 3_000
        assert first - second == {braze_id(i) for i in removed}
        assert second - first == {braze_id(i) for i in added}
        # a change ahead of the cursor shows up mid-scan, and total follows the live count
        page = _get(http, sb, "/api/segment/churny/scan", limit=10).json()
        last = int(page["data"][-1]["braze_id"][1:])
        assert sb.store.add("aud_c", last + 1) + sb.store.add("aud_c", 10_000_000) >= 1
        nxt = _get(http, sb, "/api/segment/churny/scan", limit=10, start=page["_next"]).json()
        assert nxt["data"][0]["braze_id"] == braze_id(last + 1)
        assert nxt["total"] == sb.store.count("aud_c") > 3_000


def test_control_endpoints_add_and_remove_members(http):
    """The loopback-only control endpoints the stack tests use: users join (lowest non-member
    indices first, past the universe's end if needed) and leave (lowest member indices first)."""
    aud = Audience("aud_ctl", "ctl", "Control", 10, seed=5, universe=12)
    with LyticsSandbox(TOKEN, [aud]) as sb:
        before = set(sb.store.members("aud_ctl"))
        outside = sorted(set(range(12)) - before)
        assert len(outside) == 2
        r = http.post(f"{sb.url}/_sandbox/audiences/ctl/add", json={"count": 5}, headers=AUTH, timeout=10)
        assert r.status_code == 200, r.text
        assert r.json()["data"] == {"added": 5, "members": 15}
        after = set(sb.store.members("aud_ctl"))
        assert after - before == {*outside, 12, 13, 14}  # the two free indices, then the universe grows
        scanned = {rec["braze_id"] for rec in _scan_all(http, sb, "aud_ctl")[0]}
        assert scanned == {braze_id(i) for i in after}
        r = http.post(f"{sb.url}/_sandbox/audiences/aud_ctl/add", json={"share": 0.2}, headers=AUTH, timeout=10)
        assert r.json()["data"] == {"added": 3, "members": 18}
        r = http.post(f"{sb.url}/_sandbox/audiences/ctl/remove", json={"count": 4}, headers=AUTH, timeout=10)
        assert r.json()["data"] == {"removed": 4, "members": 14}
        assert set(sb.store.members("aud_ctl")) == set(range(4, 18))  # 0..17 were members: the lowest 4 left
        for body in ({"count": -1}, {"count": 1.5}, {"share": 2}, {}, {"count": 1, "share": 0.1}):
            r = http.post(f"{sb.url}/_sandbox/audiences/ctl/add", json=body, headers=AUTH, timeout=10)
            assert r.status_code == 400, body
        assert http.post(f"{sb.url}/_sandbox/audiences/ctl/add", json={"count": 1}, timeout=10).status_code == 401
        assert http.post(f"{sb.url}/_sandbox/audiences/nope/add", json={"count": 1}, headers=AUTH,
                         timeout=10).status_code == 404
        assert http.get(f"{sb.url}/_sandbox/audiences/ctl/add", headers=AUTH, timeout=10).status_code == 405
        assert sb.store.count("aud_ctl") == 14


def test_control_endpoints_exist_only_on_loopback(http):
    with LyticsSandbox(TOKEN, [Audience("aud_ctl", "ctl", "Control", 10, seed=5)]) as sb:
        sb.host = "0.0.0.0"  # noqa: S104 - what a sandbox listening on every interface would say
        for action in ("add", "remove"):
            r = http.post(f"{sb.url.replace('0.0.0.0', '127.0.0.1')}/_sandbox/audiences/ctl/{action}",
                          json={"count": 1}, headers=AUTH, timeout=10)
            assert r.status_code == 404, action
        assert sb.store.count("aud_ctl") == 10


def test_big_audience_pages_are_fast(http):
    with LyticsSandbox(TOKEN, [Audience("aud_big", "big", "Big", 1_000_000, seed=11)]) as sb:
        start, seen = None, []
        for _ in range(5):
            t = time.perf_counter()
            params = {"limit": 100} | ({"start": start} if start else {})
            body = _get(http, sb, "/api/segment/big/scan", **params).json()
            assert time.perf_counter() - t < 1.0
            assert body["total"] == 1_000_000 and len(body["data"]) == 100
            seen += [r["braze_id"] for r in body["data"]]
            start = body["_next"]
        assert seen == [braze_id(i) for i in sb.store.next_members("aud_big", -1, 500)]


# ---------------------------------------------------------------------- failure knobs
def test_fail_next(http, sb):
    sb.fail_next(2, 503)
    assert _get(http, sb, "/api/segment").status_code == 503
    assert _get(http, sb, "/api/segment", headers={}).status_code == 503  # before auth
    assert _get(http, sb, "/api/segment").status_code == 200
    sb.fail_next(1, 429)
    r = _get(http, sb, "/api/segment")
    assert r.status_code == 429 and r.json()["status"] == 429

    sb.fail_next(1, "reset")
    with pytest.raises(requests.ConnectionError):
        _get(http, sb, "/api/segment")
    assert sb.requests[-1] == ("GET", "/api/segment", 0)
    assert _get(http, sb, "/api/segment").status_code == 200
    with pytest.raises(ValueError):
        sb.fail_next(1, "bogus")


def test_rate_limit(http):
    with LyticsSandbox(TOKEN, [SMALL], rate_limit_per_sec=5) as sb:
        codes = [_get(http, sb, "/api/segment").status_code for _ in range(8)]
        assert codes[:5] == [200] * 5 and 429 in codes[5:]
        time.sleep(1.05)
        assert _get(http, sb, "/api/segment").status_code == 200


def test_requests_log(http, sb):
    sb.clear_requests()
    _get(http, sb, "/api/segment/aud_small/scan", limit=5)
    _get(http, sb, "/api/segment/nope", headers={}, key=TOKEN)
    assert sb.requests == [("GET", "/api/segment/aud_small/scan", 200), ("GET", "/api/segment/nope", 404)]



# ---------------------------------------------------------------------- scan knobs (what Lytics may do)
def test_empty_pages_carry_a_next_token_and_the_scan_goes_on(http):
    with LyticsSandbox(TOKEN, [SMALL, OTHER]) as sb:
        sb.empty_pages(2, after=3, audience_id=SMALL.id)
        records, pages = _scan_all(http, sb, "small_aud")
        assert [len(p["data"]) for p in pages] == [100, 100, 100, 0, 0] + [100] * 9 + [34]
        assert all(p["_next"] for p in pages[:-1]) and all(p["total"] == 1_234 for p in pages)
        assert [r["braze_id"] for r in records] == [braze_id(i) for i in sb.store.members(SMALL.id)]
        assert [len(p["data"]) for p in _scan_all(http, sb, "other_aud")[1]] == [100] * 7  # other audiences: unaffected
        sb.empty_pages(1, after=0)  # every audience, before the first page
        assert [len(p["data"]) for p in _scan_all(http, sb, "other_aud")[1]] == [0] + [100] * 7
        sb.empty_pages(0)
        sb.empty_pages(0, audience_id=SMALL.id)
        assert len(_scan_all(http, sb, "small_aud")[1]) == 13


def test_a_scan_can_end_early_and_the_total_can_disagree(http):
    with LyticsSandbox(TOKEN, [SMALL]) as sb:
        sb.end_scans_after(4)
        records, pages = _scan_all(http, sb, "small_aud")
        assert len(pages) == 4 and len(records) == 400 and pages[-1]["_next"] == ""
        assert pages[-1]["total"] == 1_234  # the total still counts every member
        sb.end_scans_after(None)
        sb.total_offset(-34, audience_id=SMALL.id)
        records, pages = _scan_all(http, sb, "small_aud")
        assert len(records) == 1_234 and {p["total"] for p in pages} == {1_200}
        with pytest.raises(ValueError):
            sb.end_scans_after(0)


def test_expire_tokens_refuses_every_outstanding_token(http):
    with LyticsSandbox(TOKEN, [SMALL]) as sb:
        start = _get(http, sb, "/api/segment/small_aud/scan").json()["_next"]
        sb.expire_tokens()
        r = _get(http, sb, "/api/segment/small_aud/scan", start=start)
        assert r.status_code == 400 and r.json() == {"status": 400, "message": "scan token expired"}
        fresh = _get(http, sb, "/api/segment/small_aud/scan").json()["_next"]  # a new scan works
        assert _get(http, sb, "/api/segment/small_aud/scan", start=fresh).status_code == 200


def test_a_renamed_or_removed_user_field(http):
    with LyticsSandbox(TOKEN, [SMALL]) as sb:
        sb.rename_user_field("braze_id", "braze_external_id")
        body = _get(http, sb, "/api/segment/small_aud/scan", fields="braze_id").json()
        assert body["total"] == 1_234
        assert all(set(r) == {"segments"} for r in body["data"])  # asked for the old name: not there
        body = _get(http, sb, "/api/segment/small_aud/scan", fields="braze_external_id,email").json()
        first = sb.store.next_members(SMALL.id, -1, 1)[0]
        assert body["data"][0]["braze_external_id"] == braze_id(first) and "email" in body["data"][0]
        default = _get(http, sb, "/api/segment/small_aud/scan").json()["data"][0]
        assert set(default) == {"braze_external_id", "email", "first_name", "segments"}
        sb.rename_user_field("email", None)  # removed from the schema
        assert set(_get(http, sb, "/api/segment/small_aud/scan").json()["data"][0]) == {
            "braze_external_id", "first_name", "segments"}
        sb.restore_user_fields()
        assert set(_get(http, sb, "/api/segment/small_aud/scan", fields="braze_id").json()["data"][0]) == {
            "braze_id", "segments"}


# ---------------------------------------------------------------------- CLI
def test_cli_serves(http):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "sandbox.lytics_server", "--port", str(port), "--token", TOKEN, "-q",
         "--audience", "aud1:cli_aud:500:seed=3,missing_id_every=10"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,  # -m runs from cwd: no PYTHONPATH
    )  # fmt: skip
    try:
        assert "listening" in proc.stdout.readline()
        r = http.get(f"http://127.0.0.1:{port}/api/segment/cli_aud/scan?limit=100", headers=AUTH, timeout=10)
        assert r.status_code == 200 and r.json()["total"] == 500
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_a_malformed_request_line_is_answered_in_json_not_html():
    import json as _json
    import socket as _socket

    from sandbox.lytics_members import Audience as _Audience
    from sandbox.lytics_server import LyticsSandbox as _Sandbox

    with _Sandbox("tok", [_Audience("x1", "one", "One", 5)]) as lytics:
        host, port = lytics.url.split("//")[1].split(":")
        with _socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(b"NOT A VALID REQUEST LINE AT ALL\r\n\r\n")
            answer = sock.recv(65536).decode("latin-1")
    body = answer.split("\r\n\r\n", 1)[-1]  # (an unparseable request line is answered HTTP/0.9-style: no headers)
    assert "<html" not in answer.lower()
    assert _json.loads(body)["status"] == 400  # JSON like every other answer, not the stdlib's HTML page
