"""Benchmark of the Braze -> Lytics pipeline against reference tools, on realistic data, in one command.

    .venv/bin/python -m bench.run_b2l [--users 500000] [--users-5m] [--out bench/results_b2l.md]

Steps (see bench/README.md for what each one means and how to read the table):

1. data prep (not timed): a realistic Braze segment export (zip of NDJSON files, 5,000 users each,
   members ``<prefix>-<N>.json``) and its ground truth -- bench/b2l_data.py.
2. shaping: ``shape_export`` (workers=2 and 1) vs DuckDB doing the same job -- bench/b2l_shaping.py.
3. PGP encrypt and 4. SFTP upload of the shaped CSV -- bench/b2l_pgp_sftp.py.
5. DAG parse -- bench/b2l_dagparse.py.
6. whole transfer: sandbox link -> shape -> gzip -> PGP -> SFTP, ours vs a shell chain -- bench/b2l_transfer.py.
7. (``--users-5m``) peak RSS of our shaping on 5,000,000 users -- bench/b2l_5m.py.

Every measured run is a fresh child process (bench/measure.py). The table reports; it never fails
the command (exit 0).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

from bench.b2l_data import USERS_PER_FILE, ground_truth, prepare_data
from bench.b2l_duckdb import VARIANTS
from bench.b2l_report import Report, Row, markdown, table
from bench.measure import MB, REPO, StepFailed, load_text, machine

STEPS = ("2", "3", "4", "5", "6")


DEFAULT_STEPS = ",".join(STEPS)
DEFAULT_OUT = REPO / "bench" / "results_b2l.md"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--users", type=int, default=500_000, help="users in the export (default 500000)")
    ap.add_argument("--users-5m", action="store_true",
                    help="also step 7: shape a realistic 5,000,000-user export (first time: ~3 min to generate, "
                         "~5 GB in bench/.data; then ~3 min)")
    ap.add_argument("--duckdb-variants", default="ordinality,table,union",
                    help=f"DuckDB numbering variants, comma-separated, from {', '.join(VARIANTS)}; the first is the "
                         f"baseline of the ratio, the others are context rows (default: all three)")
    ap.add_argument("--steps", default=DEFAULT_STEPS, help=f"steps to run (default: {DEFAULT_STEPS})")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="markdown report file")
    args = ap.parse_args(argv)
    variants = [v.strip() for v in args.duckdb_variants.split(",") if v.strip()]
    if not variants or any(v not in VARIANTS for v in variants):
        ap.error(f"--duckdb-variants: choose from {VARIANTS}")
    steps = set(args.steps.split(","))

    started = dt.datetime.now(dt.UTC)
    t0 = time.perf_counter()
    load_start = os.getloadavg()
    report = Report()
    print(f"Braze→Lytics benchmark, {args.users:,} realistic users; load average {load_text(load_start)}", flush=True)

    ds = prepare_data(args.users)
    report.fact(f"Export: {ds.users:,} realistic users (`SegmentSpec('bench', {ds.users}, realistic=True)`, the "
                f"pipeline's fields) in {ds.files} NDJSON files of ≤ {USERS_PER_FILE:,} lines, zip "
                f"{ds.zip_bytes / MB:.1f} MB, extracted {ds.json_bytes / MB:.1f} MB "
                f"({'reused from' if ds.reused else 'generated into'} bench/.data).")
    truth = ground_truth(args.users)
    report.fact(f"Ground truth (sandbox.braze_users.expected_rows): {truth.describe()}; "
                f"{len(truth.dup_checks):,} duplicated ids checked.")

    work = Path(tempfile.mkdtemp(prefix="b2l-", dir="/tmp"))
    shaped: list[Path] = []
    encrypted: list[Path] = []

    def needs(outputs: list[Path], what: str):
        if not outputs:
            raise StepFailed(f"no {what} (an earlier step failed or was not run)")
        return outputs[0]

    def shaping() -> None:
        from bench.b2l_shaping import step_shaping

        out = step_shaping(ds, truth, work, report, variants)
        if out:
            shaped.append(out)

    def pgp() -> None:
        from bench.b2l_pgp_sftp import step_pgp

        encrypted.append(step_pgp(needs(shaped, "shaped CSV"), work, report))

    def sftp() -> None:
        from bench.b2l_pgp_sftp import step_sftp

        step_sftp(needs(encrypted, "encrypted file"), work, report)

    def dags() -> None:
        from bench.b2l_dagparse import step_dags

        step_dags(work, report)

    def transfer() -> None:
        from bench.b2l_transfer import step_transfer

        step_transfer(args.users, truth, work, report, variants[0])

    def users_5m() -> None:
        from bench.b2l_5m import step_5m

        for path in (*shaped, *encrypted):  # free /tmp first: 5M outputs are large
            path.unlink(missing_ok=True)
        step_5m(work, report, variants[0])

    plan = [("2", "2. shaping", shaping), ("3", "3. PGP encrypt", pgp), ("4", "4. SFTP upload", sftp),
            ("5", "5. DAG parse", dags), ("6", "6. whole transfer", transfer)]
    if args.users_5m:
        plan.append(("7", "7. shaping 5,000,000 users", users_5m))
    try:
        for key, name, fn in plan:
            if key not in steps and not (key == "7" and args.users_5m):
                continue
            print(f"{name} ... (load average {load_text()})", flush=True)
            step_started = time.perf_counter()
            try:
                fn()
            except Exception as exc:  # noqa: BLE001 - the benchmark reports, it does not gate
                traceback.print_exc()
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                report.rows.append(Row(name, None, "—", None, "—", error=first[:160]))
            print(f"  ({name}: {time.perf_counter() - step_started:.0f} s)", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    load_end = os.getloadavg()
    took = time.perf_counter() - t0
    command = ".venv/bin/python -m bench.run_b2l" + (f" --users {args.users}" if args.users != 500_000 else "") \
        + (" --users-5m" if args.users_5m else "") + (f" --steps {args.steps}" if args.steps != DEFAULT_STEPS else "") \
        + (f" --out {args.out.relative_to(REPO) if args.out.is_relative_to(REPO) else args.out}"
           if args.out != DEFAULT_OUT else "")
    header = [
        f"- Date: {started:%Y-%m-%d %H:%M} UTC (took {took:.0f} s)",
        f"- Machine: {machine()}",
        f"- Load average (1/5/15 min): {load_text(load_start)} at start, {load_text(load_end)} at end "
        "(other processes may share the CPUs; see the per-run load in the details)",
        f"- Command: `{command}`",
        "- Times: best of 3, ours and baseline alternating in one run (DAG parse: best of 5; 5M: one run); "
        "peak RSS: the best run's, whole process tree (Python interpreter included for ours).",
    ]
    text = markdown(f"Braze → Lytics pipeline benchmark ({args.users:,} realistic users)", header, report)
    print()
    print(table(report.rows))
    print(f"\n- load average: {load_text(load_start)} at start, {load_text(load_end)} at end; took {took:.0f} s")
    try:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        print(f"written to {args.out}")
    except OSError as exc:
        print(f"could not write {args.out}: {exc}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
