"""Benchmark of the Lytics -> Braze audience diff against DuckDB, in one command.

    .venv/bin/python -m bench.run_l2b_diff [--members 10000000] [--churn 0.01] [--out bench/results_l2b_diff.md]
    .venv/bin/python -m bench.run_l2b_diff --members 100000000     # the out-of-core step (bench/l2b_diff_100m.py)

What is compared (one audience, `--members` ids, `--churn` of them left and as many new ones came):

- ours: `include.audiences_to_braze.diff.diff_audience` (adds = current - previous, removes = previous -
  current, both sorted) followed by `merge_changes([that one audience])` (the per-user table the
  delivery step batches);
- baseline: DuckDB doing the same two anti-joins (`SELECT id FROM cur ANTI JOIN prev USING (id)`
  and the reverse), results fetched as Arrow tables, unsorted. It does not merge: the baseline is
  strict (it does less work than ours).

Setup (the fair part): the ids are generated once (not timed) into Parquet files as
`write_snapshot` stores them (zstd, no dictionary) and cached in bench/.data/. Main row: every
measured process reads both files into Arrow arrays *before* the clock starts, then times only
the diff; DuckDB gets the same Arrow tables registered (zero-copy scans). Both sides therefore
hold the same inputs in memory, and the peak RSS of both includes them. Context rows: the same
with the Parquet reads inside the clock (ours `pyarrow.parquet.read_table`, DuckDB
`read_parquet`), and ours with a hash anti-join (`pyarrow.compute.is_in` both ways) instead of
the sorted merge, to show why the merge is used.

Measurement (shared with bench/run_b2l.py: bench/measure.py): each run is a fresh child process
(`python -m bench.run_l2b_diff --worker '<json>'`, bench/l2b_diff_worker.py), time = perf_counter
around the operation only, best of 3 with the sides alternating; peak RSS = the best run's whole
process tree (psutil polling every 20 ms, or the worker's own VmHWM read before exit, whichever is
larger). Both sides may use both CPUs (DuckDB its default thread pool; ours is single-threaded).
Checks: ours and DuckDB's add/remove sets are identical to what the generator changed, in every run.
The command reports; it does not gate (exit 0 even when a target is missed).

The in-memory rows also get a context row for the streamed diff (`diff_files.diff_snapshot_files`
straight from the two Parquet files, the same reads inside the clock as DuckDB's `read_parquet`).
From `--members 50000000` on (or with `--out-of-core`) the command runs the *out-of-core* step
instead: that streamed diff against DuckDB's two anti-joins on `read_parquet`, with today's
in-memory path as context (bench/l2b_diff_100m.py explains it; report: bench/results_l2b_diff_100m.md).
Data of 20M members or more is generated streaming (bench/l2b_diff_data.py).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench.l2b_diff_worker import ID_WIDTH, read_ids, worker_main

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "bench" / ".data"
TARGET_RATIO = 1.2
TARGET_RSS_MB = 1024
STREAM_PREP_FROM = 20_000_000  # members from which the data is generated streaming (bench/l2b_diff_data.py)
OUT_OF_CORE_FROM = 50_000_000  # members from which the command runs the out-of-core step


# ------------------------------------------------------------------------------------------------
# Orchestrator
# ------------------------------------------------------------------------------------------------


def prepare(members: int, churn: float, seed: int, run_worker) -> tuple[Path, dict, bool]:
    """The cached data set for these parameters (generated in a child process the first time)."""
    directory = DATA / f"l2b_diff_{members}_{churn:g}_{seed}"
    meta_path = directory / "meta.json"
    try:
        meta = json.loads(meta_path.read_text())
        if all((directory / f"{n}.parquet").is_file() for n in ("previous", "current", "expected_adds",
                                                                   "expected_removes")):
            return directory, meta, True
    except (OSError, ValueError):
        pass
    print(f"generating {members:,} ids with {churn:.2%} churn into {directory} (once) ...", flush=True)
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    started = time.perf_counter()
    task = "prep_stream" if members >= STREAM_PREP_FROM else "prep"
    run = run_worker({"task": task, "dir": str(directory), "members": members, "churn": churn, "seed": seed})
    meta = dict(run.info, generated_in_s=round(time.perf_counter() - started, 1))
    meta_path.write_text(json.dumps(meta))
    return directory, meta, False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--members", type=int, default=10_000_000)
    parser.add_argument("--churn", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", help="report file (default bench/results_l2b_diff.md, "
                        "bench/results_l2b_diff_100m.md for the out-of-core step)")
    parser.add_argument("--out-of-core", action="store_true",
                        help=f"run the out-of-core step (the default from {OUT_OF_CORE_FROM:,} members)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker_main(args.worker)
        return 0
    args.out_of_core = args.out_of_core or args.members >= OUT_OF_CORE_FROM
    if args.out is None:
        args.out = str(REPO / "bench" / ("results_l2b_diff_100m.md" if args.out_of_core else "results_l2b_diff.md"))

    import pyarrow as pa

    from bench.b2l_report import Report, Row, table
    from bench.measure import MB, Run, StepFailed, best, measure, worker_env

    def run_worker(task: dict) -> Run:
        return measure([sys.executable, "-m", "bench.run_l2b_diff", "--worker", json.dumps(task)],
                       env=worker_env(), worker=True)

    began = time.perf_counter()
    load_start = os.getloadavg()
    directory, meta, reused = prepare(args.members, args.churn, args.seed, run_worker)
    files = {n: str(directory / f"{n}.parquet") for n in ("previous", "current")}
    expected = {op: read_ids(str(directory / f"expected_{op}.parquet")) for op in ("adds", "removes")}
    work = Path(tempfile.mkdtemp(prefix="l2b-diff-"))
    if args.out_of_core:
        from bench import l2b_diff_100m

        variants = l2b_diff_100m.variants(str(work / "duckdb-tmp"))
    else:
        variants = {
            "ours": {"task": "ours"},
            "duckdb": {"task": "duckdb"},
            "ours_parquet": {"task": "ours", "read_in_clock": True},
            "duckdb_parquet": {"task": "duckdb", "read_in_clock": True},
            "ours_hash": {"task": "ours", "hash": True},
            "ours_files": {"task": "ours", "files": True},
        }
    runs: dict[str, list[Run]] = {name: [] for name in variants}
    errors: dict[str, str] = {}
    checks: list[str] = []
    try:
        for rep in range(args.repeats):
            order = list(variants) if rep % 2 == 0 else list(reversed(variants))  # alternate who goes first
            for name in order:
                if name in errors:
                    continue
                out = str(work / f"{name}-{rep}")
                try:
                    run = run_worker(dict(variants[name], out=out, **files))
                except StepFailed as exc:
                    lines = [ln for ln in str(exc).splitlines() if ln.strip()]
                    errors[name] = lines[-1][:200] if lines else "failed"
                    print(f"{name}: {exc}", file=sys.stderr)
                    continue
                runs[name].append(run)
                for op in ("adds", "removes"):
                    got = _read_arrow(f"{out}.{op}.arrow")
                    ok = got.equals(expected[op])
                    if not ok:
                        checks.append(f"**MISMATCH** {name} run {rep + 1}: {op} {len(got):,} ids differ from the "
                                      f"{len(expected[op]):,} expected")
                print(f"  {name} run {rep + 1}: {run.seconds:.3f}s, {run.rss / MB:.0f} MB", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def row(step, ours, base, base_name, target, limits=True, note=""):
        r = Row(step=step, ours=best(runs[ours]) if runs[ours] else None, baseline_name=base_name,
                baseline=best(runs[base]) if runs[base] else None, target=target, note=note,
                error=errors.get(ours) or errors.get(base) or "")
        if limits:
            r.limit_ratio, r.limit_rss_mb = TARGET_RATIO, TARGET_RSS_MB
        return r

    duck_version = (runs.get("duckdb") or runs["duckdb_parquet"] or [None])[0]
    duck_version = duck_version.info.get("version", "?") if duck_version else "?"
    report = Report()
    if args.out_of_core:
        from bench import l2b_diff_100m

        l2b_diff_100m.fill_report(report, args, runs, row, duck_version, meta, reused, expected, checks)
        load_end = os.getloadavg()
        took = time.perf_counter() - began
        text = l2b_diff_100m.render(args, report, table(report.rows), load_start, load_end, took, pa.__version__)
        Path(args.out).write_text(text)
        print()
        print(table(report.rows))
        print(f"\nreport written to {args.out}")
        return 0
    report.rows = [
        row("diff + merge, inputs in memory", "ours", "duckdb",
            f"DuckDB {duck_version}: two ANTI JOINs on registered Arrow tables", f"≤ {TARGET_RATIO}×, ≤ 1 GB"),
        row("diff + merge incl. reading both Parquet files", "ours_parquet", "duckdb_parquet",
            "DuckDB: two ANTI JOINs on read_parquet()", "(context)", limits=False),
        row("hash variant (pc.is_in both ways) + merge, inputs in memory", "ours_hash", "duckdb",
            "DuckDB: two ANTI JOINs on registered Arrow tables", "(context)", limits=False),
        row("streamed diff (diff_snapshot_files) + merge, straight from both Parquet files", "ours_files",
            "duckdb_parquet", "DuckDB: two ANTI JOINs on read_parquet()", "(context)", limits=False),
    ]
    labels = {"ours": "ours, inputs in memory", "duckdb": "DuckDB, Arrow tables",
              "ours_parquet": "ours incl. Parquet reads", "duckdb_parquet": "DuckDB read_parquet",
              "ours_hash": "ours with is_in (hash)", "ours_files": "ours streamed from the files"}
    for name, label in labels.items():
        report.detail(label, runs[name])
    best_ours = best(runs["ours"]) if runs["ours"] else None
    best_duck = best(runs["duckdb"]) if runs["duckdb"] else None
    report.facts = [
        f"Data: previous {meta['previous']:,} ids, current {meta['current']:,} ids "
        f"(`u` + {ID_WIDTH} digits, sorted, unique); {meta['changed']:,} left and {meta['changed']:,} joined "
        f"({args.churn:.2%} churn each way); Parquet zstd, no dictionary; "
        + ("reused from bench/.data." if reused else f"generated in {meta['generated_in_s']} s into bench/.data."),
        "Correctness: " + ("; ".join(checks) if checks else
                           "every run of every variant produced exactly the expected add and remove sets "
                           f"({len(expected['adds']):,} adds, {len(expected['removes']):,} removes) -> OK"),
    ]
    if best_ours:
        i = best_ours.info
        report.facts.append(f"Ours, best run: diff_audience {i['diff_s']:.3f} s + merge_changes {i['merge_s']:.3f} s "
                            f"-> {i['rows']:,} user rows; CPU {best_ours.cpu:.2f} s for the whole process (start-up, imports "
                            "and the multi-threaded Parquet reads included).")
    if runs["ours_files"]:
        i = best(runs["ours_files"]).info
        report.facts.append(f"Ours streamed, best run: diff_snapshot_files {i['diff_s']:.3f} s (reads included; blocks "
                            f"of {i['block_rows']:,} ids, {i['prefetch']} block read ahead per side by a thread) + "
                            f"merge_changes {i['merge_s']:.3f} s.")
    if best_duck:
        report.facts.append(f"DuckDB, best run: threads={best_duck.info.get('threads')}, CPU {best_duck.cpu:.2f} s "
                            f"for the whole process; peak RSS {best_duck.rss / MB:.0f} MB.")
    load_end = os.getloadavg()
    took = time.perf_counter() - began
    text = render(args, report, table(report.rows), load_start, load_end, took, pa.__version__)
    Path(args.out).write_text(text)
    print()
    print(table(report.rows))
    print(f"\nreport written to {args.out}")
    return 0


def _read_arrow(path: str):
    import pyarrow as pa

    with pa.memory_map(path) as source:
        column = pa.ipc.open_file(source).read_all().column("id")
    return column.combine_chunks()


def render(args, report, md_table: str, load_start, load_end, took: float, pa_version: str) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), cpu)
    except OSError:
        pass
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    cmd = "`.venv/bin/python -m bench.run_l2b_diff" + (
        f" --members {args.members}" if args.members != 10_000_000 else "") + (
        f" --churn {args.churn:g}" if args.churn != 0.01 else "") + "`"
    lines = [
        f"# Lytics → Braze audience diff benchmark ({args.members:,} members, {args.churn:.2%} churn)",
        "",
        f"- Date: {now} (took {took:.0f} s)",
        f"- Machine: {os.cpu_count()} CPUs, {cpu}, {mem_gib:.1f} GiB RAM, Python {platform.python_version()}, "
        f"pyarrow {pa_version}, Linux {platform.release()}",
        f"- Load average (1/5/15 min): {' / '.join(f'{x:.2f}' for x in load_start)} at start, "
        f"{' / '.join(f'{x:.2f}' for x in load_end)} at end (other jobs may share the CPUs: compare the ratio "
        "and the spread in 'Every run' rather than absolute times)",
        f"- Command: {cmd}",
        f"- Times: best of {args.repeats}, the sides alternating; every run a fresh process; time around the "
        "operation only (imports and, in the main row, the Parquet reads happen before the clock). Peak RSS: the "
        "best run's whole process tree, inputs and interpreter included.",
        "",
        md_table,
        "",
        "## Setup",
        "",
        "- **Ours**: `diff_audience(slug, current, previous)` (a merge of the two sorted arrays: exact "
        "`pyarrow.compute.search_sorted` positions for every 16th id, the others checked for equality at the "
        "position their neighbours predict, a search only for the misses; plus the sortedness check of both "
        "inputs) + `merge_changes([changes])` (the per-user `external_id, add, remove` table, sorted by id). "
        "Single-threaded.",
        "- **DuckDB**: `SELECT id FROM cur ANTI JOIN prev USING (id)` and the reverse, fetched with "
        "`.to_arrow_table()`; no ORDER BY and no merge (strict baseline: it does less than ours). Default "
        "thread pool (all CPUs).",
        "- **Inputs**: both sides read the same two Parquet files (as `write_snapshot` writes them). Main row: "
        "read into Arrow before the clock; DuckDB scans the same Arrow tables (registered, zero-copy). Context "
        "row 2: the reads inside the clock (DuckDB `read_parquet`). Context row 3: the hash anti-join the "
        "design first called for (`pc.is_in` both ways), to show why the merge replaced it. Context row 4: "
        "`diff_files.diff_snapshot_files` streaming both files block by block (the out-of-core diff; its 100M "
        "figures are in results_l2b_diff_100m.md).",
        "",
        "## Facts",
        "",
        *[f"- {f}" for f in report.facts],
        "",
        "## Every run",
        "",
        "time / peak RSS / CPU user+sys of the whole process tree / wall clock from spawn to exit (includes "
        "interpreter start-up, imports and untimed input reads) / 1-min load average before the run",
        "",
        *report.details,
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
