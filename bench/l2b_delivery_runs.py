"""The parent side of bench/run_l2b_delivery.py: the chunk files, the pacing bound, one run.

A run starts a fresh Braze sandbox (`python -m sandbox.braze_server`, through the wrapper in
bench/l2b_delivery_sandbox.py: GC timing, the answers recorded, the simulated round trip),
writes the changes as chunk Parquet files, starts the workers (bench/l2b_delivery_worker.py),
says GO (each worker then waits its staggered start), and turns what they and the sandbox
report into a :class:`Result`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.l2b_delivery_sandbox import REPO, Sandbox, child_env

AUDIENCE = "bench_aud"
TARGET_SHARE = 0.90
UNPACED_LIMIT = 1_000_000_000


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


def chunk_requests(changes: int, workers: int, batch_size: int) -> list[int]:
    """Requests per chunk, as split_chunks cuts the changes (contiguous, sizes differing by at most 1)."""
    bounds = [changes * i // workers for i in range(workers + 1)]
    return [-(-(b - a) // batch_size) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def pipeline_margin(margin: float | None) -> float:
    """The RateLimiter margin a run uses: `margin`, or the pipeline's default."""
    if margin is not None:
        return margin
    import inspect

    from include.common.rate_limit import RateLimiter

    return inspect.signature(RateLimiter).parameters["margin"].default


def start_offsets(stagger: list[float], workers: int) -> list[float]:
    """Seconds after GO at which each worker starts: one value s -> i * s; a list -> as given."""
    if len(stagger) == 1:
        return [i * stagger[0] for i in range(workers)]
    if len(stagger) != workers:
        raise ValueError(f"--stagger-ms needs one value or {workers} (one per worker), got {len(stagger)}")
    return list(stagger)


def pacing_bound(requests: list[int], offsets: list[float], budget: int, window: float, margin: float,
                 rtt: float, limit: int) -> float:
    """The share a run *can* reach when every limiter paces its static budget exactly from its start.

    Limiter i is made at offsets[i] and grants one request every (window + margin) / budget s from
    then on (the first one interval after it was made); span = first grant -> last grant + rtt.
    Loopback time and CPU are left out: an upper bound for the pipeline's design, not a prediction.
    """
    interval = (window + margin) / budget
    first = min(o + interval for o, r in zip(offsets, requests, strict=True) if r)
    last = max(o + r * interval for o, r in zip(offsets, requests, strict=True) if r)
    span = last - first + rtt
    return sum(requests) / span / (limit / window) if span > 0 else 0.0


@dataclass
class Result:
    variant: str
    rtt_ms: float
    repeat: int
    load1: float
    offsets: list = field(default_factory=list)  # planned start of each worker, s after GO
    requests: int = 0  # sandbox: POST /users/track that reached it
    accepted: int = 0
    rate_limited: int = 0  # sandbox: 429 from its limiter
    retries: int = 0  # deliver_chunk progress
    client_429: int = 0
    span: float = 0.0  # first send -> last response (s)
    send_span: float = 0.0  # first send -> last send (s)
    rate: float = 0.0  # requests / span
    share: float = 0.0  # rate / (limit / window)
    bound: float = 0.0  # pacing_bound for this run's offsets (static budgets)
    steady: float | None = None  # requests sent while every worker was sending / (that time * limit)
    steady_seconds: float = 0.0
    fill: float | None = None  # requests in complete windows from the first send / (windows * limit)
    windows: int = 0
    timeline: list = field(default_factory=list)  # sends per window from the first send
    busiest: int = 0  # most sends in any sliding window (client side: our pacing)
    busiest_server: int | None = None  # most POSTs arriving at the sandbox in any sliding window
    grant_to_arrival_ms: dict = field(default_factory=dict)  # limiter grant -> sandbox arrival
    profiles: int = 0
    verified: bool = False
    sandbox_cpu: float = 0.0
    client_cpu: float = 0.0  # GO -> end, all worker processes
    others_cpu: float | None = None  # cores used by other processes of the machine, GO -> workers done
    client_cpu_span: float = 0.0  # first send -> end (per process), all worker processes
    waited: float = 0.0  # summed over workers: time blocked in RateLimiter.acquire
    track_seconds: float = 0.0  # summed over workers: time inside track() (acquire + HTTP + parsing)
    checkpoint_seconds: float = 0.0
    checkpoints: int = 0
    connections: int = 0  # TCP connections opened by the clients
    max_in_flight: list = field(default_factory=list)  # per process: most requests granted, not answered
    go_to_first: float = 0.0  # GO -> first send (reading the chunk, building batches)
    per_worker: list = field(default_factory=list)  # (first send, last response) per chunk, s after t0
    holds: dict = field(default_factory=dict)  # {"observe"|"pause": [count, summed seconds]} limiter holds
    gc: dict = field(default_factory=dict)
    latency_ms: dict = field(default_factory=dict)  # grant -> response percentiles
    gap_ms: dict = field(default_factory=dict)  # between consecutive grants of one limiter, percentiles
    interval_ms: float = 0.0  # the limiter's nominal interval
    profile: str = ""
    error: str = ""


def cpu_busy_seconds() -> float:
    """CPU seconds all processes of the machine have used since boot (/proc/stat: not idle, not iowait)."""
    with open("/proc/stat") as fh:
        fields = [int(x) for x in fh.readline().split()[1:]]
    ticks = os.sysconf("SC_CLK_TCK")
    return (sum(fields[:8]) - fields[3] - fields[4]) / ticks  # user..steal, minus idle and iowait


def _busiest(times: list[float], window: float) -> int:
    """Most of the sorted `times` in any sliding window (t - window, t] (two pointers)."""
    best, j = 0, 0
    for i, t in enumerate(times):
        while times[j] <= t - window:
            j += 1
        best = max(best, i - j + 1)
    return best


def _pct(values: list[float]) -> dict:
    values = sorted(values)
    if not values:
        return {}
    return {"p50": values[len(values) // 2] * 1000, "p99": values[int(0.99 * (len(values) - 1))] * 1000,
            "max": values[-1] * 1000}


def run_once(variant: str, rtt_ms: float, repeat: int, args, store_dir: Path, work: Path) -> Result:
    """One delivery of all chunks against a fresh sandbox."""
    load1 = os.getloadavg()[0]
    res = Result(variant, rtt_ms, repeat, load1)
    unpaced = variant == "unpaced"
    limit = UNPACED_LIMIT if unpaced else args.limit
    run_key = f"bench-{variant}-{rtt_ms:g}-{repeat}"
    write_chunks(store_dir, run_key, args.changes, args.workers)
    server_delay = rtt_ms / 1000 if args.rtt_side == "server" else 0.0
    sandbox = Sandbox(limit, args.window, args.sandbox_gc, work, server_delay)
    # threads = one task delivering every chunk: one process, no scheduler stagger between its chunks.
    offsets = [0.0] * args.workers if variant == "threads" else start_offsets(args.stagger, args.workers)
    res.offsets = offsets
    procs: list[subprocess.Popen] = []
    try:
        base = {"store": str(store_dir), "run_key": run_key, "url": sandbox.url, "window": args.window,
                "batch_size": args.batch_size, "profile": args.profile, "margin": args.margin,
                "rtt_ms": rtt_ms, "rtt_side": args.rtt_side, "observe": args.observe,
                "in_flight": args.in_flight, "switch_interval_ms": args.switch_interval_ms}
        if variant == "threads":
            tasks = [base | {"chunks": list(range(args.workers)), "starts": offsets, "budget": limit}]
        else:
            # processes: the DAG's shape now, each task with the whole budget shared through leases
            # (include.audiences_to_braze.delivery.shared_budget); static: the former split.
            shared = variant == "processes"
            tasks = [base | {"chunks": [i], "starts": [offsets[i]], "shared": shared, "slots": args.workers,
                             "budget": limit if shared else max(1, limit // args.workers)}
                     for i in range(args.workers)]
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
        busy0, wall0 = cpu_busy_seconds(), time.monotonic()
        for p in procs:  # GO to all at once; each worker waits its own start offset
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
        busy, wall = cpu_busy_seconds() - busy0, time.monotonic() - wall0
        after = sandbox.stats()
        profiles = sandbox.profiles()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        report = sandbox.stop()
    res.gc = report.get("gc", {})
    arrivals = report.get("arrivals", [])

    errors = [e for o in outs for e in o["errors"]]
    res.requests = after["requests"] - before["requests"]
    res.accepted = after["accepted"] - before["accepted"]
    res.rate_limited = after["rate_limited"] - before["rate_limited"]
    res.profiles = after["profiles"]
    res.verified = (len(profiles) == args.changes == after["profiles"] == after["objects_applied"]
                    and all(v == [AUDIENCE] for v in profiles.values()))
    progress = [p for o in outs for p in o["progress"].values()]
    res.retries = sum(p["retries"] for p in progress)
    tagged = sorted((t, c) for o in outs for t, c in o["sends"])
    sends = [t for t, _ in tagged]
    responses = sorted(r for o in outs for r in o["responses"])
    res.client_429 = sum(1 for _, s, _ in responses if s == 429)
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
        res.timeline = [0] * (int(res.send_span // args.window) + 1)
        for t in sends:
            res.timeline[int((t - t0) // args.window)] += 1
        res.busiest = _busiest(sends, args.window)
        if arrivals:
            res.busiest_server = _busiest(sorted(a for a, _, _ in arrivals), args.window)
            res.grant_to_arrival_ms = _pct([a - g for a, g, _ in arrivals if g == g])  # g == g: not NaN
        # Steady state: while every chunk is being sent (its first grant -> its last grant).
        by_chunk: dict[int, list[float]] = {}
        for t, c in tagged:
            by_chunk.setdefault(c, []).append(t)
        lo = max(ts[0] for ts in by_chunk.values())
        hi = min(ts[-1] for ts in by_chunk.values())
        res.per_worker = [(ts[0] - t0, ts[-1] - t0) for _, ts in sorted(by_chunk.items())]
        if hi > lo and not unpaced:
            res.steady_seconds = hi - lo
            res.steady = sum(1 for t in sends if lo <= t < hi) / (res.steady_seconds * limit / args.window)
        res.go_to_first = t0 - min(o["t_go"] for o in outs)
        res.latency_ms = _pct([r[2] for r in responses])
        gaps = [b[0] - a[0] for o in outs for a, b in zip(o["sends"], o["sends"][1:], strict=False)]
        res.gap_ms = _pct(gaps)
        if gaps:
            res.gap_ms["mean"] = sum(gaps) / len(gaps) * 1000
        res.interval_ms = outs[0]["interval"] * 1000 if outs[0].get("interval") else 0.0
    if not unpaced:
        budget = limit if variant == "threads" else max(1, limit // args.workers)
        reqs = chunk_requests(args.changes, args.workers, args.batch_size)
        if variant == "threads":  # one limiter for all chunks: as one sender of the sum
            reqs, offs = [sum(reqs)], [0.0]
        else:
            offs = offsets
        res.bound = pacing_bound(reqs, offs, budget, args.window, pipeline_margin(args.margin), rtt_ms / 1000, limit)
    res.client_cpu = sum(o["cpu_user"] + o["cpu_sys"] for o in outs)
    if wall > 0:  # the machine's busy CPU minus ours (workers + sandbox; the parent only waits)
        res.others_cpu = max(0.0, busy - res.client_cpu - res.sandbox_cpu) / wall
    res.client_cpu_span = sum(o["cpu_in_span"] for o in outs)
    res.waited = sum(o["waited"] for o in outs)
    res.track_seconds = sum(o["track_seconds"] for o in outs)
    res.checkpoint_seconds = sum(o["checkpoint_seconds"] for o in outs)
    res.checkpoints = sum(o["checkpoints"] for o in outs)
    res.connections = sum(o["connections"] for o in outs)
    res.max_in_flight = [o["max_in_flight"] for o in outs]
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
