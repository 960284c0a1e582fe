"""The "Run report" tab (plugins/braze_lytics/plugin.py, plugins/braze_lytics/ui/) on a real API server.

A real `airflow api-server` (`AirflowApi` of the audience DAG's tests: simple auth manager, user
`oncall`) shares the tests' metadata DB and loads the plugin from plugins/. Runs are real
`dag.test()` runs against the sandboxes. The page is fetched the way the UI's iframe fetches it:
the external view's href from `/api/v2/plugins`, placeholders replaced like the UI does
(`encodeURIComponent`), resolved against the UI's base URL, authenticated by the `_token` cookie
only; its download links are followed as the browser would.
"""

from __future__ import annotations

import csv
import io
import json
import os
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import quote, urljoin

import pytest
import requests

from include.audiences_to_braze.run_files import run_key_for
from sandbox.braze_server import BrazeSandbox
from sandbox.braze_users import SegmentSpec
from sandbox.lytics_members import braze_id
from tests.dags.test_braze_segments_to_lytics import GZIP_COLUMNS, write_config
from tests.dags.test_braze_segments_to_lytics import run_dag as run_segments_dag
from tests.dags.test_lytics_audiences_to_braze import (
    GUARD_SETTINGS,
    GUARDED,
    AirflowApi,
    report_of,
    run_dag,
    states,
    wired_sandboxes,
)

pytestmark = [pytest.mark.airflow, pytest.mark.sandbox, pytest.mark.slow]

AUDIENCES_DAG, SEGMENTS_DAG = "lytics_audiences_to_braze", "braze_segments_to_lytics"


@pytest.fixture(scope="module")
def api(airflow_db, tmp_path_factory):
    server = AirflowApi(tmp_path_factory.mktemp("run-report-api"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def guarded(tmp_path, monkeypatch, airflow_db):
    with wired_sandboxes(tmp_path, monkeypatch, GUARD_SETTINGS, audiences=GUARDED) as wired:
        yield wired


# ------------------------------------------------------------------------------------------- helpers
def plugin(api: AirflowApi) -> dict:
    r = api.ready().session.get(f"{api.url}/api/v2/plugins", timeout=30)
    assert r.status_code == 200, r.text
    return next(p for p in r.json()["plugins"] if p["name"] == "braze_lytics")


def encode_uri_component(text: str) -> str:
    return quote(text, safe="-_.!~*'()")


def view_url(api: AirflowApi, dag_id: str, run_id: str) -> str:
    """The iframe's URL: what the UI makes of the external view's href on the run's page."""
    view = next(v for v in plugin(api)["external_views"] if v["url_route"] == "run-report")
    href = view["href"].replace("{DAG_ID}", encode_uri_component(dag_id)).replace("{RUN_ID}",
                                                                               encode_uri_component(run_id))
    return urljoin(api.url + "/", href)  # the UI's <base href> is the API server's base URL


def browser(api: AirflowApi) -> requests.Session:
    """A logged-in browser: only the `_token` cookie the UI's login sets, no Authorization header."""
    token = api.ready().session.headers["Authorization"].removeprefix("Bearer ")
    session = requests.Session()
    session.cookies.set("_token", token)
    session.headers["Accept"] = "text/html,application/xhtml+xml,*/*;q=0.8"
    return session


class ReportPage(HTMLParser):
    """Rows (`data-audience`/`data-segment`/`data-total` -> {`data-key`: text}), links and text of a page."""

    def __init__(self, html: str):
        super().__init__()
        self.rows: dict[str, dict[str, str]] = {}
        self.links: list[str] = []
        self.files: dict[str, str] = {}
        self._row = self._cell = None
        self._text: list[str] = []
        self.feed(html)
        self.text = " ".join("".join(self._text).split())

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "tr":
            self._row = attrs.get("data-audience") or attrs.get("data-segment") or attrs.get("data-total")
            if self._row:
                self.rows.setdefault(self._row, {})
        elif tag == "td" and self._row and attrs.get("data-key"):
            self._cell = attrs["data-key"]
            self.rows[self._row][self._cell] = ""
        elif tag == "a":
            self.links.append(attrs["href"])
            if attrs.get("data-file"):
                self.files[attrs["data-file"]] = attrs["href"]

    def handle_endtag(self, tag):
        if tag == "td":
            self._cell = None
        elif tag == "tr":
            self._row = None

    def handle_data(self, data):
        self._text.append(data)
        if self._row and self._cell:
            self.rows[self._row][self._cell] += data

    def number(self, row: str, key: str) -> int:
        return int(self.rows[row][key].replace(",", ""))


def get_page(api: AirflowApi, dag_id: str, run_id: str) -> tuple[str, ReportPage]:
    url = view_url(api, dag_id, run_id)
    r = browser(api).get(url, timeout=60)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/html")
    return url, ReportPage(r.text)


def assert_refused(api: AirflowApi, url: str) -> None:
    """Anonymous, a forged cookie, a forged bearer token: never the page or the file."""
    anonymous = requests.get(url, timeout=30)
    assert anonymous.status_code == 401, anonymous.text
    in_browser = requests.get(url, headers={"Accept": "text/html"}, timeout=30)
    assert in_browser.status_code == 401 and "Log in to Airflow again" in in_browser.text
    forged_cookie = requests.get(url, cookies={"_token": "not.a.jwt"}, timeout=30)
    assert forged_cookie.status_code in (401, 403), forged_cookie.text
    forged_bearer = requests.get(url, headers={"Authorization": "Bearer not.a.jwt"}, timeout=30)
    assert forged_bearer.status_code in (401, 403), forged_bearer.text


# --------------------------------------------------------------------------------------------- tests
def test_the_plugin_adds_a_run_report_tab_to_dag_run_pages(api):
    info = plugin(api)
    assert info["source"] == "$PLUGINS_FOLDER/braze_lytics/plugin.py"
    [view] = info["external_views"]
    assert view["destination"] == "dag_run" and view["url_route"] == "run-report" and view["name"] == "Run report"
    assert view["href"] == "braze-lytics/dags/{DAG_ID}/runs/{RUN_ID}"  # relative: works under a base path
    assert [(a["url_prefix"], a["app"]) for a in info["fastapi_apps"]] == [
        ("/braze-lytics/export-callback", "braze_lytics.export_callback_app.ExportCallbackApp"),  # first: more specific
        ("/braze-lytics", "braze_lytics.ui.run_report_app.RunReportApp")]
    errors = api.session.get(f"{api.url}/api/v2/plugins/importErrors", timeout=30).json()["import_errors"]
    assert [e for e in errors if "plugin.py" in e["source"] or "/ui/" in e["source"]] == [], errors


def test_a_dry_run_report_shows_the_planned_changes_and_serves_its_planned_payloads(api, guarded):
    _, _, state_dir = guarded
    dry = run_dag(5, dry_run=True)
    assert dry.state == "success", states(dry)
    report = report_of(dry)

    url, page = get_page(api, AUDIENCES_DAG, dry.run_id)

    assert "Dry run: nothing was sent to Braze and nothing was committed." in page.text
    assert "From the report task's result." in page.text
    for slug, numbers in report["audiences"].items():
        for key in ("members", "adds", "removes", "skipped_no_id", "requests", "estimated_data_points"):
            assert page.number(slug, key) == numbers[key], (slug, key)
    assert page.number("users_changed", "users_changed") == report["users_changed"] > 0
    assert set(page.files) == {"plan.json", "planned_payloads.jsonl"}  # no dead letters, no parked users

    # The planned payloads, downloaded through the page's link.
    stored = (state_dir / "runs" / run_key_for(dry.run_id) / "planned_payloads.jsonl").read_bytes()
    download = browser(api).get(urljoin(url, page.files["planned_payloads.jsonl"]), timeout=60)
    assert download.status_code == 200, download.text
    assert download.content == stored and len(stored.splitlines()) >= 1
    assert download.headers["content-type"].startswith("application/x-ndjson")
    disposition = download.headers["content-disposition"]
    assert disposition.startswith('attachment; filename="lytics_audiences_to_braze__') and "planned_payloads.jsonl" in disposition
    assert download.headers["cache-control"] == "no-store"
    plan = browser(api).get(urljoin(url, page.files["plan.json"]), timeout=60)
    assert plan.status_code == 200 and plan.json()["users"] == report["users_changed"]

    # Only the run's own files, by fixed names: forged paths, other names and other runs get nothing.
    files = url + "/files/"
    for forged in ("..%2F..%2Fplan.json", "%2e%2e%2fplan.json", "%2e%2e", "secrets.txt", "planned_payloads.jsonl%00",
                   "chunks%2F0.parquet", "dead_letters.csv"):
        r = browser(api).get(files + forged, timeout=30)
        assert r.status_code in (400, 404), (forged, r.status_code, r.text[:200])
        assert stored not in r.content
    for forged_url in (view_url(api, AUDIENCES_DAG, "manual__no-such-run") + "/files/planned_payloads.jsonl",
                       view_url(api, SEGMENTS_DAG, dry.run_id) + "/files/planned_payloads.jsonl",
                       url + "/quarantine/..%2F..%2F..%2Fetc%2Fpasswd"):
        assert browser(api).get(forged_url, timeout=30).status_code == 404, forged_url

    # Access: like the rest of the UI, nothing without a valid login.
    assert_refused(api, url)
    assert_refused(api, urljoin(url, page.files["planned_payloads.jsonl"]))
    bearer = api.session.get(url, timeout=30)  # an API client with a bearer token gets the page too
    assert bearer.status_code == 200 and "Dry run" in bearer.text


def test_a_run_waiting_for_approval_shows_its_plan_and_the_guards_reasons(api, guarded):
    lytics, braze, state_dir = guarded
    rejected = sorted(braze_id(i) for i in lytics.store.members("g1"))[:3]
    braze.invalid_external_ids = set(rejected)  # Braze answers with errors[] for these: dead letters
    first = run_dag(6)
    assert first.state == "success", states(first)
    braze.invalid_external_ids = set()

    url, page = get_page(api, AUDIENCES_DAG, first.run_id)
    assert page.number("dead_lettered", "dead_lettered") == 3 and page.number("loyal", "dead_lettered") == 3
    assert set(page.files) == {"plan.json", "dead_letters.csv", "dead_letters.parquet"}
    dead = browser(api).get(urljoin(url, page.files["dead_letters.csv"]), timeout=60)
    assert dead.status_code == 200 and dead.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(dead.text)))
    assert sorted(r["external_id"] for r in rows) == rejected
    assert all("loyal" in json.loads(r["add"]) and r["attempts"] == "1" and r["error"] for r in rows)
    parquet = browser(api).get(urljoin(url, page.files["dead_letters.parquet"]), timeout=60)
    pending = state_dir / "dead_letter" / "pending" / f"{run_key_for(first.run_id)}.parquet"
    assert parquet.status_code == 200 and parquet.content == pending.read_bytes()

    lytics.store.remove("g2", range(1_000))  # the trial audience was emptied at the source
    seen: dict = {}

    def look_then_reject(run_id: str) -> None:
        seen["url"], seen["waiting"] = get_page(api, AUDIENCES_DAG, run_id)
        api.respond(run_id, "Reject")

    run = run_dag(7, on_approval=look_then_reject)

    assert run.state == "failed"
    waiting = seen["waiting"]
    plan = json.loads((state_dir / "runs" / run_key_for(run.run_id) / "plan.json").read_text())
    assert "Waiting for approval: the guard stopped this run before anything was sent to Braze." in waiting.text
    assert "without an answer within 12 h the run fails" in waiting.text
    assert "No report yet (report: " in waiting.text
    for slug, numbers in plan["audiences"].items():
        assert (waiting.number(slug, "adds"), waiting.number(slug, "removes")) == (numbers["adds"], numbers["removes"])
        assert waiting.number(slug, "requests") == 0  # nothing sent
    assert waiting.number("trial", "removes") == 300
    assert waiting.rows["trial"]["guard"] == "tripped" and waiting.rows["loyal"]["guard"] == "ok"
    assert "approval: required - tripped for trial" in waiting.text
    assert "would remove 300 of the 300 committed members (100%" in waiting.text
    assert "planned_payloads.jsonl" not in waiting.files and "plan.json" in waiting.files

    # After the rejection: the report task failed, the page says so and still shows the numbers.
    _, after = get_page(api, AUDIENCES_DAG, run.run_id)
    assert "The report task failed (see its log): this run was not committed" in after.text
    assert "Answer: Reject by oncall" in after.text
    assert after.number("trial", "removes") == 300
    # A real (not dry) run has no planned payloads: nothing to serve.
    r = browser(api).get(seen["url"] + "/files/planned_payloads.jsonl", timeout=30)
    assert r.status_code == 404


@pytest.mark.sshd
def test_a_segment_run_report_shows_each_delivery_and_serves_the_quarantine_files(api, tmp_path, monkeypatch,
                                                                                 sftp_upload_dir, airflow_db):
    sshd = sftp_upload_dir
    with BrazeSandbox("run-report-key", [SegmentSpec("seg_ok", 1_000, malformed_every=250),  # 4 rows: 0.4%
                                         SegmentSpec("seg_bad", 400, malformed_every=20)],  # 20 rows: 5%
                      export_delay=0.5) as braze:
        monkeypatch.setenv("AIRFLOW_CONN_BRAZE_DEFAULT", json.dumps(
            {"conn_type": "http", "host": braze.url, "password": "run-report-key"}))
        monkeypatch.setenv("AIRFLOW_CONN_LYTICS_SFTP", sshd.conn_json(sshd.key_user, auth="key"))
        monkeypatch.setenv("BRAZE_LYTICS_CONFIG", write_config(tmp_path, [
            {"name": "rr_ok", "segment_id": "seg_ok", "compression": "gzip", "columns": GZIP_COLUMNS},
            {"name": "rr_bad", "segment_id": "seg_bad", "columns": GZIP_COLUMNS}]))
        dag_run = run_segments_dag()
    assert dag_run.state == "failed"  # rr_bad rejected too many rows; rr_ok was delivered
    tis = {(ti.task_id, ti.rendered_map_index): ti for ti in dag_run.get_task_instances()}
    ok = tis[("segment.transfer", "rr_ok")].xcom_pull(task_ids="segment.transfer", map_indexes=0)

    url, page = get_page(api, SEGMENTS_DAG, dag_run.run_id)

    row = page.rows["rr_ok"]
    for key in ("rows_read", "rows_written", "rows_quarantined", "bytes"):
        assert page.number("rr_ok", key) == ok[key], key
    assert (ok["rows_read"], ok["rows_quarantined"]) == (1_000, 4)
    assert row["remote_path"] == ok["remote_path"] == "/upload/rr_ok_20261123.csv.gz"
    assert row["sha256"] == ok["sha256"] and len(ok["sha256"]) == 64
    assert page.rows["rr_bad"]["rows_read"] == "-"  # nothing delivered
    assert "summarize failed: 1 of 2 segment(s) were not delivered (rr_bad)" in page.text
    assert page.number("rows_written", "rows_written") == ok["rows_written"]

    quarantine = Path(os.environ["BRAZE_LYTICS_QUARANTINE_DIR"])
    for name, rejected in (("rr_ok", 4), ("rr_bad", 20)):
        link = next(h for h in page.links if h.endswith(f"/quarantine/{name}"))
        r = browser(api).get(urljoin(url, link), timeout=60)
        assert r.status_code == 200, r.text
        assert r.content == (quarantine / name / f"{name}_20261123.quarantine.csv").read_bytes()
        assert len(r.text.splitlines()) == 1 + rejected
        assert 'filename="braze_segments_to_lytics__' in r.headers["content-disposition"]
        assert r.headers["content-type"].startswith("text/csv")
        assert_refused(api, urljoin(url, link))
    for forged in ("rr_missing", "..%2Frr_ok", "rr_ok%2F..%2F..%2Frr_ok", "%2e%2e"):
        assert browser(api).get(f"{url}/quarantine/{forged}", timeout=30).status_code in (400, 404), forged
    assert_refused(api, url)


def test_quarantine_in_a_shared_bucket_is_written_by_the_transfer_and_served_by_another_process(
        tmp_path, tmp_path_factory, monkeypatch, sftp_upload_dir, airflow_db, s3_bucket):
    """BRAZE_LYTICS_QUARANTINE_URL: the rejected rows go to the bucket (through an Airflow connection),
    nothing stays on the worker's disk, and an API server in another process serves them."""
    sshd = sftp_upload_dir
    local = tmp_path / "local-quarantine"
    monkeypatch.setenv("BRAZE_LYTICS_QUARANTINE_DIR", str(local))
    monkeypatch.setenv("BRAZE_LYTICS_QUARANTINE_URL", f"s3://team_q@{s3_bucket.name}/quarantine")
    monkeypatch.setenv("AIRFLOW_CONN_TEAM_Q", json.dumps({
        "conn_type": "aws", "login": s3_bucket.access_key, "password": s3_bucket.secret_key,
        "extra": {"endpoint_url": s3_bucket.endpoint_url, "region_name": s3_bucket.region}}))
    with BrazeSandbox("run-report-key", [SegmentSpec("seg_ok", 1_000, malformed_every=250),
                                         SegmentSpec("seg_bad", 400, malformed_every=20)],
                      export_delay=0.5) as braze:
        monkeypatch.setenv("AIRFLOW_CONN_BRAZE_DEFAULT", json.dumps(
            {"conn_type": "http", "host": braze.url, "password": "run-report-key"}))
        monkeypatch.setenv("AIRFLOW_CONN_LYTICS_SFTP", sshd.conn_json(sshd.key_user, auth="key"))
        monkeypatch.setenv("BRAZE_LYTICS_CONFIG", write_config(tmp_path, [
            {"name": "sq_ok", "segment_id": "seg_ok", "columns": GZIP_COLUMNS},
            {"name": "sq_bad", "segment_id": "seg_bad", "columns": GZIP_COLUMNS}]))
        dag_run = run_segments_dag()
    assert dag_run.state == "failed"  # sq_bad rejected too many rows (its rows must still be reviewable)
    tis = {(ti.task_id, ti.rendered_map_index): ti for ti in dag_run.get_task_instances()}
    ok = tis[("segment.transfer", "sq_ok")].xcom_pull(task_ids="segment.transfer", map_indexes=0)
    keys = {name: f"quarantine/{name}/{name}_20261123.quarantine.csv" for name in ("sq_ok", "sq_bad")}
    assert sorted(s3_bucket.keys("quarantine/")) == sorted(keys.values())
    assert ok["quarantine_file"].startswith("s3://") and ok["quarantine_file"].endswith(keys["sq_ok"])
    assert not [p for p in local.rglob("*") if p.is_file()]  # no customer rows left on the worker

    server = AirflowApi(tmp_path_factory.mktemp("run-report-q"))  # started with the quarantine URL in its env
    try:
        url, page = get_page(server, SEGMENTS_DAG, dag_run.run_id)
        for name, rejected in (("sq_ok", 4), ("sq_bad", 20)):
            link = next(h for h in page.links if h.endswith(f"/quarantine/{name}"))
            r = browser(server).get(urljoin(url, link), timeout=60)
            assert r.status_code == 200, r.text
            assert r.content == s3_bucket.get(keys[name])
            assert len(r.text.splitlines()) == 1 + rejected
            assert_refused(server, urljoin(url, link))
    finally:
        server.stop()


# ------------------------------------------------------------------ file resolution (no server needed)
def test_the_quarantine_file_is_found_where_the_transfer_writes_it_and_nowhere_else(tmp_path):
    from datetime import UTC, datetime

    from braze_lytics.ui.run_report_files import ds_nodash, quarantine_path
    from include.segments_to_lytics.config import parse_config
    from include.segments_to_lytics.transfer import TransferJob

    config = parse_config({"segments": [{"name": "vip-users", "segment_id": "s1", "file_root": "braze.vip",
                                         "columns": {"user_id": "external_id"}}]}, tmp_path / "pipeline.yaml")
    [segment] = config.segments
    day = datetime(2026, 11, 23, 23, 30, tzinfo=UTC)
    written = TransferJob(segment=segment, logical_date=day, sftp=None, quarantine_dir=tmp_path / "q").quarantine_path
    planned = segment.to_dict()
    assert quarantine_path(tmp_path / "q", planned, ds_nodash(day)) is None  # nothing quarantined: no link
    written.parent.mkdir(parents=True)
    written.write_text("reason\n")
    assert quarantine_path(tmp_path / "q", planned, ds_nodash("2026-11-23T23:30:00Z")) == written.resolve()

    (tmp_path / "q" / "other").mkdir()
    (tmp_path / "secret.quarantine.csv").write_text("x")
    for forged in ({**planned, "name": "../vip-users"}, {**planned, "name": ".."}, {**planned, "file_root": "../x"},
                   {**planned, "name": "other", "file_root": "../../secret"}, {**planned, "file_root": None, "name": None}):
        assert quarantine_path(tmp_path / "q", forged, "20261123") is None, forged
    assert quarantine_path(tmp_path / "q", planned, "2026112") is None
    os.symlink(tmp_path / "secret.quarantine.csv", tmp_path / "q" / "other" / "other_20261123.quarantine.csv")
    assert quarantine_path(tmp_path / "q", {"name": "other", "file_root": "other"}, "20261123") is None


def test_audience_files_are_named_by_the_run_files_helpers_and_state_urls_are_limited(monkeypatch):
    from braze_lytics.ui.run_report_files import UnservedStore, audience_file_key, state_store
    from include.audiences_to_braze import run_files

    run_id = "manual__2026-11-23T01:00:00+00:00"
    key = run_key_for(run_id)
    assert audience_file_key(run_id, "planned_payloads.jsonl") == run_files.payloads_key(key)
    assert audience_file_key(run_id, "parked.csv") == run_files.parked_key(key)
    assert audience_file_key(run_id, "dead_letters.parquet") == run_files.dead_letter_key(key)
    assert audience_file_key("../../etc", "plan.json") == "runs/_.._etc/plan.json"  # one file-safe segment
    for name in ("../plan.json", "chunks/0.parquet", "committed.json", ""):
        assert audience_file_key(run_id, name) is None
    for url in ("http://169.254.169.254/latest", "https://example.com/state", "ftp://host/x",
                "simplecache::http://host/x", "sftp://host/state"):
        with pytest.raises(UnservedStore):
            state_store({"state_url": url})
