"""The parent side of bench/run_l2b_delivery.py: the sandbox process, the chunk files, one run.

A run starts a fresh Braze sandbox (`python -m sandbox.braze_server`, optionally through the GC
wrapper below), writes the changes as chunk Parquet files, starts the workers
(bench/l2b_delivery_worker.py), says GO, and turns what they and the sandbox report into a
:class:`Result`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
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
