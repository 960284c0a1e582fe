"""Every HTTP answer Braze and Lytics can give, through the project's clients and the audience pipeline's
steps: the typed error, a message naming the call, the endpoint and what to do - and no side effect:
no Braze profile changed, nothing committed, no snapshot written, no half-downloaded export left."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa
import pytest

from include.audiences_to_braze import run_files
from include.audiences_to_braze.commit import commit_run
from include.audiences_to_braze.config import AudienceRef
from include.audiences_to_braze.delivery import deliver_chunk
from include.audiences_to_braze.planning import PlanOptions, snapshot_audience
from include.audiences_to_braze.snapshot import pointer_key, write_snapshot
from include.clients.braze.export import BrazeExportClient
from include.clients.braze.export_ids import BrazeExportIdsClient
from include.clients.braze.track import BrazeTrackClient
from include.clients.lytics.scan import LyticsClient
from include.clients.state_store import StateStore
from include.common.errors import PermanentError
from include.common.rate_limit import RateLimiter
from tests.badinput.cases_http import (
    BRAZE_EXPORT_IDS,
    BRAZE_EXPORT_LINK,
    BRAZE_EXPORT_START,
    BRAZE_TRACK,
    LYTICS_SCAN,
    HttpCase,
)
from tests.badinput.conftest import BRAZE_KEY, FAST, LYTICS_TOKEN, check_error

pytestmark = pytest.mark.sandbox

RUN = "manual__2026-11-23"
SLUG = "bad_input"
USERS = ["u1", "u2", "u3"]


def ids(cases: list[HttpCase]) -> list[str]:
    return [c.id for c in cases]


def arm(case: HttpCase, sandbox, odd_http) -> str:
    """Arm the case's fault on whoever answers; the base URL to call."""
    if case.who == "odd":
        odd_http.answer = case.fault
        odd_http.requests.clear()
        return case.base or odd_http.url
    if case.fault is not None and case.who == "braze":
        status, path = case.fault
        sandbox.fail_next(10, status, path)
    elif case.fault is not None:
        sandbox.fail_next(10, case.fault)
    return case.base or sandbox.url


def secrets_of(case: HttpCase, *known: str) -> tuple[str, ...]:
    return (*known, *([case.key] if case.key and len(case.key.strip()) > 3 else []))


# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", BRAZE_EXPORT_START, ids=ids(BRAZE_EXPORT_START))
def test_braze_export_start(case: HttpCase, braze, odd_http):
    base = arm(case, braze, odd_http)
    segment = "seg_unknown" if "unknown-segment" in case.id else "seg_bad"
    with pytest.raises(Exception) as err:
        client = BrazeExportClient(base, BRAZE_KEY if case.key is None else case.key, policy=FAST)
        client.start_segment_export(segment, ["external_id", "email"])
    check_error(err.value, case.error, case.says, secrets=secrets_of(case, BRAZE_KEY))


# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", BRAZE_EXPORT_LINK, ids=ids(BRAZE_EXPORT_LINK))
def test_braze_export_link(case: HttpCase, braze, odd_http, tmp_path):
    client = BrazeExportClient(braze.url, BRAZE_KEY, policy=FAST)
    dest = tmp_path / "export.zip"
    if case.who == "odd":
        odd_http.answer = case.fault
        url = f"{odd_http.url}/exports/abc.zip?X-Amz-Signature=s3cr3t-signature"

        def call():
            client.download(url, dest)
    else:
        kind, step = case.fault
        if kind == "expired":
            braze.exports.link_ttl = 0.05
        url = client.start_segment_export("seg_bad", ["external_id"]).url
        if kind == "expired":
            time.sleep(0.2)
        elif kind in ("empty", "truncated", "html"):
            braze.fail_downloads(10, kind)
        elif isinstance(kind, int):
            braze.fail_next(10, kind)

        def call():
            if kind == "sealed":  # the link sealed into XCom with the key before a key rotation
                client.unseal(BrazeExportClient(braze.url, "the-previous-key").seal(url))
            elif step == "probe":
                client.export_ready(url)
            else:
                client.download(url, dest)
    with pytest.raises(Exception) as err:
        call()
    check_error(err.value, case.error, case.says, secrets=(url.split("?", 1)[1], BRAZE_KEY))
    assert not dest.exists() and not dest.with_name(dest.name + ".part").exists(), "a partial download was left"


# ---------------------------------------------------------------------------------------------------------
@pytest.fixture
def planned(tmp_path) -> SimpleNamespace:
    """A state store holding a run planned for 3 users (snapshot written, one chunk), not yet delivered."""
    store = StateStore(str(tmp_path / "state"))
    store.write_table(run_files.chunk_key(RUN, 0), pa.table({
        "external_id": pa.array(USERS, pa.string()),
        "add": pa.array([[SLUG]] * len(USERS), pa.list_(pa.string())),
        "remove": pa.array([[]] * len(USERS), pa.list_(pa.string())),
    }))
    return SimpleNamespace(store=store, snapshot=write_snapshot(store, SLUG, RUN, pa.array(USERS, pa.string())))


def assert_nothing_committed(planned: SimpleNamespace) -> None:
    store = planned.store
    progress_key = run_files.progress_key(RUN, 0)
    assert not store.exists(progress_key) or not store.read_json(progress_key)["done"]
    plan = {"dry_run": False, "chunks": 1, "dead_letters_included": [], "options": {}}
    with pytest.raises(PermanentError, match=r"chunks \[0\] of this run are not delivered"):
        commit_run(store, RUN, plan, [{"slug": SLUG, "snapshot": planned.snapshot, "members": len(USERS)}])
    assert not store.exists(pointer_key(SLUG)), "a commit pointer was written"


@pytest.mark.parametrize("case", BRAZE_TRACK, ids=ids(BRAZE_TRACK))
def test_braze_track_delivery(case: HttpCase, braze, odd_http, planned):
    base = arm(case, braze, odd_http)
    before, applied = braze.profiles.snapshot(), braze.stats["objects_applied"]
    timeout = (2, 0.15) if "timeout" in case.id else (5, 30)
    with pytest.raises(Exception) as err:
        client = BrazeTrackClient(base, BRAZE_KEY if case.key is None else case.key, policy=FAST,
                                  limiter=RateLimiter(1000, 1.0), timeout=timeout)
        deliver_chunk(planned.store, RUN, 0, client.track, PlanOptions(), in_flight=1)
    check_error(err.value, case.error, case.says, secrets=secrets_of(case, BRAZE_KEY))
    assert braze.profiles.snapshot() == before and braze.stats["objects_applied"] == applied, "Braze profiles changed"
    assert_nothing_committed(planned)


# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", BRAZE_EXPORT_IDS, ids=ids(BRAZE_EXPORT_IDS))
def test_braze_export_ids(case: HttpCase, braze, odd_http):
    base = arm(case, braze, odd_http)
    with pytest.raises(Exception) as err:
        client = BrazeExportIdsClient(base, BRAZE_KEY if case.key is None else case.key, policy=FAST)
        client.custom_attribute(["u1"], "lytics_segments")
    check_error(err.value, case.error, case.says, secrets=secrets_of(case, BRAZE_KEY))


# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", LYTICS_SCAN, ids=ids(LYTICS_SCAN))
def test_lytics_scan_snapshot(case: HttpCase, lytics, odd_http, tmp_path: Path):
    base = arm(case, lytics, odd_http)
    for knob, value in case.knob.items():
        getattr(lytics, knob)(value)
    store = StateStore(str(tmp_path / "state"))
    audience_id = "aud_missing" if "unknown-audience" in case.id else "aud_bad"
    with pytest.raises(Exception) as err:
        client = LyticsClient(base, LYTICS_TOKEN if case.key is None else case.key, policy=FAST)
        snapshot_audience(store, RUN, AudienceRef(slug=SLUG, id=audience_id),
                          lambda audience: client.scan_ids(audience, "braze_id"))
    check_error(err.value, case.error, case.says, secrets=secrets_of(case, LYTICS_TOKEN))
    assert store.list() == [], "the failed scan left state behind (a snapshot, a scan marker or a pointer)"
