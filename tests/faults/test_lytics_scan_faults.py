"""Lytics scans failing mid-paging, driven through the pipeline's own steps (`planning.snapshot_audience` and
`plan_changes`) with a committed snapshot from an earlier run.

Run 1 commits the audience's membership. Then members leave (the true removes), and run 2 scans while the
sandbox fails mid-paging: 5xx, 429, connection resets, an expired `_next` token, pages with no member but a
`_next`, a `total` that disagrees, a scan that ends before its members do. Either the scan resumes (same `start`
token after a failed page; a new pass after an expired token) and the plan removes exactly the users who left,
or it fails with the typed error and *nothing* is written: no snapshot, no scan marker, no plan - so a partial
membership can never be diffed into removes. The task's retry (the same call once the fault is gone) then plans
exactly the true removes.
"""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from include.audiences_to_braze import run_files
from include.audiences_to_braze.commit import commit_run
from include.audiences_to_braze.config import AudienceRef
from include.audiences_to_braze.planning import PlanOptions, plan_changes, snapshot_audience
from include.audiences_to_braze.snapshot import committed, pointer_key
from include.clients.lytics.scan import InconsistentScanError, LyticsClient
from include.clients.state_store import StateStore
from include.common.errors import BrazeLyticsError, TransientError
from include.common.retry import RetryPolicy
from sandbox.lytics_members import Audience, braze_id
from sandbox.lytics_server import RESET, LyticsSandbox

pytestmark = pytest.mark.sandbox

SUITE = "lytics_scan_faults"
TOKEN = "lytics-fault-token"
AUDIENCE = Audience("aud_faults", "fault_aud", "Faults", 5_000, seed=5)  # 50 pages of 100
REF = AudienceRef(slug=AUDIENCE.slug, id=AUDIENCE.id)
LEAVING = 120  # members who leave between run 1 and run 2 (2.4 %: under the guard's 10 %)
POLICY = RetryPolicy(attempts=4, base_delay=0.01, max_delay=0.05)
AT = 12  # the page (request number) where faults start


class FaultingSession(requests.Session):
    """A real session that runs `before(n)` just before its n-th request and notes each request's `start` token."""

    def __init__(self, before):
        super().__init__()
        self.before = before
        self.starts: list[str] = []

    def send(self, request, **kwargs):
        self.starts.append(parse_qs(urlsplit(request.url).query).get("start", [""])[0])
        self.before(len(self.starts))
        return super().send(request, **kwargs)


def _fail(n: int, status):
    return lambda sb, i: sb.fail_next(n, status) if i == AT else None


def _expire_once(sb, i):
    if i == AT:
        sb.expire_tokens()


def _expire_always(sb, i):
    if i >= AT:
        sb.expire_tokens()


def _knob(method: str, *args):
    def arm(sb, i):
        if i == 1:
            getattr(sb, method)(*args)
    return arm


# (id, what is injected, how, expected: "resumes" or the typed error)
SCENARIOS = [
    ("503-twice", "2 x 503 mid-paging", _fail(2, 503), "resumes"),
    ("500-twice", "2 x 500 mid-paging", _fail(2, 500), "resumes"),
    ("429-three-times", "3 x 429 mid-paging", _fail(3, 429), "resumes"),
    ("reset-twice", "2 x connection reset mid-paging", _fail(2, RESET), "resumes"),
    ("token-expired-once", "the _next token expires once mid-paging", _expire_once, "resumes"),
    ("empty-pages", "5 pages with no member but a _next", _knob("empty_pages", 5, AT), "resumes"),
    ("total-off-within-tolerance", "total off by +30 (tolerance 50)", _knob("total_offset", 30), "resumes"),
    ("503-persistent", "503 on every try of a page", _fail(50, 503), TransientError),
    ("429-persistent", "429 on every try of a page", _fail(50, 429), TransientError),
    ("reset-persistent", "reset on every try of a page", _fail(50, RESET), TransientError),
    ("token-expires-always", "the _next token expires on every page", _expire_always, TransientError),
    ("empty-pages-endless", "30 empty pages with a _next in a row", _knob("empty_pages", 30, AT),
     InconsistentScanError),
    ("total-too-high", "total off by +500", _knob("total_offset", 500), InconsistentScanError),
    ("total-too-low", "total off by -500", _knob("total_offset", -500), InconsistentScanError),
    ("ends-early", "scan ends (_next \"\") after 20 of 49 pages", _knob("end_scans_after", 20),
     InconsistentScanError),
]


def _calm(sb: LyticsSandbox) -> None:
    sb.fail_next(0)
    sb.empty_pages(0)
    sb.total_offset(0)
    sb.end_scans_after(None)


def _scan(sb: LyticsSandbox, before):
    session = FaultingSession(lambda i: before(sb, i))
    client = LyticsClient(sb.url, TOKEN, policy=POLICY, session=session)
    return session, lambda audience_id: client.scan_ids(audience_id, "braze_id", limit=100)


def _removes(store: StateStore, run_key: str, plan: dict) -> set[str]:
    removed = set()
    for i in range(plan["chunks"]):
        for row in store.read_table(run_files.chunk_key(run_key, i)).to_pylist():
            if AUDIENCE.slug in (row["remove"] or []):
                removed.add(row["external_id"])
    return removed


@pytest.mark.parametrize(("case", "what", "inject", "expected"), SCENARIOS, ids=[s[0] for s in SCENARIOS])
def test_scan_fault_resumes_or_fails_typed_and_never_plans_removes(tmp_path, figures, case, what, inject, expected):
    store = StateStore(str(tmp_path / "state"))
    options = PlanOptions()
    with LyticsSandbox(TOKEN, [AUDIENCE]) as sb:
        # Run 1: the committed membership.
        _, scan = _scan(sb, lambda sb, i: None)
        scans = [snapshot_audience(store, "run1", REF, scan)]
        plan_changes(store, "run1", scans, PlanOptions(existing_users=False))
        commit_run(store, "run1", store.read_json(run_files.plan_key("run1")), scans)
        before = committed(store, AUDIENCE.slug)
        state_before = store.list(f"audiences/{AUDIENCE.slug}")
        members_before = sb.store.count(AUDIENCE.id)

        # Members leave; run 2 scans under the fault.
        leaving = sb.store.next_members(AUDIENCE.id, -1, LEAVING * 20)[::20]
        assert sb.store.remove(AUDIENCE.id, leaving) == LEAVING
        truly_removed = {braze_id(i) for i in leaving}
        sb.clear_requests()
        session, scan = _scan(sb, inject)
        record = {"injected": what}
        if expected == "resumes":
            meta = snapshot_audience(store, "run2", REF, scan)
            faults = [s for _, _, s in sb.requests if s >= 400 or s == 0]
            record.update({"faults answered": len(faults), "retries": meta["scan_retries"], "pages": meta["pages"],
                           "empty pages read past": meta["empty_pages"],
                           "restarts": sum(1 for s in session.starts[1:] if s == "")})
            assert meta["members"] == members_before - LEAVING
            if case.startswith(("503", "500", "429", "reset")):
                # Resumed, not restarted: the failed page was asked again with the same start token.
                assert meta["scan_retries"] == len(faults) > 0
                assert session.starts.count("") == 1, "the scan started over"
                assert session.starts[AT - 1] == session.starts[AT] != ""
            if case == "token-expired-once":
                assert record["restarts"] == 1
            outcome = "resumed; complete scan"
        else:
            with pytest.raises(BrazeLyticsError) as err:
                snapshot_audience(store, "run2", REF, scan)
            assert type(err.value) is expected, f"{type(err.value).__name__}: {err.value}"
            faults = [s for _, _, s in sb.requests if s >= 400 or s == 0]
            record.update({"faults answered": len(faults), "raised": type(err.value).__name__})
            if isinstance(err.value, InconsistentScanError):
                # What the partial membership would have removed, had it been diffed.
                record["members read"] = err.value.members_read
                record["removes it would have planned"] = max(0, members_before - err.value.members_read)
            # Nothing of the failed scan exists: no snapshot, no marker, no plan; the commit is untouched.
            assert store.list(f"audiences/{AUDIENCE.slug}") == state_before
            assert not store.exists(run_files.scan_marker("run2", AUDIENCE.slug))
            assert not store.exists(run_files.plan_key("run2"))
            assert committed(store, AUDIENCE.slug) == before
            assert str(AUDIENCE.id) in str(err.value) and "Lytics audience" in str(err.value)
            # The task's retry, once Lytics behaves again: scans afresh, plans the true removes only.
            _calm(sb)
            _, scan = _scan(sb, lambda sb, i: None)
            meta = snapshot_audience(store, "run2", REF, scan)
            outcome = f"{type(err.value).__name__}; nothing written; the task retry scanned afresh"
        plan = plan_changes(store, "run2", [meta], options)
        removes = _removes(store, "run2", plan)
        assert removes == truly_removed, (len(removes), len(truly_removed))
        assert plan["audiences"][AUDIENCE.slug]["adds"] == 0 and not plan["guard"]["tripped"]
        assert store.read_bytes(pointer_key(AUDIENCE.slug)) is not None
        record.update({"outcome": outcome, "removes planned": len(removes), "true removes": LEAVING})
    figures[SUITE].setdefault("scenarios", {})[case] = record
