"""The out-of-core step of the diff benchmark: a 100,000,000-member audience, streamed from its snapshot files.

    .venv/bin/python -m bench.run_l2b_diff --members 100000000      # ~6 min on 2 cores (+~30 s data the first time)

Target (the issue): 1% churn each way, **≤ 1 GB peak RSS and ≤ 1.2× DuckDB** doing the same two
anti-joins on the same Parquet files.

- **ours**: `include.audiences_to_braze.diff_files.diff_snapshot_files(slug, current, previous)` on
  the two files opened as the pipeline opens them (`StateStore.parquet_file`: memory-mapped), then
  `merge_changes([changes])` -- inside the clock: opening the files, every read, the diff, the merge.
- **baseline**: DuckDB (default threads, default memory limit, temp directory in the run's scratch
  directory) `SELECT id FROM read_parquet(cur) ANTI JOIN read_parquet(prev) USING (id)` and the
  reverse, fetched as Arrow; no merge and no ORDER BY (it does less than ours).
- **context**: today's path, `read_snapshot` of both files whole then `diff_audience` (+ merge),
  the reads inside the clock: what the streaming replaces.

The data (`bench/l2b_diff_data.py`): previous and current 100,000,000 ids each (`u` + 9 digits,
1,000,000 left, 1,000,000 joined), written streaming exactly as `write_snapshot` writes them (zstd,
no dictionary, row groups of 1,048,576 ids; checked byte for byte on a sample), cached in
bench/.data. Every run is a fresh process; time, peak RSS of the process tree and CPU as in the
other rows (bench/measure.py); best of `--repeats`, the sides alternating; every run's adds and
removes are checked against the generator's.
"""

from __future__ import annotations

import datetime as dt
import os
import platform

from bench.measure import MB, best

TARGET = "≤ 1.2×, ≤ 1 GB"


def variants(duckdb_temp: str) -> dict[str, dict]:
    os.makedirs(duckdb_temp, exist_ok=True)
    return {
        "ours_files": {"task": "ours", "files": True},
        "duckdb_parquet": {"task": "duckdb", "read_in_clock": True, "temp_dir": duckdb_temp},
        "ours_parquet": {"task": "ours", "read_in_clock": True},
    }


def fill_report(report, args, runs, row, duck_version: str, meta: dict, reused: bool, expected: dict,
                checks: list[str]) -> None:
    report.rows = [
        row("diff + merge, out of core: streamed from both Parquet files (`diff_snapshot_files`)", "ours_files",
            "duckdb_parquet", f"DuckDB {duck_version}: two ANTI JOINs on read_parquet()", TARGET),
        row("today's path: both files read whole (`read_snapshot`) + `diff_audience` + merge", "ours_parquet",
            "duckdb_parquet", "DuckDB: two ANTI JOINs on read_parquet()", "(context)", limits=False),
    ]
    for name, label in (("ours_files", "ours streamed from the files"), ("duckdb_parquet", "DuckDB read_parquet"),
                        ("ours_parquet", "ours, files read whole + diff_audience")):
        report.detail(label, runs[name])
    sizes = meta.get("bytes", {})
    layout = meta.get("layout_as_write_snapshot")
    report.facts = [
        f"Data: previous {meta['previous']:,} ids, current {meta['current']:,} ids (`u` + 9 digits, sorted, unique); "
        f"{meta['changed']:,} left and {meta['changed']:,} joined ({args.churn:.2%} churn each way); Parquet zstd, "
        "no dictionary, row groups of 1,048,576 ids"
        + (f" (previous {sizes['previous'] / MB:.0f} MB, current {sizes['current'] / MB:.0f} MB on disk)" if sizes else "")
        + "; written streaming"
        + ("" if layout is None else " — same row groups, encodings and sizes as `write_snapshot`'s output on a sample: "
           + ("yes" if layout else "**NO**"))
        + "; " + ("reused from bench/.data." if reused else f"generated in {meta['generated_in_s']} s into bench/.data."),
        "Correctness: " + ("; ".join(checks) if checks else
                           "every run of every variant produced exactly the expected add and remove sets "
                           f"({len(expected['adds']):,} adds, {len(expected['removes']):,} removes) -> OK"),
    ]
    if runs["ours_files"]:
        b = best(runs["ours_files"])
        i = b.info
        report.facts.append(
            f"Ours streamed, best run: diff_snapshot_files {i['diff_s']:.2f} s (all reads included; blocks of "
            f"{i['block_rows']:,} ids, {i['prefetch']} block read ahead per side by a reader thread) + merge_changes "
            f"{i['merge_s']:.2f} s -> {i['rows']:,} user rows; CPU {b.cpu:.1f} s for the whole process (start-up and "
            f"imports included); peak RSS {b.rss / MB:.0f} MB (interpreter, pyarrow, the memory-mapped file pages "
            f"touched, the 2 × {meta['changed']:,} changes and the merged table included).")
    if runs["ours_parquet"]:
        b = best(runs["ours_parquet"])
        i = b.info
        report.facts.append(
            f"Today's path, best run: read_snapshot × 2 {i['read_s']:.2f} s + diff_audience {i['diff_s']:.2f} s + "
            f"merge {i['merge_s']:.2f} s; peak RSS {b.rss / MB:.0f} MB.")
    if runs["duckdb_parquet"]:
        b = best(runs["duckdb_parquet"])
        i = b.info
        left = i.get("temp_left_bytes", 0)
        report.facts.append(
            f"DuckDB, best run: threads={i.get('threads')}, memory_limit={i.get('memory_limit')} (the default: 80% of "
            f"RAM; nothing was set), temp_directory={i.get('temp_directory')} "
            + (f"({left / MB:.0f} MB left in it after the queries)" if left else
               "(empty after the queries; DuckDB removes its spill files itself, so that does not prove it never "
               "spilled, but its peak stayed far below the limit)")
            + f"; CPU {b.cpu:.1f} s for the whole process; peak RSS {b.rss / MB:.0f} MB.")


def render(args, report, md_table: str, load_start, load_end, took: float, pa_version: str) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), cpu)
    except OSError:
        pass
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    cmd = f"`.venv/bin/python -m bench.run_l2b_diff --members {args.members}" + (
        f" --churn {args.churn:g}" if args.churn != 0.01 else "") + (
        f" --repeats {args.repeats}" if args.repeats != 3 else "") + "`"
    return "\n".join([
        f"# Lytics → Braze audience diff, out of core ({args.members:,} members, {args.churn:.2%} churn)",
        "",
        f"- Date: {now} (took {took:.0f} s)",
        f"- Machine: {os.cpu_count()} CPUs, {cpu}, {mem_gib:.1f} GiB RAM, Python {platform.python_version()}, "
        f"pyarrow {pa_version}, Linux {platform.release()}",
        f"- Load average (1/5/15 min): {' / '.join(f'{x:.2f}' for x in load_start)} at start, "
        f"{' / '.join(f'{x:.2f}' for x in load_end)} at end (other jobs may share the CPUs: compare the ratio, "
        "the CPU seconds and the spread in 'Every run' rather than absolute times)",
        f"- Command: {cmd}",
        f"- Times: best of {args.repeats}, the sides alternating; every run a fresh process; time around the "
        "operation only: opening the files, all reads, the diff (and our merge) are inside the clock, interpreter "
        "start-up and imports are not. Peak RSS: the best run's whole process tree, interpreter included.",
        "",
        md_table,
        "",
        "## Setup",
        "",
        "- **Ours**: `diff_files.diff_snapshot_files(slug, store.parquet_file(current), store.parquet_file(previous))` "
        "— both files read batch by batch (`iter_batches`, 1 Mi ids), each side's buffer topped up to ≥ 1 Mi ids, "
        "both cut at the smaller of their last ids and the heads diffed with `diff.py`'s in-memory merge "
        "(`_match_sorted`); each batch is checked sorted and unique; one reader thread per side keeps one block "
        "ready (Parquet decoding releases the GIL). Then `merge_changes([changes])`. The files are memory-mapped "
        "(`StateStore.parquet_file` on a local store), so the file pages it touched count in its RSS.",
        "- **DuckDB**: `SELECT id FROM read_parquet(cur) AS c ANTI JOIN read_parquet(prev) AS p USING (id)` and the "
        "reverse, `.to_arrow_table()`; no ORDER BY, no merge. Default thread pool and memory limit; only its "
        "temp directory is set (to the run's scratch directory instead of `.tmp` in the repository).",
        "- **Context**: `read_snapshot` of both files into memory, `diff_audience`, merge — the path the pipeline "
        "takes today, reads inside the clock.",
        "",
        "## Facts",
        "",
        *[f"- {f}" for f in report.facts],
        "",
        "## Every run",
        "",
        "time / peak RSS / CPU user+sys of the whole process tree / wall clock from spawn to exit (includes "
        "interpreter start-up and imports) / 1-min load average before the run",
        "",
        *report.details,
        "",
    ])
