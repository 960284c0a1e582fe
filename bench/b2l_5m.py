"""Step 7 of the Braze -> Lytics benchmark (opt-in, ``--users-5m``): shaping a 5,000,000-user export.

The target is memory: peak RSS of our shaping (workers=2, the whole process tree) <= 300 MB; the
time is informative. The realistic export (~1 GB zip, ~3.9 GB of NDJSON) is generated once into
``bench/.data/realistic_5000000/`` (~3 min) and reused. DuckDB doing the same job runs once on the
extracted files for context (its time and memory at this size). Skipped, with a message, when the
disk holding bench/.data has less than 15 GB free.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from bench.b2l_data import DATA, check_csv, ground_truth, prepare_data
from bench.b2l_report import Report, Row
from bench.b2l_shaping import duckdb_name
from bench.measure import MB, StepFailed, run_worker

USERS_5M = 5_000_000
MIN_FREE = 15 * 1024**3


def step_5m(work: Path, report: Report, variant: str, users: int = USERS_5M) -> None:
    DATA.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(DATA).free
    step = f"7. shaping {users:,} users, workers=2"
    if free < MIN_FREE:
        msg = f"skipped: only {free / 1024**3:.1f} GB free on the disk of {DATA} (needs 15 GB)"
        print(f"  {msg}", flush=True)
        report.rows.append(Row(step, None, "—", None, "≤ 300 MB", error=msg))
        return
    ds = prepare_data(users)
    started = time.perf_counter()
    truth = ground_truth(users, collect_ids=False, max_dup_checks=2000)
    print(f"  ground truth: {truth.describe()} ({time.perf_counter() - started:.0f} s)", flush=True)
    ours_out, duck_out = work / "shaped_5m_ours.csv", work / "shaped_5m_duckdb.csv"
    try:
        ours = run_worker({"task": "shape", "zip": str(ds.zip_path), "out": str(ours_out),
                           "quarantine": str(work / "quarantine_5m.csv"), "workers": 2})
        print(f"  ours: {ours.seconds:.1f}s, peak RSS {ours.rss / MB:.0f} MB", flush=True)
        c = check_csv(ours_out, truth)
        report.fact(f"{users:,} users ({ds.files:,} files, zip {ds.zip_bytes / MB:,.0f} MB, NDJSON "
                    f"{ds.json_bytes / MB:,.0f} MB; {truth.describe()}). Our CSV "
                    f"({ours_out.stat().st_size / MB:,.0f} MB): {c.describe(truth)} -> {'OK' if c.ok else 'MISMATCH'}")
        ours_out.unlink()
        duck = None
        try:
            duck = run_worker({"task": "duckdb", "glob": ds.glob, "out": str(duck_out), "variant": variant})
            print(f"  DuckDB: {duck.seconds:.1f}s, peak RSS {duck.rss / MB:.0f} MB", flush=True)
            d = check_csv(duck_out, truth)
            report.fact(f"{users:,} users, DuckDB `{variant}` CSV: {d.describe(truth)} -> "
                        f"{'OK' if d.ok else 'MISMATCH'}; peak RSS {duck.rss / MB:,.0f} MB")
        except StepFailed as exc:
            report.fact(f"{users:,} users, DuckDB `{variant}` failed: {str(exc).splitlines()[0][:200]}")
        report.detail(f"shaping {users:,} users, ours workers=2", [ours])
        if duck:
            report.detail(f"shaping {users:,} users, DuckDB `{variant}`", [duck])
        report.rows.append(Row(step, ours, duckdb_name(variant) + " (one run, context)", duck,
                               "≤ 300 MB (time: context)", limit_rss_mb=300,
                               error="" if c.ok else "output check failed (see Facts)"))
    finally:
        ours_out.unlink(missing_ok=True)
        duck_out.unlink(missing_ok=True)
