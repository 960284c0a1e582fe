"""The "Kill" fault test, through real Airflow: SIGKILL a running `deliver_chunk` task of
`lytics_audiences_to_braze` at random points (5 runs), clear it through the REST API as the on-call
person would, run again, and check the outcome exactly.

The stack is the real one (scripts/up.sh: PostgreSQL, moto S3 state store, the Braze and Lytics
sandboxes over HTTP, scheduler + api-server + LocalExecutor), started for this module with its own
settings file (`_settings`): smaller Lytics audiences, no background churn, delivery paced at 60
requests per 3 s and one chunk per run, so that each run's ~100 `/users/track` requests take ~6 s
and a kill can land early, in the middle or late, and every request Braze receives belongs to the
one task being killed. `BRAZE_LYTICS_TASK_RETRIES=0`: the killed try is the last one (as when the
retries are used up), so the run fails and the on-call person has to act.

Per run:

1. Lytics membership changes through the sandbox's loopback-only control endpoints (members join
   or leave); runs with many removes pass the documented `allow_large_change` param (the guard's
   verdict is recorded, the run does not wait), the others do not trip the guard.
2. The run is triggered over the REST API; once `deliver_chunk[0]` runs and Braze has received a
   random number of its requests (seeded RNG, printed; spread over early / middle / late), the
   task's own process is SIGKILLed: the TI's `pid` (the task runner the supervisor forked), checked
   to be a descendant of the scheduler whose title names this TI and that holds a connection to Braze.
3. Airflow notices (the supervisor sees the child die: the TI fails, `commit` is upstream_failed,
   `report` fails saying "clear the failed deliver_chunk tasks to finish this one"); the run fails.
   The on-call person does what the runbook and that message say: clear the failed
   `deliver_chunk[0]` with its downstream tasks (`POST /api/v2/dags/{dag_id}/clearTaskInstances`,
   `only_failed`, `include_downstream`), which re-queues the run.
4. The run succeeds. Checked: Braze's `lytics_segments` of every profile equals the Lytics
   membership exactly; objects Braze applied twice (sandbox `objects_applied` minus the plan's users)
   <= what the delivery guarantees: one checkpoint interval (CHECKPOINT_EVERY batches) plus the
   requests in flight, x batch size (`max_resent_batches`; the figures show how much was re-sent and
   whether it stayed within one interval); each audience's snapshot was
   committed exactly once (S3 versioning is switched on for the state bucket: one version of
   `audiences/<slug>/committed.json` and of the run's `committed.json` marker per run).

Seed: KILL_TEST_SEED (default below); the figures are printed at the end (run with -s to see them live).
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import time
from pathlib import Path

import boto3
import pytest
import requests
import yaml

from include.audiences_to_braze import run_files
from include.audiences_to_braze.delivery import CHECKPOINT_EVERY, max_resent_batches
from sandbox import stack_procs
from sandbox.stack_services import REPO, S3_BUCKET
from tests.stack.conftest import Stack, started_stack

pytestmark = [pytest.mark.slow, pytest.mark.stack, pytest.mark.timeout(900)]

DAG_ID = "lytics_audiences_to_braze"
SEED = int(os.environ.get("KILL_TEST_SEED") or 20261203)
STATE_PREFIX = "lytics-to-braze"  # the stack's state_url: s3://<bucket>/lytics-to-braze
RATE_LIMIT_REQUESTS = 60  # per 3 s: ~18 requests/s for the one delivery task (the pool's slots held back)
RUN_TIMEOUT = 180  # one run, kill and clear included, on a loaded 2-core machine (measured: 27-65 s)
NOTICE_TIMEOUT = 60  # kill -> the TI is failed (measured: 0.0-0.4 s; the supervisor sees its child die)

# What each run changes in Lytics before it is triggered: (audience slug, "add" | "remove", count).
# Run 1 is the first sync (every member is an add); the guard checks removes only against a committed
# snapshot, so runs 3 and 5 (44 % / 23 % of an audience leaving) need `allow_large_change`.
RUNS: list[tuple[list[tuple[str, str, int]], bool]] = [
    ([], False),
    ([("high_value", "add", 7500)], False),
    ([("high_value", "remove", 6000), ("churn_risk", "add", 2000)], True),
    ([("churn_risk", "add", 7000)], False),
    ([("churn_risk", "remove", 3000), ("high_value", "add", 4000)], True),
]
# Where the kill lands, as a share of the run's requests: one draw in each fifth of [0.05, 0.90], the
# fifths shuffled over the runs (so every seed spreads them over early, middle and late delivery).
KILL_RANGE = (0.05, 0.90)


def _settings(path: Path) -> Path:
    """The stack's settings file for this module: airflow_settings.yaml with a smaller, still Lytics."""
    settings = yaml.safe_load((REPO / "airflow_settings.yaml").read_text())
    sandbox = settings["braze_lytics"]["sandbox"]
    sandbox["braze_segments"] = ["seg_all_users:500:name=All users", "seg_vip_users:100:name=VIP users"]
    sandbox["lytics_audiences"] = [
        "aud_high_value:high_value:6000:name=High value,seed=1,universe=20000,missing_id_every=250",
        "aud_churn_risk:churn_risk:3000:name=Churn risk,seed=2,universe=20000",
    ]
    sandbox["lytics_churn_every_minutes"] = 0  # membership changes only when the test says so
    settings["braze_lytics"]["pipeline"]["overrides"]["lytics_to_braze"].update(
        rate_limit_requests=RATE_LIMIT_REQUESTS, max_chunks=1)
    path.write_text(yaml.safe_dump(settings, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def stack():
    """scripts/up.sh with this module's settings file and no task retries (see the module doc)."""
    def up_args(state_dir: Path) -> tuple[str, ...]:
        return "--settings", str(_settings(state_dir / "kill_test_settings.yaml"))

    # BRAZE_LYTICS_TASK_RETRIES is inherited by every Airflow process of the stack
    with started_stack("bl-kill-", up_args, env={"BRAZE_LYTICS_TASK_RETRIES": "0"}) as st:
        yield st


class Sandboxes:
    """The stack's Braze and Lytics sandboxes and its S3 state bucket, as the test sees them."""

    def __init__(self, stack: Stack):
        self.info = stack.info
        secrets = json.loads((stack.state_dir / "secrets.json").read_text())
        self.braze_auth = {"Authorization": f"Bearer {secrets['braze_api_key']}"}
        self.lytics_auth = {"Authorization": secrets["lytics_token"]}  # raw token, as Lytics wants it
        self.s3 = boto3.session.Session().client(
            "s3", endpoint_url=stack.info["s3_url"], region_name="us-east-1",
            aws_access_key_id=secrets["s3_access_key"], aws_secret_access_key=secrets["s3_secret_key"])
        self.http = requests.Session()

    # Braze
    def braze_stats(self) -> dict:
        resp = self.http.get(f"{self.info['braze_url']}/_sandbox/stats", headers=self.braze_auth, timeout=30)
        resp.raise_for_status()
        return resp.json()

    def braze_segments(self) -> dict[str, list[str]]:
        """external_id -> sorted lytics_segments, for every profile whose array is not empty."""
        resp = self.http.get(f"{self.info['braze_url']}/_sandbox/profiles",
                             params={"attr": "lytics_segments", "by": "external_id"}, headers=self.braze_auth,
                             timeout=60)
        resp.raise_for_status()
        return resp.json()

    # Lytics
    def change(self, slug: str, action: str, count: int) -> dict:
        resp = self.http.post(f"{self.info['lytics_url']}/_sandbox/audiences/{slug}/{action}",
                              json={"count": count}, headers=self.lytics_auth, timeout=30)
        assert resp.status_code == 200, resp.text
        return resp.json()["data"]

    def lytics_segments(self, slugs: tuple[str, ...] = ("high_value", "churn_risk")) -> dict[str, list[str]]:
        """braze_id -> sorted audiences, from full scans: a user gets an audience's slug only when that
        audience's scan shows the id (a member without it there is skipped, never guessed from another)."""
        out: dict[str, set[str]] = {}
        for slug in slugs:
            start = ""
            while True:
                params = {"limit": 100, "fields": "braze_id"} | ({"start": start} if start else {})
                resp = self.http.get(f"{self.info['lytics_url']}/api/segment/{slug}/scan", params=params,
                                     headers=self.lytics_auth, timeout=30)
                resp.raise_for_status()
                body = resp.json()
                for rec in body["data"]:
                    if rec.get("braze_id"):
                        out.setdefault(rec["braze_id"], set()).add(slug)
                start = body["_next"]
                if not start:
                    break
        return {k: sorted(v) for k, v in out.items()}

    # S3 state store
    def read_json(self, key: str) -> dict | None:
        try:
            obj = self.s3.get_object(Bucket=S3_BUCKET, Key=f"{STATE_PREFIX}/{key}")
        except self.s3.exceptions.NoSuchKey:
            return None
        return json.loads(obj["Body"].read())

    def versions(self, key: str) -> list[dict]:
        """Every stored version of `key` (its JSON), oldest first."""
        full = f"{STATE_PREFIX}/{key}"
        listed = self.s3.list_object_versions(Bucket=S3_BUCKET, Prefix=full).get("Versions", [])
        found = sorted((v for v in listed if v["Key"] == full), key=lambda v: v["LastModified"])
        return [json.loads(self.s3.get_object(Bucket=S3_BUCKET, Key=full, VersionId=v["VersionId"])["Body"].read())
                for v in found]


# ------------------------------------------------------------------------------------ Airflow helpers
def _run_state(stack, run_id: str) -> str:
    resp = stack.api("GET", f"/dags/{DAG_ID}/dagRuns/{run_id}")
    resp.raise_for_status()
    return resp.json()["state"]


def _tis(stack, run_id: str) -> dict[tuple[str, int], dict]:
    resp = stack.api("GET", f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances", params={"limit": 100})
    resp.raise_for_status()
    return {(t["task_id"], t["map_index"]): t for t in resp.json()["task_instances"]}


def _states(stack, run_id: str) -> dict[str, str]:
    return {f"{k[0]}[{k[1]}]" if k[1] >= 0 else k[0]: t["state"] for k, t in _tis(stack, run_id).items()}


def _wait(what: str, check, timeout: float, interval: float = 0.25, on_timeout=lambda: ""):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    pytest.fail(f"{what}: not within {timeout:.0f}s. {on_timeout()}")


def _task_process(stack, ti: dict, braze_port: int) -> int:
    """The pid of the process running the task's code, checked: the TI's `pid` is the task runner
    the supervisor forked (a descendant of the scheduler: LocalExecutor worker -> supervisor ->
    task runner), its title names this TI's id, and it holds a TCP connection to the Braze sandbox."""
    pid = ti["pid"]
    assert pid and pid in stack_procs._family(stack.info["pids"]["airflow-scheduler"]), ti
    title = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    assert ti["id"] in title and "LocalExecutor" not in title, title  # the runner, not the supervisor
    assert braze_port in _tcp_peers(pid), f"pid {pid} has no connection to Braze (port {braze_port})"
    return pid


def _tcp_peers(pid: int) -> set[int]:
    """Remote ports of the established TCP connections (IPv4) held by process `pid`."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    peers = set()
    for line in Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[9] in inodes and fields[3] == "01":  # ESTABLISHED
            peers.add(int(fields[2].rsplit(":", 1)[1], 16))
    return peers


def _kill_points(rng: random.Random, n: int) -> list[tuple[str, float]]:
    lo, hi = KILL_RANGE
    width = (hi - lo) / n
    shares = [round(rng.uniform(lo + i * width, lo + (i + 1) * width), 3) for i in range(n)]
    rng.shuffle(shares)
    return [("early" if s < 1 / 3 else "middle" if s < 2 / 3 else "late", s) for s in shares]


FIGURES: list[dict] = []


# ------------------------------------------------------------------------------------------- the test
def test_kill_delivery_clear_and_rerun(stack):
    sb = Sandboxes(stack)
    sb.s3.put_bucket_versioning(Bucket=S3_BUCKET, VersioningConfiguration={"Status": "Enabled"})
    braze_port = int(stack.info["braze_url"].rsplit(":", 1)[1])
    resp = stack.api("PATCH", f"/dags/{DAG_ID}", json={"is_paused": False})
    assert resp.status_code == 200, resp.text
    rng = random.Random(SEED)
    points = _kill_points(rng, len(RUNS))
    print(f"\nkill test: seed {SEED} (KILL_TEST_SEED), kill points {points}")
    started = time.monotonic()

    for n, ((changes, allow_large), (band, share)) in enumerate(zip(RUNS, points, strict=True), start=1):
        t0 = time.monotonic()
        for slug, action, count in changes:
            sb.change(slug, action, count)
        expected = sb.lytics_segments()
        before = sb.braze_segments()
        users_changed = sum(1 for uid in set(expected) | set(before) if expected.get(uid, []) != before.get(uid, []))
        stats0 = sb.braze_stats()

        resp = stack.api("POST", f"/dags/{DAG_ID}/dagRuns",
                         json={"logical_date": None, "conf": {"allow_large_change": True} if allow_large else {}})
        assert resp.status_code == 200, resp.text
        run_id = resp.json()["dag_run_id"]
        run_key = run_files.run_key_for(run_id)
        where = f"run {n} ({run_id})"

        def delivering(run_id=run_id, where=where):
            ti = _tis(stack, run_id).get(("deliver_chunk", 0))
            state = _run_state(stack, run_id)
            assert state in ("queued", "running"), f"{where} ended before delivery: {state} {_states(stack, run_id)}"
            return ti if ti and ti["state"] == "running" and ti["pid"] else None

        ti = _wait(f"{where}: deliver_chunk[0] running", delivering, RUN_TIMEOUT)
        plan = sb.read_json(run_files.plan_key(run_key))
        assert plan is not None and plan["chunks"] == 1, plan
        assert plan["users"] == users_changed, (plan["users"], users_changed)
        guard = plan["guard"]
        assert guard["tripped"] is allow_large, guard  # the runs with many removes trip it, the others not
        batch_size = plan["options"]["batch_size"]
        batches = math.ceil(plan["users"] / batch_size)
        kill_at = min(batches - 5, max(1, round(share * batches)))

        def reached(ti=ti, kill_at=kill_at, where=where, stats0=stats0):
            sent = sb.braze_stats()["requests"] - stats0["requests"]
            assert Path(f"/proc/{ti['pid']}").exists(), f"{where}: the task ended before request {kill_at} ({sent})"
            return sent >= kill_at

        _wait(f"{where}: {kill_at} requests to Braze", reached, RUN_TIMEOUT, interval=0.02)
        pid = _task_process(stack, ti, braze_port)
        os.kill(pid, signal.SIGKILL)
        t_kill = time.monotonic()
        at_kill = sb.braze_stats()
        sent_at_kill = at_kill["requests"] - stats0["requests"]
        applied_at_kill = at_kill["objects_applied"] - stats0["objects_applied"]

        def noticed(run_id=run_id):
            return _tis(stack, run_id)[("deliver_chunk", 0)]["state"] in ("failed", "up_for_retry")

        _wait(f"{where}: Airflow noticing the kill", noticed, NOTICE_TIMEOUT,
              on_timeout=lambda run_id=run_id: str(_states(stack, run_id)))
        t_noticed = time.monotonic()
        _wait(f"{where}: the run failing", lambda run_id=run_id: _run_state(stack, run_id) == "failed", RUN_TIMEOUT,
              on_timeout=lambda run_id=run_id: str(_states(stack, run_id)))
        failed_states = _states(stack, run_id)
        assert failed_states["deliver_chunk[0]"] == "failed" and failed_states["commit"] == "upstream_failed", \
            failed_states
        assert sb.read_json(run_files.committed_marker(run_key)) is None  # nothing committed by the killed run
        checkpoint = sb.read_json(run_files.progress_key(run_key, 0)) or {"rows_done": 0, "done": False}
        assert not checkpoint["done"]
        t_failed = time.monotonic()

        # On call: clear the failed delivery and what it holds up (commit, report), as `report` says.
        resp = stack.api("POST", f"/dags/{DAG_ID}/clearTaskInstances", json={
            "dry_run": False, "dag_run_id": run_id, "task_ids": [["deliver_chunk", 0]],
            "include_downstream": True, "only_failed": True, "reset_dag_runs": True,
            "note": "kill test: delivery process SIGKILLed; cleared to resume from its checkpoint"})
        assert resp.status_code == 200, resp.text
        cleared = sorted(f"{t['task_id']}[{t['map_index']}]" for t in resp.json()["task_instances"])
        assert cleared == ["commit[-1]", "deliver_chunk[0]", "report[-1]"], cleared
        _wait(f"{where}: the cleared run finishing", lambda run_id=run_id: _run_state(stack, run_id) in
              ("success", "failed"), RUN_TIMEOUT)
        final_states = _states(stack, run_id)
        assert _run_state(stack, run_id) == "success", final_states
        t_done = time.monotonic()

        after = sb.braze_segments()
        stats1 = sb.braze_stats()
        applied = stats1["objects_applied"] - stats0["objects_applied"]
        resent = applied - plan["users"]  # what Braze applied beyond one object per planned user
        interval = CHECKPOINT_EVERY * batch_size
        bound = max_resent_batches() * batch_size  # what the delivery guarantees: the interval + what was on the wire
        tries = {f"{k[0]}[{k[1]}]": t["try_number"] for k, t in _tis(stack, run_id).items()
                 if k[0] in ("deliver_chunk", "commit")}
        fig = {"run": n, "band": band, "share": share, "users": plan["users"], "batches": batches,
               "kill_at": kill_at, "sent_at_kill": sent_at_kill, "applied_at_kill": applied_at_kill,
               "checkpoint_rows": checkpoint["rows_done"], "resent": resent, "interval": interval,
               "guard_tripped": guard["tripped"], "tries": tries,
               "trigger_to_kill_s": round(t_kill - t0, 1), "kill_to_failed_s": round(t_noticed - t_kill, 1),
               "kill_to_run_failed_s": round(t_failed - t_kill, 1), "clear_to_success_s": round(t_done - t_failed, 1),
               "run_s": round(t_done - t0, 1)}
        FIGURES.append(fig)
        print(f"kill test {fig}", flush=True)

        # Exact final state: every profile's lytics_segments is the Lytics membership.
        wrong = {uid: (after.get(uid), expected.get(uid)) for uid in set(after) | set(expected)
                 if after.get(uid) != expected.get(uid)}
        assert not wrong, f"{where}: {len(wrong)} profiles differ from Lytics, e.g. {list(wrong.items())[:5]}"

        # At most one checkpoint interval re-sent (no faults and no 429s here: every extra object is a re-send).
        # (Braze may still apply a request that was on the wire when the process died, so applied_at_kill,
        # read just after the kill, can be a batch short; the re-sent count is exact.)
        assert stats1["rate_limited"] == stats0["rate_limited"] and stats1["faults_injected"] == 0, stats1
        assert 0 <= resent <= bound, (f"{where}: {resent} objects re-sent, more than the {bound} (one checkpoint "
                                      f"interval of {interval} plus the requests in flight) the delivery guarantees")

        # The killed try and the one after the clear; commit ran once, after the delivery was complete.
        assert tries == {"deliver_chunk[0]": 2, "commit[-1]": 1}, tries
        # Committed exactly once: one version of each audience's pointer and of the run's marker.
        markers = sb.versions(run_files.committed_marker(run_key))
        assert len(markers) == 1, markers
        for slug in plan["audiences"]:
            mine = [v for v in sb.versions(f"audiences/{slug}/committed.json") if v["run_key"] == run_key]
            assert len(mine) == 1, (slug, mine)
            assert sb.read_json(f"audiences/{slug}/committed.json")["run_key"] == run_key

    total = time.monotonic() - started
    print(f"\nkill test: seed {SEED}, {len(FIGURES)} runs in {total:.0f}s")
    print("| run | band | kill at request | of | checkpoint (rows) | applied at kill | re-sent | kill->failed | "
          "kill->run failed | clear->success | run |")
    for f in FIGURES:
        print(f"| {f['run']} | {f['band']} {f['share']:.2f} | {f['sent_at_kill']} ({f['kill_at']}) | {f['batches']} | "
              f"{f['checkpoint_rows']:,} | {f['applied_at_kill']:,} | {f['resent']:,} | {f['kill_to_failed_s']} s | "
              f"{f['kill_to_run_failed_s']} s | {f['clear_to_success_s']} s | {f['run_s']} s |")
