"""The real Airflow UI in headless Chromium (Playwright), end to end, against the local stack
(`stack` fixture: scripts/up.sh --no-schedule on free ports, its own instance for this module):

1. log in on the UI's login page (simple auth manager, admin/admin), both pipeline DAGs are listed;
2. unpause `lytics_audiences_to_braze` with its toggle, trigger a dry run of ONE audience from the
   trigger form (params shown with their titles, the audience picked from the multi-select);
3. the run's "Run report" tab (the plugin's external view, an iframe) shows that audience only, with
   the adds/removes of the `report` task's XCom;
4. a guarded run approved from the UI: a real run commits a snapshot, most members of an audience
   then leave in the Lytics sandbox (its loopback control endpoint, sandbox/lytics_server.py), the
   next real run waits in `approve_changes`; under Browse -> Required Actions the drawer shows the
   guard's numbers, **Approve** is clicked, the run delivers, and Braze's sandbox shows the removes.

The tests share one logged-in browser page and run in file order (a test whose prerequisite did not
pass is skipped). Screenshots of every step go to `$BRAZE_LYTICS_TEST_ARTIFACTS` (default
`<pytest's base temp dir>/screenshots`; the path is printed), with `durations.json`; when a test
fails, also `FAILED-<test>.png` and a copy of the stack's logs (`stack-logs/`, `airflow-logs/`: the
stack's state directory is deleted afterwards), and a failed DAG run's error lines are in the
assertion message. Chromium is Debian's (`/usr/bin/chromium`, or `$BRAZE_LYTICS_CHROMIUM`):
Playwright's own browsers are not downloaded.

Waiting: the REST API is polled for run states (up to RUN_TIMEOUT); everything in the UI goes through
Playwright's auto-waiting with UI_TIMEOUT_MS. Selectors are roles, labels and texts, plus Airflow's
`data-testid="toggle-pause"` and the report frame's `title`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote, unquote

import pytest
import requests

playwright_sync = pytest.importorskip("playwright.sync_api")
expect = playwright_sync.expect

pytestmark = [pytest.mark.slow, pytest.mark.stack, pytest.mark.timeout(2400)]

DAG_IDS = ("braze_segments_to_lytics", "lytics_audiences_to_braze")
DAG = "lytics_audiences_to_braze"
DRY_AUDIENCE = "high_value"  # the pipeline file's audiences (include/config/braze_lytics.yaml): high_value, churn_risk
GUARD_AUDIENCE = "churn_risk"
LEAVE_SHARE = 0.6  # of GUARD_AUDIENCE's members leave: far above max_remove_share (10%)
RUN_TIMEOUT = 600  # one DAG run on a loaded 2-core machine, generously
UI_TIMEOUT_MS = 60_000  # Playwright's auto-waiting (expect, clicks); the React UI is slow on a busy machine
FORM_PARAM_TITLES = ("Audiences", "Dry run", "Full resync", "Allow a large change", "Retire audiences")

_state: dict = {}  # what a test hands to the next ones (run ids, numbers)
_durations: dict[str, float] = {}


# ------------------------------------------------------------------------------------------ fixtures
def _say(config: pytest.Config, text: str) -> None:
    """Print to the terminal even while pytest captures output."""
    capture = config.pluginmanager.get_plugin("capturemanager")
    if capture is None:
        print(text)
        return
    with capture.global_and_fixture_disabled():
        print(text, flush=True)


@pytest.fixture(scope="module")
def artifacts(request, tmp_path_factory) -> Path:
    env = os.environ.get("BRAZE_LYTICS_TEST_ARTIFACTS")
    path = Path(env) if env else tmp_path_factory.getbasetemp() / "screenshots"
    path.mkdir(parents=True, exist_ok=True)
    _say(request.config, f"\nUI test screenshots: {path}")
    yield path
    if _durations:
        (path / "durations.json").write_text(json.dumps(_durations, indent=2) + "\n")
        _say(request.config, "UI test durations: " + ", ".join(f"{k} {v:.0f}s" for k, v in _durations.items()))


class Shots:
    def __init__(self, page, directory: Path) -> None:
        self.page, self.dir, self.n = page, directory, 0

    def __call__(self, name: str, element=None, page=None) -> Path:
        """The whole page (or another `page`), or only `element` (e.g. a drawer wider than the layout)."""
        self.n += 1
        path = self.dir / f"{self.n:02d}-{name}.png"
        if element is not None:
            element.screenshot(path=str(path))
        else:
            (page or self.page).screenshot(path=str(path), full_page=True)
        return path


@pytest.fixture(scope="module")
def browser_page(stack, artifacts):
    exe = os.environ.get("BRAZE_LYTICS_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    assert Path(exe).exists(), f"no Chromium at {exe} (scripts/setup.sh apt-installs Debian's chromium)"
    expect.set_options(timeout=UI_TIMEOUT_MS)
    with playwright_sync.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=exe, args=["--no-sandbox"])
        try:
            context = browser.new_context(base_url=stack.url, viewport={"width": 1600, "height": 1000})
            context.set_default_timeout(UI_TIMEOUT_MS)
            context.set_default_navigation_timeout(2 * UI_TIMEOUT_MS)
            page = context.new_page()
            yield page, Shots(page, artifacts)
            context.close()
        finally:
            browser.close()


@pytest.fixture
def ui(request, stack, browser_page):
    """(page, shot); a failed test leaves a screenshot of where the page was and a copy of the stack's
    logs (the stack's state directory is deleted when the module ends)."""
    page, shot = browser_page
    failed_before = request.session.testsfailed
    t0 = time.monotonic()
    yield page, shot
    _durations[request.node.name] = time.monotonic() - t0
    if request.session.testsfailed > failed_before:
        try:
            page.screenshot(path=str(shot.dir / f"FAILED-{request.node.name}.png"), full_page=True)
        except Exception as exc:  # noqa: BLE001 - the test's own failure is what matters
            print(f"no failure screenshot: {exc}")
        for logs, name in ((stack.state_dir / "logs", "stack-logs"), (stack.state_dir / "airflow" / "logs", "airflow-logs")):
            if logs.is_dir():
                shutil.copytree(logs, shot.dir / name, dirs_exist_ok=True)
        _say(request.config, f"stack logs copied to {shot.dir}")


def _need(*keys: str) -> None:
    missing = [k for k in keys if k not in _state]
    if missing:
        pytest.skip(f"needs an earlier test of this module to have passed (missing {missing})")


# ------------------------------------------------------------------------------------------ REST helpers
def _run_path(run_id: str) -> str:
    return f"/dags/{DAG}/dagRuns/{quote(run_id, safe='')}"


def _get(stack, path: str, **kw) -> dict:
    resp = stack.api("GET", path, **kw)
    assert resp.status_code == 200, f"GET {path}: {resp.status_code} {resp.text[:500]}"
    return resp.json()


def _task_states(stack, run_id: str) -> dict[str, str]:
    tis = _get(stack, f"{_run_path(run_id)}/taskInstances", params={"limit": 100})["task_instances"]
    return {f"{t['task_id']}[{t['map_index']}]" if t["map_index"] >= 0 else t["task_id"]: t["state"] for t in tis}


def _wait_run(stack, run_id: str, *, until_awaiting_input: bool = False, timeout: float = RUN_TIMEOUT) -> dict:
    """Poll the REST API until the run finished (or, with until_awaiting_input, approve_changes waits)."""
    deadline = time.monotonic() + timeout
    run: dict = {}
    while time.monotonic() < deadline:
        run = _get(stack, _run_path(run_id))
        if run["state"] in ("success", "failed"):
            if until_awaiting_input:
                pytest.fail(f"{run_id} ended {run['state']} instead of waiting for approval: {_task_states(stack, run_id)}")
            return run
        if until_awaiting_input and _task_states(stack, run_id).get("approve_changes") == "awaiting_input":
            return run
        time.sleep(3)
    pytest.fail(f"{run_id}: not {'waiting for approval' if until_awaiting_input else 'finished'} within {timeout}s "
                f"(state {run.get('state')}): {_task_states(stack, run_id)}; logs in {stack.state_dir}/airflow/logs")


def _wait_success(stack, run_id: str) -> dict:
    run = _wait_run(stack, run_id)
    assert run["state"] == "success", (f"{run_id}: {run['state']}: {_task_states(stack, run_id)}\n"
                                       f"{_task_errors(stack, run_id)}")
    return run


def _task_errors(stack, run_id: str) -> str:
    """The error lines of the run's unsuccessful tasks, from their log files (JSON lines)."""
    out = []
    run_dir = stack.state_dir / "airflow" / "logs" / f"dag_id={DAG}" / f"run_id={run_id}"
    for task, state in _task_states(stack, run_id).items():
        if state in ("success", "skipped", "upstream_failed"):
            continue
        task_id, _, index = task.partition("[")
        task_dir = run_dir / f"task_id={task_id}"
        if index:
            task_dir /= f"map_index={index.rstrip(']')}"
        for log in sorted(task_dir.glob("attempt=*.log")):
            for line in log.read_text(errors="replace").splitlines():
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                if rec.get("level") in ("error", "critical"):
                    details = "; ".join(f"{d.get('exc_type')}: {d.get('exc_value')}" for d in rec.get("error_detail") or [])
                    out.append(f"  {task} {log.name}: {rec.get('event')} {details}".rstrip())
    return "\n".join(out[-20:]) or f"  (no error lines in {run_dir})"


def _report_xcom(stack, run_id: str) -> dict:
    return _get(stack, f"{_run_path(run_id)}/taskInstances/report/xcomEntries/return_value")["value"]


def _secrets(stack) -> dict:
    return json.loads((stack.state_dir / "secrets.json").read_text())


def _braze_profiles(stack) -> dict[str, list]:
    """external_id -> lytics_segments of every profile in the Braze sandbox (its read-back endpoint)."""
    resp = requests.get(f"{stack.info['braze_url']}/_sandbox/profiles",
                        params={"attr": "lytics_segments", "by": "external_id"},
                        headers={"Authorization": f"Bearer {_secrets(stack)['braze_api_key']}"}, timeout=60)
    resp.raise_for_status()
    return resp.json()


def _holders(profiles: dict[str, list], slug: str) -> set[str]:
    return {uid for uid, segments in profiles.items() if slug in (segments or [])}


def _members_leave(stack, slug: str, share: float) -> dict:
    """Most members leave the audience in the running stack's Lytics sandbox (its control endpoint)."""
    resp = requests.post(f"{stack.info['lytics_url']}/_sandbox/audiences/{slug}/remove", json={"share": share},
                         headers={"Authorization": _secrets(stack)["lytics_token"]}, timeout=60)
    assert resp.status_code == 200, resp.text
    return resp.json()["data"]


def _wait_for_a_new_minute(stack) -> None:
    """The trigger form proposes the current minute as logical date, and Airflow allows one run per
    (DAG, logical date): never open it in the minute of the latest run."""
    runs = _get(stack, f"/dags/{DAG}/dagRuns", params={"limit": 100})["dag_runs"]
    dates = [datetime.fromisoformat(r["logical_date"].replace("Z", "+00:00")) for r in runs if r["logical_date"]]
    if not dates:
        return
    latest = max(dates).replace(second=0, microsecond=0)
    while datetime.now(UTC).replace(second=0, microsecond=0) <= latest:
        time.sleep(1)


# ------------------------------------------------------------------------------------------ UI helpers
def _number(text: str) -> int:
    return int(text.strip().replace(",", ""))


def _read_table(table) -> list[dict[str, str]]:
    """Rows of an HTML table as {column header: cell text}, located by ARIA roles only."""
    headers = [h.strip() for h in table.get_by_role("columnheader").all_inner_texts()]
    rows = []
    for row in table.get_by_role("row").all():
        cells = [c.strip() for c in row.get_by_role("cell").all_inner_texts()]
        if cells:
            assert len(cells) == len(headers), (headers, cells)
            rows.append(dict(zip(headers, cells, strict=True)))
    return rows


def _table_with_column(scope, column: str, root=None):
    """The table under `scope` with that column header (`root`: the page or frame `scope` is in)."""
    root = scope if root is None else root
    return scope.get_by_role("table").filter(has=root.get_by_role("columnheader", name=column, exact=True))


def _param_label(dialog, title: str):
    return dialog.get_by_text(re.compile(rf"^{re.escape(title)}\s*\*?$"))  # "Dry run *": the required mark


def _open_dag(page) -> None:
    page.goto(f"/dags/{DAG}")
    expect(page.get_by_role("heading", name=DAG, exact=True)).to_be_visible()


def _trigger_from_form(stack, page, shot, *, audiences: list[str], dry_run: bool, label: str) -> str:
    """Trigger a run from the DAG's trigger form; returns its run id (the UI opens the new run's page)."""
    _wait_for_a_new_minute(stack)
    _open_dag(page)
    page.get_by_role("button", name="Trigger Dag").click()
    dialog = page.get_by_role("dialog").filter(has=page.get_by_role("heading", name=f"Trigger Dag - {DAG}"))
    expect(dialog).to_be_visible()
    for title in FORM_PARAM_TITLES:  # the params carry titles and help texts
        expect(_param_label(dialog, title)).to_be_visible()
    expect(dialog.get_by_text("leave empty for all of them", exact=False)).to_be_visible()

    picker = dialog.get_by_role("combobox", name="Select one or multiple values")
    for slug in audiences:
        picker.click()
        expect(page.get_by_role("option", name=DRY_AUDIENCE, exact=True)).to_be_visible()  # the configured names
        expect(page.get_by_role("option", name=GUARD_AUDIENCE, exact=True)).to_be_visible()
        page.get_by_role("option", name=slug, exact=True).click()
    dry = dialog.get_by_role("checkbox", name="Dry run", exact=True)
    expect(dry).not_to_be_checked()
    if dry_run:
        _param_label(dialog, "Dry run").click()  # the field's label toggles the switch
        expect(dry).to_be_checked()
    for other in ("Full resync", "Allow a large change"):
        expect(dialog.get_by_role("checkbox", name=other, exact=True)).not_to_be_checked()
    shot(f"{label}-trigger-form")

    dialog.get_by_role("button", name="Trigger", exact=True).click()
    page.wait_for_url(re.compile(rf"/dags/{DAG}/runs/[^/?#]+$"), timeout=2 * UI_TIMEOUT_MS)
    run_id = unquote(page.url.rsplit("/", 1)[1])
    expect(page.get_by_role("heading", name=run_id, exact=True)).to_be_visible()
    shot(f"{label}-triggered")

    run = _get(stack, _run_path(run_id))
    assert run["run_type"] == "manual" and run["triggered_by"] == "ui", run
    assert run["conf"]["audiences"] == audiences and run["conf"]["dry_run"] is dry_run, run["conf"]
    return run_id


def _open_run_report(page, shot, run_id: str, label: str):
    """DAG -> Runs -> the run -> tab "Run report"; returns the report's frame."""
    _open_dag(page)
    page.get_by_role("link", name="Runs", exact=True).click()
    page.get_by_role("link", name=run_id, exact=True).first.click()
    expect(page.get_by_role("heading", name=run_id, exact=True)).to_be_visible()
    expect(page.get_by_text("Success", exact=True).first).to_be_visible()
    page.get_by_role("link", name="Run report", exact=True).click()
    page.wait_for_url(re.compile(r"/plugin/run-report$"))
    iframe = page.locator("iframe[title=\"Run report\"]")  # the tab (a link) has the same title
    frame = iframe.content_frame
    expect(frame.get_by_role("heading", name=f"{DAG} - run report")).to_be_visible()
    expect(frame.get_by_text(run_id, exact=True)).to_be_visible()
    expect(frame.get_by_text("From the report task's result.")).to_be_visible()
    shot(f"{label}-run-report")

    # The framed page on its own (same login cookie), to keep all of it: the tab's frame clips it.
    standalone = page.context.new_page()
    try:
        standalone.goto("/" + iframe.get_attribute("src").lstrip("/"))
        expect(standalone.get_by_role("heading", name=f"{DAG} - run report")).to_be_visible()
        shot(f"{label}-run-report-page", page=standalone)
    finally:
        standalone.close()
    return frame


def _audience_rows(frame) -> dict[str, dict[str, str]]:
    rows = _read_table(_table_with_column(frame, "removes"))
    return {row["audience"]: row for row in rows}


# ------------------------------------------------------------------------------------------ 1
def test_login_and_dag_list(stack, ui):
    page, shot = ui
    page.goto("/")
    page.wait_for_url(re.compile(r"/auth/login"))  # not logged in: the simple auth manager's login page
    expect(page.get_by_text("Sign into Airflow")).to_be_visible()
    page.get_by_label("Username").fill("admin")
    page.get_by_label("Password").fill("admin")
    shot("login")
    page.get_by_role("button", name="Sign in").click()

    page.get_by_role("link", name="Dags", exact=True).click()
    page.wait_for_url(re.compile(r"/dags$"))
    for dag_id in DAG_IDS:
        expect(page.get_by_role("link", name=dag_id, exact=True)).to_be_visible()
    shot("dag-list")
    _state["logged_in"] = True


# ------------------------------------------------------------------------------------------ 2
def test_unpause_and_trigger_a_dry_run_of_one_audience(stack, ui):
    _need("logged_in")
    page, shot = ui
    page.get_by_role("link", name=DAG, exact=True).click()
    expect(page.get_by_role("heading", name=DAG, exact=True)).to_be_visible()
    assert _get(stack, f"/dags/{DAG}")["is_paused"] is True

    toggle = page.get_by_test_id("toggle-pause")  # Airflow's own test id for the pause switch
    expect(toggle).to_have_attribute("data-state", "unchecked")
    toggle.click()
    expect(toggle).to_have_attribute("data-state", "checked")
    deadline = time.monotonic() + 60
    while _get(stack, f"/dags/{DAG}")["is_paused"] and time.monotonic() < deadline:
        time.sleep(1)
    assert _get(stack, f"/dags/{DAG}")["is_paused"] is False
    shot("unpaused")

    _state["dry_run"] = _trigger_from_form(stack, page, shot, audiences=[DRY_AUDIENCE], dry_run=True, label="dry")


# ------------------------------------------------------------------------------------------ 3
def test_dry_run_report_tab_matches_the_report_xcom(stack, ui):
    _need("dry_run")
    page, shot = ui
    run_id = _state["dry_run"]
    _wait_success(stack, run_id)
    frame = _open_run_report(page, shot, run_id, "dry")
    expect(frame.get_by_role("heading", name="Run (dry run)")).to_be_visible()
    expect(frame.get_by_text("Dry run", exact=False).first).to_be_visible()

    shown = _audience_rows(frame)
    xcom = _report_xcom(stack, run_id)
    assert xcom["dry_run"] is True
    assert list(shown) == [DRY_AUDIENCE], f"the report shows {list(shown)}"
    assert list(xcom["audiences"]) == [DRY_AUDIENCE]
    expected = xcom["audiences"][DRY_AUDIENCE]
    for column, key in (("adds", "adds"), ("removes", "removes"), ("members", "members")):
        assert _number(shown[DRY_AUDIENCE][column]) == expected[key], (column, shown[DRY_AUDIENCE], expected)
    assert expected["adds"] > 0 and expected["removes"] == 0  # a first run: every member is an add
    assert _number(shown[DRY_AUDIENCE]["requests"]) == 0
    assert _braze_profiles(stack) == {}, "a dry run sent something to Braze"


# ------------------------------------------------------------------------------------------ 4
def test_guarded_run_is_approved_from_required_actions(stack, ui):
    _need("dry_run")
    page, shot = ui

    # A real run commits a snapshot of GUARD_AUDIENCE (first run: every member is an add).
    baseline = _trigger_from_form(stack, page, shot, audiences=[GUARD_AUDIENCE], dry_run=False, label="baseline")
    _wait_success(stack, baseline)
    base = _report_xcom(stack, baseline)["audiences"][GUARD_AUDIENCE]
    assert base["adds"] == base["members"] > 0 and base["removes"] == 0, base
    assert len(_holders(_braze_profiles(stack), GUARD_AUDIENCE)) == base["members"]

    # Most members leave in Lytics: the next real run's guard trips and the run waits for approval.
    left = _members_leave(stack, GUARD_AUDIENCE, LEAVE_SHARE)
    assert left["removed"] == round(LEAVE_SHARE * base["members"]), left
    held = _trigger_from_form(stack, page, shot, audiences=[GUARD_AUDIENCE], dry_run=False, label="guarded")
    _wait_run(stack, held, until_awaiting_input=True)
    holders_before = _holders(_braze_profiles(stack), GUARD_AUDIENCE)
    assert len(holders_before) == base["members"], "sent before approval"

    # Browse -> Required Actions -> the run's request -> read the numbers -> Approve.
    page.get_by_role("button", name="Browse", exact=True).click()
    page.get_by_role("menuitem", name="Required Actions").click()
    page.wait_for_url(re.compile(r"/required_actions"))
    request_row = page.get_by_role("row").filter(has_text=held)
    expect(request_row).to_have_count(1)
    expect(request_row).to_contain_text("Approval Required")
    expect(request_row).to_contain_text(f"unusual changes in {GUARD_AUDIENCE}")
    shot("required-actions")
    request_row.get_by_role("button", name="Open Review Drawer").click()
    drawer = page.get_by_role("dialog", name="Required Actions")
    expect(drawer).to_be_visible()
    expect(drawer.get_by_text("before anything was sent to Braze", exact=True)).to_be_visible()
    numbers_table = _table_with_column(drawer, "removes", root=page)
    expect(numbers_table).to_be_visible()
    (asked,) = [r for r in _read_table(numbers_table) if r["audience"] == GUARD_AUDIENCE]
    asked = {k: _number(v) for k, v in asked.items() if k != "audience"}
    reason = drawer.get_by_role("listitem").filter(has_text="committed members")
    expect(reason).to_contain_text(f"of the {base['members']:,} committed members")
    sample = [s.strip() for s in drawer.get_by_role("listitem").filter(has_text="would be removed")
              .locator("code").all_inner_texts()]
    shot("approval-drawer")
    shot("approval-request", element=drawer)

    assert asked["members before"] == base["members"], asked
    # (not exactly left["removed"]: the sandbox's membership also churns a little every 10 minutes)
    assert asked["removes"] > 0.5 * base["members"], asked
    assert asked["members after"] == asked["members before"] + asked["adds"] - asked["removes"], asked
    assert asked["Lytics total"] == asked["members after"] and asked["no id"] == 0, asked
    assert 0 < len(sample) <= 10, sample
    assert set(sample) <= holders_before, "the sampled removes are not on Braze's profiles"

    drawer.get_by_role("button", name="Approve", exact=True).click()
    expect(page.get_by_role("status").filter(has_text="response successful").first).to_be_visible()
    expect(drawer).to_be_hidden()
    expect(request_row).to_contain_text("Approval Received")
    expect(request_row).to_contain_text("admin")
    shot("approved")

    # The run delivers and commits; the report and Braze show the removes.
    _wait_success(stack, held)
    assert _task_states(stack, held)["approve_changes"] == "success"
    xcom = _report_xcom(stack, held)
    assert list(xcom["audiences"]) == [GUARD_AUDIENCE]
    done = xcom["audiences"][GUARD_AUDIENCE]
    assert (done["members"], done["adds"], done["removes"]) == (
        asked["members after"], asked["adds"], asked["removes"]), (done, asked)
    assert done["guard"]["tripped"] is True and xcom["guard"]["approval"] == "required", xcom["guard"]
    assert done["requests"] > 0 and done["dead_lettered"] == 0, done

    frame = _open_run_report(page, shot, held, "approved")
    shown = _audience_rows(frame)
    assert list(shown) == [GUARD_AUDIENCE]
    assert _number(shown[GUARD_AUDIENCE]["removes"]) == done["removes"]
    assert _number(shown[GUARD_AUDIENCE]["adds"]) == done["adds"]
    assert shown[GUARD_AUDIENCE]["guard"] == "tripped"
    expect(frame.get_by_text(re.compile(r"Answer: Approve by admin"))).to_be_visible()

    # Braze's profiles (the sandbox lists users whose lytics_segments is not empty): the removes arrived.
    holders_after = _holders(_braze_profiles(stack), GUARD_AUDIENCE)
    assert len(holders_after) == done["members"]
    assert not holders_after & set(sample), "a sampled remove did not reach Braze"
    assert len(holders_before - holders_after) == done["removes"]
    assert len(holders_after - holders_before) == done["adds"]
