"""Benchmark (b) of the Lytics -> Braze pipeline: delivery against a rate-limited Braze sandbox.

    .venv/bin/python -m bench.run_l2b_delivery [--changes 200000] [--limit 1000] [--window 1.0]
                                               [--workers 4] [--repeats 3] [--out bench/results_l2b_delivery.md]

Target (the issue): deliver `--changes` user changes (`{"external_id": "u000000", "lytics_segments":
{"add": ["bench_aud"]}}`, 75 per request) to the Braze sandbox with its `/users/track` limit set to
`--limit` requests per `--window` s; achieved requests/s >= 90% of the limit, and no 429 caused by
our own pacing.

Server: `python -m sandbox.braze_server --track-rate-limit L --track-rate-window W -q` in its own
process (its own GIL), on a free loopback port, restarted for every run (empty profiles, empty
window). By default (`--sandbox-gc watch`) the same CLI runs through a small wrapper (`runpy`; the
sandbox file is not changed) that only *times* the sandbox's garbage-collector pauses with
`gc.callbacks` - behaviour unchanged, a few microseconds per collection. Other modes, for
investigation: `plain` (the bare CLI, no GC figures), `freeze` (`gc.freeze()` after the server's
imports), `tuned` (`gc.freeze()` + `gc.set_threshold(50_000, 20, 100)`: no full collection in a
200,000-profile run), `off` (`gc.disable()`).

Client: the pipeline's own path. The changes are written once as chunk Parquet files in a temp
`StateStore` (`split_chunks(table, workers, 1)` -> `runs/<key>/chunks/<i>.parquet`, as
`plan_changes` does), then every chunk is delivered by `include.audiences_to_braze.delivery.deliver_chunk` with
`BrazeTrackClient.track` (requests, retries, `observe()` of the rate-limit headers, checkpoints
every 20 batches with fsync - all included). Variants:

- `processes` (headline; the DAG's shape): one fresh process per chunk, like the mapped
  `deliver_chunk` tasks in the `braze_api` pool, each with its own `RateLimiter(limit // workers,
  window)` (`braze_lytics.tasks.audiences_to_braze.deliver_chunk` splits the budget the same way);
- `threads` (context): one process, one thread per chunk, each with its own client and session,
  all sharing one `RateLimiter(limit, window)`;
- `processes-gc-tuned` (context): `processes` against a sandbox whose GC is `tuned` (above) - what
  the sandbox's full collections (~0.1 s each, ~10 per 200,000-profile run) cost;
- `unpaced` (context, the machine's ceiling): the `processes` shape against a sandbox and
  limiters with an effectively infinite limit - how many requests/s this machine can move at all.

Experiment switches (off by default; the headline always uses the pipeline as it is): `--margin`
(the RateLimiter's margin), `--observe floor` (the limiter reads `X-RateLimit-Reset` - an epoch
second rounded up - as one second earlier, i.e. holds only until the earliest instant it can
mean), `--rtt-ms` (every response held that long in the client: a simulated network round trip),
`--profile` (cProfile of the workers).

The worker processes import and build their clients first, report READY, and start together when
the parent says GO (process start-up is not in the measurement; reading the chunk and building
the batches is). Every attempt's send time (when the limiter let it go) and every response's
time and status are recorded client side (`time.monotonic`, one clock for all processes on Linux).

Measured per run: requests and 429s (sandbox `/_sandbox/stats` before/after: `requests`,
`rate_limited`), retries (deliver_chunk's progress), span = first request sent -> last response
received, achieved requests/s = requests / span, share = achieved / (limit / window); the
steady-state *window fill* = requests sent in the complete windows [t0, t0 + k*W) / (k * limit);
the busiest sliding window seen by the client; CPU of the sandbox and of the client processes;
the sandbox's GC pauses; the limiter's holds (from `observe()` of `X-RateLimit-Remaining: 0`, and
from `pause()` after a 429) and when each process sent its first and got its last answer.
Checked: the sandbox holds exactly `--changes` profiles, each with lytics_segments == ["bench_aud"]
(`/_sandbox/profiles`).
Each variant runs `--repeats` times (alternating); the table gives the median run and the best.
The command reports; it does not gate (exit 0 even when a target is missed or a run fails).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
API_KEY = "bench-l2b-delivery-key"
AUDIENCE = "bench_aud"
TARGET_SHARE = 0.90
UNPACED_LIMIT = 1_000_000_000

# The sandbox CLI run through runpy, optionally with the garbage collector watched / tuned.
# argv[1] = mode (watch|freeze|off), argv[2] = file for the GC report, rest = the CLI's arguments.
SANDBOX_WRAPPER = r"""
import gc, json, runpy, sys, time
mode, report = sys.argv[1], sys.argv[2]
sys.argv = ["sandbox.braze_server", *sys.argv[3:]]
pauses = {0: [], 1: [], 2: []}
started = [0.0]
def _cb(phase, info):
    if phase == "start":
        started[0] = time.perf_counter()
    else:
        pauses[info["generation"]].append(time.perf_counter() - started[0])
gc.callbacks.append(_cb)
if mode in ("freeze", "tuned"):
    import http.server, orjson, sandbox.braze_profiles, sandbox.braze_users  # noqa: F401 - the server's imports
    gc.collect()
    gc.freeze()  # start-up objects (modules, classes) are never traversed again
    if mode == "tuned":
        gc.set_threshold(50_000, 20, 100)
    for p in pauses.values():
        p.clear()  # the explicit collect above is not the server's
elif mode == "off":
    gc.disable()
try:
    runpy.run_module("sandbox.braze_server", run_name="__main__", alter_sys=True)
finally:
    with open(report, "w") as fh:
        json.dump({str(g): p for g, p in pauses.items()}, fh)
"""


# ------------------------------------------------------------------------------------------------
# Worker side: one fresh process per chunk (or one for all chunks as threads)
# ------------------------------------------------------------------------------------------------


def worker_main(task: dict) -> int:
    """Build the client(s), say READY, wait for GO on stdin, deliver, print BENCH_RESULT."""
    import resource

    from include.audiences_to_braze.delivery import deliver_chunk
    from include.audiences_to_braze.planning import PlanOptions
    from include.clients.braze.track import BrazeTrackClient
    from include.clients.state_store import StateStore
    from include.common.rate_limit import RateLimiter

    class RecordingLimiter(RateLimiter):
        """The pipeline's limiter; also notes when each attempt was let go and how long it waited."""

        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self.sends: list[float] = []
            self.waited = 0.0
            self.cpu_at_first = 0.0
            self.holds: list[tuple[str, float]] = []

        def acquire(self) -> float:
            waited = super().acquire()
            if not self.sends:
                self.cpu_at_first = time.process_time()  # the whole process (all threads)
            self.sends.append(time.monotonic())  # list.append is atomic under the GIL
            self.waited += waited
            return waited

        def observe(self, headers, now_epoch=None):
            before = self._blocked_until
            if task.get("observe") == "floor":  # experiment: the rounded-up reset's lower bound
                headers = {k: (str(float(v) - 1) if k.lower() == "x-ratelimit-reset" else v)
                           for k, v in headers.items()}
            super().observe(headers, now_epoch)
            hold = self._blocked_until - self._clock()
            if self._blocked_until > before and hold > 0:  # the server's headers (remaining 0) made us hold
                self.holds.append(("observe", hold))

        def pause(self, seconds):
            before = self._blocked_until
            super().pause(seconds)
            hold = self._blocked_until - self._clock()
            if self._blocked_until > before and hold > 0:  # a 429's Retry-After
                self.holds.append(("pause", hold))

    class TimedStore(StateStore):
        """The pipeline's state store; also times the progress checkpoints (fsync included)."""

        checkpoint_seconds = 0.0
        checkpoints = 0

        def write_json(self, key, value):
            t = time.perf_counter()
            super().write_json(key, value)
            TimedStore.checkpoint_seconds += time.perf_counter() - t
            TimedStore.checkpoints += 1

    options = PlanOptions(batch_size=task["batch_size"])
    store = TimedStore(task["store"])
    chunks: list[int] = task["chunks"]
    # processes: one limiter per process with limit // workers; threads: one limiter at the full limit.
    margin = {} if task.get("margin") is None else {"margin": task["margin"]}  # default: the pipeline's
    limiter = RecordingLimiter(task["budget"], task["window"], **margin)
    responses: list[tuple[float, int]] = []
    clients = []
    for _ in chunks:
        client = BrazeTrackClient(task["url"], API_KEY, limiter=limiter, batch_limit=task["batch_size"])
        if task.get("rtt_ms"):
            client.session.mount("http://", _delayed_adapter(task["rtt_ms"] / 1000))
        client.session.hooks["response"].append(
            lambda r, *a, **k: responses.append((time.monotonic(), r.status_code)))
        clients.append(client)
    results: dict[int, dict] = {}
    errors: list[str] = []
    track_seconds = [0.0]

    def timed(track):
        def call(batch, **kw):
            t = time.perf_counter()
            try:
                return track(batch, **kw)
            finally:
                track_seconds[0] += time.perf_counter() - t
        return call

    def deliver(i: int, client) -> None:
        try:
            results[i] = deliver_chunk(store, task["run_key"], i, timed(client.track), options)
        except Exception as exc:  # noqa: BLE001 - reported to the parent
            errors.append(f"chunk {i}: {type(exc).__name__}: {exc}"[:500])

    profiler = None
    if task.get("profile"):
        import cProfile

        profiler = cProfile.Profile()
    print("READY", flush=True)
    if sys.stdin.readline().strip() != "GO":
        return 1
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    t_go = time.monotonic()
    if profiler:
        profiler.enable()
    if len(chunks) == 1:
        deliver(chunks[0], clients[0])
    else:
        threads = [threading.Thread(target=deliver, args=(i, c)) for i, c in zip(chunks, clients, strict=True)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    t_end = time.monotonic()
    cpu_end = time.process_time()
    if profiler:
        profiler.disable()
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    connections = 0  # TCP connections the sessions opened (1 per client = keep-alive worked)
    for client in clients:
        pools = client.session.get_adapter(task["url"]).poolmanager.pools
        connections += sum(pools[k].num_connections for k in pools.keys())
    profile_text = ""
    if profiler:
        import io
        import pstats

        buf = io.StringIO()
        pstats.Stats(profiler, stream=buf).sort_stats("tottime").print_stats(25)
        profile_text = buf.getvalue()
    out = {
        "chunks": chunks,
        "t_go": t_go,
        "t_end": t_end,
        "sends": limiter.sends,
        "responses": responses,
        "waited": limiter.waited,
        "holds": limiter.holds,
        "track_seconds": track_seconds[0],
        "checkpoint_seconds": TimedStore.checkpoint_seconds,
        "checkpoints": TimedStore.checkpoints,
        "connections": connections,
        "cpu_in_span": cpu_end - limiter.cpu_at_first if limiter.sends else 0.0,
        "cpu_user": ru1.ru_utime - ru0.ru_utime,
        "cpu_sys": ru1.ru_stime - ru0.ru_stime,
        "progress": {i: {k: p[k] for k in ("sent", "requests", "retries")} | {"failed": len(p["failed"])}
                     for i, p in results.items()},
        "errors": errors,
        "profile": profile_text,
    }
    print("BENCH_RESULT " + json.dumps(out), flush=True)
    return 0


def _delayed_adapter(seconds: float):
    """An HTTPAdapter that holds every response `seconds` before returning it (a simulated network RTT)."""
    from requests.adapters import HTTPAdapter

    class DelayedAdapter(HTTPAdapter):
        def send(self, *a, **kw):
            resp = super().send(*a, **kw)
            time.sleep(seconds)
            return resp

    return DelayedAdapter()


# ------------------------------------------------------------------------------------------------
# Parent side: sandbox, data, runs
# ------------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str, timeout: float = 30.0) -> tuple[int, bytes]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {API_KEY}"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


class Sandbox:
    """`python -m sandbox.braze_server` in its own process (optionally through the GC wrapper)."""

    def __init__(self, limit: int, window: float, gc_mode: str, work: Path):
        import psutil

        self.gc_report = work / f"gc-{time.monotonic_ns()}.json"
        for _ in range(5):  # a free port can be taken between our probe and the server's bind
            self.port = free_port()
            cli = ["--host", "127.0.0.1", "--port", str(self.port), "--api-key", API_KEY,
                   "--track-rate-limit", str(limit), "--track-rate-window", str(window), "-q"]
            if gc_mode == "plain":
                cmd = [sys.executable, "-m", "sandbox.braze_server", *cli]
            else:
                cmd = [sys.executable, "-c", SANDBOX_WRAPPER, gc_mode, str(self.gc_report), *cli]
            self.proc = subprocess.Popen(cmd, cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.PIPE, env=child_env())
            self.url = f"http://127.0.0.1:{self.port}"
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and self.proc.poll() is None:
                try:
                    if http_get(f"{self.url}/_sandbox/stats", timeout=2)[0] == 200:
                        self.ps = psutil.Process(self.proc.pid)
                        return
                except OSError:
                    pass
                time.sleep(0.05)
            self.stop()
            why = self.proc.stderr.read().decode(errors="replace")[-1000:] if self.proc.stderr else ""
        raise RuntimeError(f"the Braze sandbox did not start: {why}")

    def stats(self) -> dict:
        status, body = http_get(f"{self.url}/_sandbox/stats")
        if status != 200:
            raise RuntimeError(f"/_sandbox/stats answered {status}")
        return json.loads(body)

    def profiles(self) -> dict:
        status, body = http_get(f"{self.url}/_sandbox/profiles?attr=lytics_segments", timeout=120)
        if status != 200:
            raise RuntimeError(f"/_sandbox/profiles answered {status}")
        return json.loads(body)

    def cpu(self) -> float:
        t = self.ps.cpu_times()
        return t.user + t.system

    def stop(self) -> dict:
        """Stop the server; its GC pauses ({generation: [seconds, ...]}) when the wrapper ran."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        try:
            return json.loads(self.gc_report.read_text())
        except (OSError, ValueError):
            return {}


def child_env() -> dict:
    return dict(os.environ)  # the project is installed (scripts/setup.sh); `-m bench...` runs from the repo root


def write_chunks(store_dir: Path, run_key: str, changes: int, chunks: int) -> None:
    """The changes as plan_changes writes them: a sorted per-user table split into contiguous chunks."""
    import pyarrow as pa

    from include.audiences_to_braze.diff import split_chunks
    from include.clients.state_store import StateStore

    width = max(6, len(str(changes - 1)))
    table = pa.table({
        "external_id": pa.array([f"u{i:0{width}d}" for i in range(changes)], pa.string()),
        "add": pa.array([[AUDIENCE]] * changes, pa.list_(pa.string())),
        "remove": pa.array([[]] * changes, pa.list_(pa.string())),
    })
    store = StateStore(str(store_dir))
    for i, chunk in enumerate(split_chunks(table, chunks, 1)):
        store.write_table(f"runs/{run_key}/chunks/{i}.parquet", chunk)


@dataclass
class Result:
    variant: str
    repeat: int
    load1: float
    requests: int = 0  # sandbox: POST /users/track that reached it
    accepted: int = 0
    rate_limited: int = 0  # sandbox: 429 from its limiter
    retries: int = 0  # deliver_chunk progress
    client_429: int = 0
    span: float = 0.0  # first send -> last response (s)
    send_span: float = 0.0  # first send -> last send (s)
    rate: float = 0.0  # requests / span
    share: float = 0.0  # rate / (limit / window)
    fill: float | None = None  # requests in complete windows / (windows * limit)
    windows: int = 0
    busiest: int = 0  # most sends in any sliding window (client side)
    profiles: int = 0
    verified: bool = False
    sandbox_cpu: float = 0.0
    client_cpu: float = 0.0  # GO -> end, all worker processes
    client_cpu_span: float = 0.0  # first send -> end (per process), all worker processes
    waited: float = 0.0  # summed over workers: time blocked in RateLimiter.acquire
    track_seconds: float = 0.0  # summed over workers: time inside track() (acquire + HTTP + parsing)
    checkpoint_seconds: float = 0.0
    checkpoints: int = 0
    connections: int = 0  # TCP connections opened by the clients
    go_to_first: float = 0.0  # GO -> first send (reading the chunk, building batches)
    per_worker: list = field(default_factory=list)  # (first send, last response) per process, s after t0
    holds: dict = field(default_factory=dict)  # {"observe"|"pause": [count, summed seconds]} limiter holds
    gc: dict = field(default_factory=dict)
    latency_ms: dict = field(default_factory=dict)  # send -> response percentiles
    profile: str = ""
    error: str = ""


def run_once(variant: str, repeat: int, args, store_dir: Path, work: Path) -> Result:
    """One delivery of all chunks against a fresh sandbox."""
    load1 = os.getloadavg()[0]
    res = Result(variant, repeat, load1)
    unpaced = variant == "unpaced"
    limit = UNPACED_LIMIT if unpaced else args.limit
    run_key = f"bench-{variant}-{repeat}"
    write_chunks(store_dir, run_key, args.changes, args.workers)
    sandbox = Sandbox(limit, args.window, "tuned" if variant == "processes-gc-tuned" else args.sandbox_gc, work)
    procs: list[subprocess.Popen] = []
    try:
        base = {"store": str(store_dir), "run_key": run_key, "url": sandbox.url, "window": args.window,
                "batch_size": args.batch_size, "profile": args.profile, "margin": args.margin,
                "rtt_ms": args.rtt_ms, "observe": args.observe}
        if variant == "threads":
            tasks = [base | {"chunks": list(range(args.workers)), "budget": limit}]
        else:
            tasks = [base | {"chunks": [i], "budget": max(1, limit // args.workers)} for i in range(args.workers)]
        for t in tasks:
            cmd = [sys.executable, "-m", "bench.run_l2b_delivery", "--worker", json.dumps(t)]
            procs.append(subprocess.Popen(cmd, cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, text=True, env=child_env()))
        for p in procs:
            line = p.stdout.readline().strip()
            if line != "READY":
                raise RuntimeError(f"worker did not start: {line!r} {p.stderr.read()[-2000:]}")
        before = sandbox.stats()
        cpu0 = sandbox.cpu()
        for p in procs:  # GO to all at once
            p.stdin.write("GO\n")
            p.stdin.flush()
        outs = []
        for p in procs:
            out, err = p.communicate(timeout=max(600.0, 5 * args.changes / args.batch_size / max(1, args.limit)))
            lines = [ln for ln in out.splitlines() if ln.startswith("BENCH_RESULT ")]
            if p.returncode != 0 or not lines:
                raise RuntimeError(f"worker exited {p.returncode}: {err[-2000:]}")
            outs.append(json.loads(lines[-1].removeprefix("BENCH_RESULT ")))
        res.sandbox_cpu = sandbox.cpu() - cpu0
        after = sandbox.stats()
        profiles = sandbox.profiles()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        res.gc = sandbox.stop()

    errors = [e for o in outs for e in o["errors"]]
    res.requests = after["requests"] - before["requests"]
    res.accepted = after["accepted"] - before["accepted"]
    res.rate_limited = after["rate_limited"] - before["rate_limited"]
    res.profiles = after["profiles"]
    res.verified = (len(profiles) == args.changes == after["profiles"] == after["objects_applied"]
                    and all(v == [AUDIENCE] for v in profiles.values()))
    progress = [p for o in outs for p in o["progress"].values()]
    res.retries = sum(p["retries"] for p in progress)
    sends = sorted(t for o in outs for t in o["sends"])
    responses = sorted(r for o in outs for r in o["responses"])
    res.client_429 = sum(1 for _, s in responses if s == 429)
    if sends and responses:
        t0 = sends[0]
        res.span = responses[-1][0] - t0
        res.send_span = sends[-1] - t0
        res.rate = res.requests / res.span if res.span > 0 else 0.0
        res.share = res.rate / (limit / args.window)
        res.windows = int(res.span // args.window)
        if res.windows and not unpaced:
            end = t0 + res.windows * args.window
            res.fill = sum(1 for t in sends if t < end) / (res.windows * limit)
        j = 0
        for i, t in enumerate(sends):  # two pointers: most sends within any [t, t + window)
            while sends[j] <= t - args.window:
                j += 1
            res.busiest = max(res.busiest, i - j + 1)
        res.go_to_first = t0 - min(o["t_go"] for o in outs)
        res.per_worker = [(o["sends"][0] - t0, o["responses"][-1][0] - t0)
                          for o in outs if o["sends"] and o["responses"]]
        lat = _latencies(outs)
        if lat:
            q = statistics.quantiles(lat, n=100)
            res.latency_ms = {"p50": q[49] * 1000, "p99": q[98] * 1000, "max": max(lat) * 1000}
    res.client_cpu = sum(o["cpu_user"] + o["cpu_sys"] for o in outs)
    res.client_cpu_span = sum(o["cpu_in_span"] for o in outs)
    res.waited = sum(o["waited"] for o in outs)
    res.track_seconds = sum(o["track_seconds"] for o in outs)
    res.checkpoint_seconds = sum(o["checkpoint_seconds"] for o in outs)
    res.checkpoints = sum(o["checkpoints"] for o in outs)
    res.connections = sum(o["connections"] for o in outs)
    for o in outs:
        for kind, seconds in o["holds"]:
            h = res.holds.setdefault(kind, [0, 0.0])
            h[0] += 1
            h[1] += seconds
    res.profile = "\n".join(o["profile"] for o in outs if o["profile"])
    if errors:
        res.error = "; ".join(errors)[:300]
    shutil.rmtree(store_dir / "runs" / run_key, ignore_errors=True)
    return res


def _latencies(outs: list[dict]) -> list[float]:
    """Send -> response per attempt, paired in order within each worker process (one thread: exact)."""
    lat = []
    for o in outs:
        if len(o["chunks"]) != 1:
            continue  # threads interleave; the pairing would be wrong
        lat += [r[0] - s for s, r in zip(o["sends"], o["responses"], strict=False)]
    return lat


# ------------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------------


VARIANT_NAMES = {
    "processes": "{w} processes, own limiter each ({b}/{win:g}s) — the DAG's shape",
    "threads": "1 process, {w} threads, one shared limiter ({l}/{win:g}s)",
    "processes-gc-tuned": "same as the first row, sandbox GC tuned (context)",
    "unpaced": "{w} processes, no limit (machine ceiling, context)",
}


CONTEXT_VARIANTS = {"processes-gc-tuned", "unpaced"}


def _median_run(runs: list[Result]) -> Result:
    ok = sorted((r for r in runs if not r.error and r.span), key=lambda r: r.rate)
    return ok[(len(ok) - 1) // 2] if ok else runs[0]


def table(results: dict[str, list[Result]], args) -> str:
    head = ["variant", "runs", "requests", "span first→last (s)", "achieved req/s (median / best)",
            "share of limit (median / best)", "window fill (median)", "busiest window", "429s (sandbox)",
            "retries", "limiter holds, median run: remaining 0 / 429", "sandbox full GCs, median run",
            "profiles = changes", "target", "met?"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    for variant, runs in results.items():
        name = VARIANT_NAMES[variant].format(w=args.workers, b=max(1, args.limit // args.workers), l=args.limit,
                                             win=args.window)
        ok = [r for r in runs if not r.error and r.span]
        if not ok:
            err = next((r.error for r in runs if r.error), "no successful run")
            lines.append("| " + " | ".join([name, str(len(runs)), *["—"] * (len(head) - 3), f"error: {err[:100]}"])
                         + " |")
            continue
        med = _median_run(ok)
        bestr = max(ok, key=lambda r: r.rate)
        unpaced = variant == "unpaced"
        context = variant in CONTEXT_VARIANTS
        target = "(context)" if context else f"share ≥ {TARGET_SHARE:.0%}, 0 × 429"
        if unpaced:
            share = fill = "—"
        else:
            share = f"{med.share:.1%} / {bestr.share:.1%}"
            fill = "—" if med.fill is None else f"{med.fill:.1%} ({med.windows} × {args.window:g}s)"
        good = med.share >= TARGET_SHARE and all(r.rate_limited == 0 for r in ok) and all(r.verified for r in ok)
        met = "(context)" if context else "yes" if good else "**no**"
        if not context and med.windows == 0:
            met = "n/a (shorter than one window)"
        cells = [
            name, str(len(ok)) + ("" if len(ok) == len(runs) else f" (+{len(runs) - len(ok)} failed)"),
            f"{med.requests:,}", f"{med.span:.3f}", f"{med.rate:,.0f} / {bestr.rate:,.0f}", share, fill,
            f"{max(r.busiest for r in ok):,}", " / ".join(str(r.rate_limited) for r in ok),
            " / ".join(str(r.retries) for r in ok),
            f"{_hold(med, 'observe')} / {_hold(med, 'pause')}", _full_gcs(med),
            "yes" if all(r.verified for r in ok) else "**no**", target, met,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def detail(r: Result, args) -> str:
    if r.error and not r.span:
        return f"- {r.variant} #{r.repeat + 1}: error: {r.error} (load {r.load1:.2f})"
    gc2 = r.gc.get("2", [])
    gc_all = [p for ps in r.gc.values() for p in ps]
    gc_txt = (f"GC {len(gc_all)} collections, {sum(gc_all) * 1000:.0f} ms total, longest "
              f"{max(gc_all, default=0) * 1000:.1f} ms ({len(gc2)} full, longest {max(gc2, default=0) * 1000:.1f} ms)"
              if r.gc else "GC not watched")
    lat = (f"latency p50 {r.latency_ms['p50']:.2f} ms / p99 {r.latency_ms['p99']:.2f} ms / max {r.latency_ms['max']:.1f} ms"
           if r.latency_ms else "latency n/a (threads)")
    return (f"- {r.variant} #{r.repeat + 1}: {r.requests:,} requests ({r.accepted:,} accepted, {r.rate_limited} × 429 at the sandbox, "
            f"{r.client_429} seen by the client, {r.retries} retries) in {r.span:.3f} s (last send at {r.send_span:.3f} s) = {r.rate:,.0f} req/s; "
            f"fill {'—' if r.fill is None else f'{r.fill:.1%}'}; busiest window {r.busiest:,}; GO→first send "
            f"{r.go_to_first * 1000:.0f} ms; per process first send→last response "
            f"{', '.join(f'{a:.2f}→{b:.2f}' for a, b in r.per_worker)} s; sandbox CPU {r.sandbox_cpu:.2f} s ({r.sandbox_cpu / r.span:.0%} of a core); "
            f"client CPU {r.client_cpu:.2f} s from GO, {r.client_cpu_span:.2f} s from the first send "
            f"({r.client_cpu_span / r.span:.0%} of a core, {r.client_cpu_span / max(1, r.requests) * 1000:.2f} ms/request); "
            f"sandbox {r.sandbox_cpu / max(1, r.requests) * 1000:.2f} ms/request; in track() {r.track_seconds:.2f} s "
            f"of which waiting on the limiter {r.waited:.2f} s (summed over workers); limiter holds set by "
            f"X-RateLimit-Remaining: 0 {_hold(r, 'observe')}, by a 429's Retry-After {_hold(r, 'pause')}; {r.checkpoints} checkpoints "
            f"{r.checkpoint_seconds * 1000:.0f} ms; {r.connections} TCP connection(s); {lat}; sandbox {gc_txt}; profiles {r.profiles:,} "
            f"{'OK' if r.verified else 'MISMATCH'}; load {r.load1:.2f}" + (f"; errors: {r.error}" if r.error else ""))


def _hold(r: Result, kind: str) -> str:
    n, seconds = r.holds.get(kind, (0, 0.0))
    return f"{n} × (total {seconds:.2f} s)"


def _full_gcs(r: Result) -> str:
    if not r.gc:
        return "not watched"
    full = r.gc.get("2", [])
    return f"{len(full)} ({sum(full):.2f} s, longest {max(full, default=0) * 1000:.0f} ms)"


def machine() -> str:
    import requests
    import urllib3

    from bench.run_b2l import machine as machine_facts

    return f"{machine_facts()}, requests {requests.__version__}, urllib3 {urllib3.__version__}"


def _load(avg: tuple[float, float, float]) -> str:
    return " / ".join(f"{x:.2f}" for x in avg)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--changes", type=int, default=200_000, help="users to update (default 200000)")
    ap.add_argument("--limit", type=int, default=1000, help="sandbox /users/track limit per window (default 1000)")
    ap.add_argument("--window", type=float, default=1.0, help="the limit's window in seconds (default 1.0)")
    ap.add_argument("--workers", type=int, default=4, help="parallel deliveries = chunks (default 4)")
    ap.add_argument("--batch-size", type=int, default=75, help="objects per request (default 75)")
    ap.add_argument("--repeats", type=int, default=3, help="runs per variant (default 3)")
    ap.add_argument("--variants", default=",".join(VARIANT_NAMES),
                    help=f"comma-separated, from: {', '.join(VARIANT_NAMES)} (default: all)")
    ap.add_argument("--sandbox-gc", choices=("watch", "plain", "freeze", "tuned", "off"), default="watch",
                    help="watch: time the sandbox's GC pauses, behaviour unchanged (default); plain: the bare "
                         "CLI; freeze: gc.freeze() after imports + gen-0 threshold 50000; off: gc.disable()")
    ap.add_argument("--margin", type=float, default=None,
                    help="RateLimiter margin in seconds (experiment; default: the pipeline's own, 0.01)")
    ap.add_argument("--rtt-ms", type=float, default=0.0,
                    help="experiment: hold every response this many ms in the client (a simulated network "
                         "round trip; loopback is ~0.1 ms, a real Braze endpoint tens of ms)")
    ap.add_argument("--observe", choices=("pipeline", "floor"), default="pipeline",
                    help="experiment: floor = the limiter treats X-RateLimit-Reset (an epoch second rounded up) "
                         "as 1 s earlier, i.e. holds only until the earliest time the reset can mean")
    ap.add_argument("--profile", action="store_true", help="cProfile the workers (slows them; for investigation)")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results_l2b_delivery.md", help="markdown report")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return worker_main(json.loads(args.worker))

    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = set(variants) - set(VARIANT_NAMES)
    if unknown:
        ap.error(f"unknown variant(s): {', '.join(sorted(unknown))}")
    started = dt.datetime.now(dt.UTC)
    load_start = os.getloadavg()
    bounds = [args.changes * i // args.workers for i in range(args.workers + 1)]  # as split_chunks cuts
    requests_needed = sum(-(-(b - a) // args.batch_size) for a, b in zip(bounds[:-1], bounds[1:], strict=True))
    print(f"Lytics→Braze delivery benchmark: {args.changes:,} changes = {requests_needed:,} requests, limit "
          f"{args.limit}/{args.window:g}s, {args.workers} workers, sandbox GC {args.sandbox_gc}; "
          f"load average {_load(load_start)}", flush=True)
    results: dict[str, list[Result]] = {v: [] for v in variants}
    work = Path(tempfile.mkdtemp(prefix="l2b-delivery-", dir="/tmp"))
    try:
        store_dir = work / "state"
        for rep in range(args.repeats):
            order = variants if rep % 2 == 0 else list(reversed(variants))
            for variant in order:
                try:
                    r = run_once(variant, rep, args, store_dir, work)
                except Exception as exc:  # noqa: BLE001 - the benchmark reports, it does not gate
                    traceback.print_exc()
                    r = Result(variant, rep, os.getloadavg()[0], error=str(exc).strip().splitlines()[0][:200]
                               if str(exc).strip() else type(exc).__name__)
                results[variant].append(r)
                print(detail(r, args), flush=True)
                if r.profile:
                    print(r.profile, flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    load_end = os.getloadavg()
    finished = dt.datetime.now(dt.UTC)
    body = table(results, args)
    cmd = (f".venv/bin/python -m bench.run_l2b_delivery --changes {args.changes} --limit {args.limit} "
           f"--window {args.window:g} --workers {args.workers} --repeats {args.repeats}"
           + (f" --sandbox-gc {args.sandbox_gc}" if args.sandbox_gc != "watch" else "")
           + (f" --margin {args.margin:g}" if args.margin is not None else "")
           + (f" --rtt-ms {args.rtt_ms:g}" if args.rtt_ms else "")
           + (f" --observe {args.observe}" if args.observe != "pipeline" else "")
           + (f" --variants {','.join(variants)}" if variants != list(VARIANT_NAMES) else ""))
    text = "\n".join([
        f"# Lytics → Braze delivery benchmark ({args.changes:,} changes, limit {args.limit:,} requests / "
        f"{args.window:g} s)",
        "",
        f"- Date: {started:%Y-%m-%d %H:%M} UTC (took {(finished - started).total_seconds():.0f} s)",
        f"- Machine: {machine()}",
        f"- Load average (1/5/15 min): {_load(load_start)} at start, {_load(load_end)} at end (other processes may "
        "share the CPUs; see the per-run load below)",
        f"- Command: `{cmd}`",
        f"- {args.changes:,} changes in {args.workers} chunks → {requests_needed:,} requests of ≤ {args.batch_size} "
        "objects (+ retries); the sandbox "
        f"(`python -m sandbox.braze_server --track-rate-limit {args.limit} --track-rate-window {args.window:g}`, own "
        f"process, GC mode `{args.sandbox_gc}`) is restarted for every run; {args.repeats} runs per variant, "
        "alternating; the table shows the median run (by achieved req/s) and the best.",
        "- span = first request sent → last response received (client clock); share = requests / span / limit; "
        "window fill = requests sent in the complete windows after the first send / (windows × limit), the "
        "steady-state figure (short runs can beat 100% on `share`: a sliding window lets the first window's "
        "budget go at once); busiest window = most requests the client sent in any sliding window (≤ limit "
        "means our pacing never overshot).",
        "",
        body,
        "",
        "## Every run",
        "",
        *(detail(r, args) for runs in results.values() for r in runs),
        "",
    ])
    print()
    print(body)
    print(f"\n- load average: {_load(load_start)} at start, {_load(load_end)} at end")
    try:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        print(f"written to {args.out}")
    except OSError as exc:
        print(f"could not write {args.out}: {exc}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    if "--worker" in sys.argv:
        sys.exit(main())
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception:  # noqa: BLE001 - the benchmark reports, it does not gate
        traceback.print_exc()
        sys.exit(0)
