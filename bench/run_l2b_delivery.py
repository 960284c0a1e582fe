"""Benchmark (b) of the Lytics -> Braze pipeline: delivery against a rate-limited Braze sandbox.

    .venv/bin/python -m bench.run_l2b_delivery      # the issue's scenario, both RTTs, 3 runs each (~2 min)

The issue's scenario (the defaults): deliver 200,000 user changes (`{"external_id": "u000000",
"lytics_segments": {"add": ["bench_aud"]}}`, 75 per request: 2,668 requests) to the Braze sandbox
with its `/users/track` limit set to 1,000 requests per 1 s, by 4 deliveries whose starts are
staggered as the scheduler staggers the mapped `deliver_chunk` tasks (`--stagger-ms 300`: worker i
starts i x 300 ms after the first), with 0 and with 30 ms added round-trip time (`--rtt-ms 0,30`);
target: achieved requests/s >= 90% of the limit in both, and no 429.

Server: `python -m sandbox.braze_server --track-rate-limit L --track-rate-window W -q` in its own
process (its own GIL), on a free loopback port, restarted for every run (empty profiles, empty
window), through a small `runpy` wrapper (the sandbox files are not changed) that times the
sandbox's garbage-collector pauses (`gc.callbacks`), records every `/users/track` answer (arrival
time, the client's grant time from an `X-Bench-Granted` header, status), and - `--rtt-side server`,
the default - sets the sandbox's own `UsersTrack.response_delay` to the added RTT: every answer is
held that long in its own handler thread *after* the request was counted, so requests in flight
overlap as over a real network, and the sandbox's window counts arrivals as Braze's does.
`--rtt-side client` instead holds each response in the client's sending thread (deliver_chunk's
threads hold theirs concurrently). `--sandbox-gc` (for investigation): `watch` (default; the CLI
itself freezes start-up objects and raises the GC threshold), `freeze`, `tuned`, `off`, or `plain`
(the bare CLI: no recording, no server-side RTT).

Client: the pipeline's own path. The changes are written once as chunk Parquet files in a temp
`StateStore` (`split_chunks(table, workers, 1)` -> `runs/<key>/chunks/<i>.parquet`, as
`plan_changes` does), then every chunk is delivered by `include.audiences_to_braze.delivery.deliver_chunk`
(IN_FLIGHT requests in flight, ordered checkpoints with fsync) with `BrazeTrackClient.track`
(requests, retries, `observe()` of the rate-limit headers). Variants:

- `processes` (the default, the headline; the DAG's shape): one fresh process per chunk, like the
  mapped `deliver_chunk` tasks in the `braze_api` pool, each making its `RateLimiter(limit, window)`
  when it starts and sharing the budget with the others through leases in the run's state store
  (`include.audiences_to_braze.delivery.shared_budget`, `total = limit - workers`), as the task
  body does;
- `static` (context: the former DAG shape): the same processes, each pacing a static
  `RateLimiter(limit // workers, window)`;
- `threads` (context): one process = one task delivering every chunk, one thread per chunk (each
  with deliver_chunk's own pool), all sharing one `RateLimiter(limit, window)`; its chunks start
  together (there is no scheduler between them) - the shape that has no staggered start at all;
- `unpaced` (context, the machine's ceiling): the `processes` shape against a sandbox and
  limiters with an effectively infinite limit.

Staggered starts (`--stagger-ms`): the worker processes import and build their clients first,
report READY, and are all told GO at once; worker i then waits its start offset (one value s:
i x s; or one value per worker) before it makes its limiter and delivers. Why 300 ms: Airflow's
LocalExecutor hands all queued workloads to its worker processes in one `_process_workloads` call
(the 4 mapped tasks are queued together when the pool has 4 free slots); the gaps come from each
task's own start (supervisor fork, the Execution API's `ti.run`, the task runner parsing the DAG
file: 0.08-0.11 s here, the task body's imports: 0.3 s, the approval check, reading the chunk),
~0.4 s of CPU per task competing for 2 cores with the scheduler, API server and the tasks already
sending: a few hundred ms between consecutive tasks. (The start-up CPU itself is not simulated.)

Experiment switches (off by default; the headline always uses the pipeline as it is): `--margin`
(the RateLimiter's margin), `--in-flight` (deliver_chunk's requests in flight), `--observe floor`
(the limiter reads `X-RateLimit-Reset` as one second earlier), `--profile` (cProfile of the workers).

Every attempt's grant (when the limiter let it go, chunk tagged) and every response's time, status
and grant -> response time are recorded client side (`time.monotonic`, one clock for all
processes on Linux, the sandbox's included).

Measured per run: requests and 429s (sandbox `/_sandbox/stats` before/after), retries
(deliver_chunk's progress); **share of the limit = requests / span / limit**, span = the first
request sent (by any worker) -> the last response received (by any worker) - the staggered start
and the uneven end are inside the span, the metric is not narrowed to hide them; the *pacing bound*
= the share the static per-task budgets allow with these start offsets even with zero overhead;
the *steady-state fill* = requests sent while every chunk was being sent (the latest first grant ->
the earliest last grant) / (that time x limit); the busiest sliding window of the client's grants
(our pacing: must be <= limit) and of the POSTs arriving at the sandbox (all of them, refused
ones included); grant -> arrival spread (what the limiter's margin has to cover); requests in
flight; CPU; the sandbox's GC pauses; the limiter's holds. Checked: the sandbox holds exactly
`--changes` profiles, each with lytics_segments == ["bench_aud"] (`/_sandbox/profiles`).
Each variant x RTT runs `--repeats` times (alternating order); the table gives the median run
(by achieved req/s) and the best. The command reports; it does not gate (exit 0).
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
from bench.l2b_delivery_runs import REPO, Result, chunk_requests, pipeline_margin, run_once, start_offsets
from bench.l2b_delivery_worker import worker_main

DEFAULT_OUT = REPO / "bench" / "results_l2b_delivery.md"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--changes", type=int, default=200_000, help="users to update (default 200000)")
    ap.add_argument("--limit", type=int, default=1000, help="sandbox /users/track limit per window (default 1000)")
    ap.add_argument("--window", type=float, default=1.0, help="the limit's window in seconds (default 1.0)")
    ap.add_argument("--workers", type=int, default=4, help="parallel deliveries = chunks (default 4)")
    ap.add_argument("--batch-size", type=int, default=75, help="objects per request (default 75)")
    ap.add_argument("--repeats", type=int, default=3, help="runs per variant (default 3)")
    ap.add_argument("--variants", default="processes",
                    help=f"comma-separated, from: {', '.join(VARIANT_NAMES)} (default: processes)")
    ap.add_argument("--stagger-ms", default="300",
                    help="start offsets: one value s = worker i starts i*s ms after the first (default 300), or one "
                         "comma-separated value per worker (ms after GO); 0 = all together")
    ap.add_argument("--rtt-ms", default="0,30",
                    help="added round-trip time(s) in ms, comma-separated, each a scenario (default: 0,30)")
    ap.add_argument("--rtt-side", choices=("server", "client"), default="server",
                    help="server: the sandbox holds each answer after counting it (default); client: the sending "
                         "thread holds each response")
    ap.add_argument("--sandbox-gc", choices=("watch", "plain", "freeze", "tuned", "off"), default="watch",
                    help="watch: time the sandbox's GC pauses, behaviour unchanged (default); plain: the bare "
                         "CLI (no recording, no server-side RTT); freeze / tuned / off: GC experiments")
    ap.add_argument("--margin", type=float, default=None,
                    help="experiment: RateLimiter margin in seconds (default: the pipeline's own)")
    ap.add_argument("--in-flight", type=int, default=None,
                    help="experiment: deliver_chunk's requests in flight (default: the pipeline's IN_FLIGHT)")
    ap.add_argument("--switch-interval-ms", type=float, default=None,
                    help="experiment: sys.setswitchinterval in the workers (Python's default: 5 ms)")
    ap.add_argument("--observe", choices=("pipeline", "floor"), default="pipeline",
                    help="experiment: floor = the limiter treats X-RateLimit-Reset (an epoch second rounded up) "
                         "as 1 s earlier, i.e. holds only until the earliest time the reset can mean")
    ap.add_argument("--profile", action="store_true", help="cProfile the workers (slows them; for investigation)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="markdown report")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return worker_main(json.loads(args.worker))

    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = set(variants) - set(VARIANT_NAMES)
    if unknown:
        ap.error(f"unknown variant(s): {', '.join(sorted(unknown))}")
    try:
        rtts = [float(x) for x in args.rtt_ms.split(",") if x.strip()]
        args.stagger = [float(x) / 1000 for x in args.stagger_ms.split(",") if x.strip()] or [0.0]
        start_offsets(args.stagger, args.workers)
    except ValueError as exc:
        ap.error(str(exc))
    if args.sandbox_gc == "plain" and args.rtt_side == "server" and any(rtts):
        ap.error("--sandbox-gc plain runs the bare CLI, which cannot delay its answers: use --rtt-side client")
    scenarios = [(v, rtt) for v in variants for rtt in rtts]
    started = dt.datetime.now(dt.UTC)
    load_start = os.getloadavg()
    requests_needed = sum(chunk_requests(args.changes, args.workers, args.batch_size))
    margin = pipeline_margin(args.margin)
    offsets = start_offsets(args.stagger, args.workers)
    print(f"Lytics→Braze delivery benchmark: {args.changes:,} changes = {requests_needed:,} requests, limit "
          f"{args.limit}/{args.window:g}s, {args.workers} workers starting at {', '.join(f'{o:g}' for o in offsets)} s, "
          f"added RTT {', '.join(f'{r:g}' for r in rtts)} ms ({args.rtt_side} side), sandbox GC {args.sandbox_gc}; "
          f"load average {_load(load_start)}", flush=True)
    results: dict[tuple[str, float], list[Result]] = {sc: [] for sc in scenarios}
    work = Path(tempfile.mkdtemp(prefix="l2b-delivery-", dir="/tmp"))
    try:
        store_dir = work / "state"
        for rep in range(args.repeats):
            order = scenarios if rep % 2 == 0 else list(reversed(scenarios))
            for variant, rtt in order:
                try:
                    r = run_once(variant, rtt, rep, args, store_dir, work)
                except Exception as exc:  # noqa: BLE001 - the benchmark reports, it does not gate
                    traceback.print_exc()
                    r = Result(variant, rtt, rep, os.getloadavg()[0], error=str(exc).strip().splitlines()[0][:200]
                               if str(exc).strip() else type(exc).__name__)
                results[(variant, rtt)].append(r)
                print(detail(r, args), flush=True)
                if r.profile:
                    print(r.profile, flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    load_end = os.getloadavg()
    finished = dt.datetime.now(dt.UTC)
    body = table(results, args)
    cmd = (".venv/bin/python -m bench.run_l2b_delivery"
           + (f" --changes {args.changes}" if args.changes != 200_000 else "")
           + (f" --limit {args.limit}" if args.limit != 1000 else "")
           + (f" --window {args.window:g}" if args.window != 1.0 else "")
           + (f" --workers {args.workers}" if args.workers != 4 else "")
           + (f" --batch-size {args.batch_size}" if args.batch_size != 75 else "")
           + (f" --repeats {args.repeats}" if args.repeats != 3 else "")
           + (f" --variants {','.join(variants)}" if variants != ["processes"] else "")
           + (f" --stagger-ms {args.stagger_ms}" if args.stagger_ms != "300" else "")
           + (f" --rtt-ms {args.rtt_ms}" if args.rtt_ms != "0,30" else "")
           + (f" --rtt-side {args.rtt_side}" if args.rtt_side != "server" else "")
           + (f" --sandbox-gc {args.sandbox_gc}" if args.sandbox_gc != "watch" else "")
           + (f" --margin {args.margin:g}" if args.margin is not None else "")
           + (f" --in-flight {args.in_flight}" if args.in_flight is not None else "")
           + (f" --switch-interval-ms {args.switch_interval_ms:g}" if args.switch_interval_ms is not None else "")
           + (f" --observe {args.observe}" if args.observe != "pipeline" else "")
           + (f" --out {args.out}" if args.out != DEFAULT_OUT else ""))
    budget = max(1, args.limit // args.workers)
    text = "\n".join([
        f"# Lytics → Braze delivery benchmark ({args.changes:,} changes, limit {args.limit:,} requests / "
        f"{args.window:g} s, {args.workers} staggered deliveries)",
        "",
        f"- Date: {started:%Y-%m-%d %H:%M} UTC (took {(finished - started).total_seconds():.0f} s)",
        f"- Machine: {machine()}",
        f"- Load average (1/5/15 min): {_load(load_start)} at start, {_load(load_end)} at end (other processes may "
        "share the CPUs; see the per-run load below)",
        f"- Command: `{cmd}`",
        f"- {args.changes:,} changes in {args.workers} chunks → {requests_needed:,} requests of ≤ {args.batch_size} "
        "objects (+ retries); the sandbox "
        f"(`python -m sandbox.braze_server --track-rate-limit {args.limit} --track-rate-window {args.window:g}`, own "
        f"process, GC mode `{args.sandbox_gc}`) is restarted for every run; {args.repeats} runs per variant and RTT, "
        "alternating; the table shows the median run (by achieved req/s) and the best.",
        f"- Starts: worker i starts at {', '.join(f'{o:g}' for o in offsets)} s after GO (`--stagger-ms "
        f"{args.stagger_ms}`; the `threads` context row starts all chunks together): it makes its limiter "
        f"({args.limit}/{args.window:g} s shared through leases, `processes`; {budget}/{args.window:g} s each, "
        f"`static`; margin {margin * 1000:g} ms), reads its chunk and sends. Added RTT: "
        + ("the sandbox holds every answer that long after counting the request (`UsersTrack.response_delay`)"
           if args.rtt_side == "server" else "the client's sending thread holds every response that long") + ".",
        "- **share of the limit = requests / span / limit**, span = first request sent (by any worker) → last "
        "response received (by any worker): the staggered start and the uneven end are inside it. *pacing bound* "
        "= the share these start offsets allow when every limiter paces its static budget exactly (no overhead). "
        "*steady-state fill* = requests sent while every chunk was being sent (latest first grant → earliest last "
        "grant) / (that time × limit). *busiest window* = most requests in any sliding window: the client's grants "
        "(our pacing; must be ≤ limit) / the POSTs arriving at the sandbox (refused ones included). *other "
        "processes' CPU* = the machine's busy CPU (/proc/stat) minus the workers' and the sandbox's, GO → workers "
        "done, in cores of 2: what other jobs took (the 1-min load average also counts this benchmark's own "
        "threads).",
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
