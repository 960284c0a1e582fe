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
import sys
import tempfile
import traceback
from pathlib import Path

from bench.l2b_delivery_report import VARIANT_NAMES, _load, detail, machine, table
from bench.l2b_delivery_runs import REPO, Result, run_once
from bench.l2b_delivery_worker import worker_main


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
