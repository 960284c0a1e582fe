"""Step 2 of the Braze -> Lytics benchmark: shaping the export, ours vs DuckDB doing the same job.

Ours: ``include.segments_to_lytics.csv_shape.shape_export`` of the zip (workers=2, the headline;
workers=1 for context). DuckDB: ``bench/b2l_duckdb.py`` on the extracted files (strict baseline,
the ratio), each numbering variant asked for; "DuckDB + unzip" (extract, then the headline
variant) for context. Checked once, untimed: every output against the ground truth (rows, id set,
first occurrence kept for every duplicated id), workers=1 byte-identical to workers=2, DuckDB's
numbering against the real position of every row, and how many cells differ between our CSV and
DuckDB's for a sample of ids.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from bench.b2l_data import USERS_PER_FILE, Dataset, Truth, check_csv, compare_cells
from bench.b2l_report import Report, Row
from bench.measure import MB, Run, StepFailed, best, package_version, run_worker

REPEATS = 3


def _same_file(a: Path, b: Path) -> bool:
    if a.stat().st_size != b.stat().st_size:
        return False
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(1 << 20), fb.read(1 << 20)
            if x != y:
                return False
            if not x:
                return True


def pair(rep: int, a, b) -> None:
    """Run both sides, alternating which goes first from one repetition to the next."""
    for fn in ((a, b) if rep % 2 == 0 else (b, a)):
        fn()


def duckdb_name(variant: str) -> str:
    return f"DuckDB {package_version('duckdb')} same job (`{variant}` numbering), extracted files"


def check_order(ds: Dataset, truth: Truth, variant: str, report: Report) -> bool:
    """DuckDB's numbering vs where each row really is (see b2l_duckdb.order_check_sql)."""
    from bench.b2l_data import SEGMENT_ID

    r = run_worker({"task": "duckdb_order", "glob": ds.glob, "variant": variant,
                    "users_per_file": USERS_PER_FILE, "segment_id": SEGMENT_ID}).info
    ok = (r["rows"] == truth.users and r["at_own_position"] == truth.kept and r["not_contiguous"] == 0
          and r["with_id"] == truth.kept + truth.duplicates and r["files"] == ds.files)
    report.fact(f"DuckDB `{variant}` numbering: {r['rows']:,} rows in {r['files']} files; {r['at_own_position']:,} "
                f"rows whose id is their own natural id sit exactly at file_no × {USERS_PER_FILE:,} + line "
                f"(expected {truth.kept:,}: every kept row); numbers not contiguous within a file: "
                f"{r['not_contiguous']} -> {'OK' if ok else 'MISMATCH'}")
    return ok


def step_shaping(ds: Dataset, truth: Truth, work: Path, report: Report, variants: list[str]) -> Path | None:
    ours2_out, ours1_out = work / "shaped_ours_w2.csv", work / "shaped_ours_w1.csv"
    duck_out = {v: work / f"shaped_duckdb_{v}.csv" for v in variants}
    duck2_out, unzip_dir, quarantine = work / "shaped_duckdb_unzipped.csv", work / "unzipped", work / "quarantine.csv"
    head = variants[0]
    runs: dict[str, list[Run]] = {"w2": [], "w1": [], "unzip": [], "duck_unzip": [], **{v: [] for v in variants}}

    def ours(workers: int, out: Path) -> None:
        runs[f"w{workers}"].append(run_worker({"task": "shape", "zip": str(ds.zip_path), "out": str(out),
                                               "quarantine": str(quarantine), "workers": workers}))

    def duck(variant: str) -> None:
        runs[variant].append(run_worker({"task": "duckdb", "glob": ds.glob, "out": str(duck_out[variant]),
                                         "variant": variant}))

    def unzip_then_duck() -> None:
        shutil.rmtree(unzip_dir, ignore_errors=True)
        runs["unzip"].append(run_worker({"task": "extract", "zip": str(ds.zip_path), "dest": str(unzip_dir)}))
        runs["duck_unzip"].append(run_worker({"task": "duckdb", "glob": str(unzip_dir / "**" / "*.json"),
                                              "out": str(duck2_out), "variant": head}))
        shutil.rmtree(unzip_dir, ignore_errors=True)
        duck2_out.unlink(missing_ok=True)

    ok = True
    for rep in range(REPEATS):
        pair(rep, lambda: ours(2, ours2_out), lambda: duck(head))
        pair(rep, lambda: ours(1, ours1_out), unzip_then_duck)
        for v in variants[1:]:
            duck(v)
        if rep == 0:
            ok &= _check_ours(ours2_out, ours1_out, duck_out[head], truth, report)
            for v in variants:
                ok &= _check_duck(duck_out[v], truth, v, report)
                ok &= check_order(ds, truth, v, report)
        ours1_out.unlink(missing_ok=True)
        for path in duck_out.values():
            path.unlink(missing_ok=True)
        print(f"  shaping repeat {rep + 1}/{REPEATS}: ours w2 {runs['w2'][-1].seconds:.2f}s, "
              + ", ".join(f"DuckDB {v} {runs[v][-1].seconds:.2f}s" for v in variants)
              + f", ours w1 {runs['w1'][-1].seconds:.2f}s, unzip {runs['unzip'][-1].seconds:.2f}s", flush=True)

    labels = [("w2", "shaping ours workers=2"), ("w1", "shaping ours workers=1"),
              *((v, f"DuckDB same job `{v}` on extracted files") for v in variants),
              ("unzip", "unzip (zipfile.extractall)"), ("duck_unzip", f"DuckDB `{head}` on freshly unzipped files")]
    for key, label in labels:
        report.detail(label, runs[key])
    bw2, bw1, bduck = best(runs["w2"]), best(runs["w1"]), best(runs[head])
    combined = [Run(seconds=u.seconds + d.seconds, rss=max(u.rss, d.rss), cpu=u.cpu + d.cpu, wall=u.wall + d.wall,
                    load1=u.load1) for u, d in zip(runs["unzip"], runs["duck_unzip"], strict=True)]
    bcomb = best(combined)
    error = "" if ok else "output check failed (see Facts)"
    report.rows += [
        Row("2. shaping, workers=2", bw2, duckdb_name(head), bduck, "≤ 1.0×, ≤ 300 MB", limit_ratio=1.0,
            limit_rss_mb=300, error=error),
        *(Row(f"2. shaping, workers=2 (vs `{v}`)", bw2, duckdb_name(v), best(runs[v]), "(context)")
          for v in variants[1:]),
        Row("2. shaping, workers=2 (vs + unzip)", bw2, f"unzip + DuckDB `{head}` (extract then the same job)", bcomb,
            "(context)"),
        Row("2. shaping, workers=1", bw1, duckdb_name(head), bduck, "(context)"),
    ]
    report.fact("DuckDB peak RSS (best runs): " + ", ".join(f"`{v}` {best(runs[v]).rss / MB:.0f} MB" for v in variants)
                + f"; unzip + `{head}` {bcomb.rss / MB:.0f} MB.")
    return ours2_out


def _check_duck(out: Path, truth: Truth, variant: str, report: Report) -> bool:
    if not out.exists():
        raise StepFailed(f"DuckDB `{variant}` wrote no CSV")
    c = check_csv(out, truth)
    report.fact(f"DuckDB `{variant}` CSV ({out.stat().st_size / MB:.1f} MB): {c.describe(truth)} -> "
                f"{'OK' if c.ok else 'MISMATCH'}")
    return c.ok


def _check_ours(w2: Path, w1: Path, duck: Path, truth: Truth, report: Report) -> bool:
    c = check_csv(w2, truth)
    same = _same_file(w1, w2)
    report.fact(f"Our CSV ({w2.stat().st_size / MB:.1f} MB, workers=2): {c.describe(truth)}; workers=1 "
                f"byte-identical: {same} -> {'OK' if c.ok and same else 'MISMATCH'}")
    diffs = compare_cells(w2, duck)
    examples = diffs.pop("_examples")
    n = diffs.pop("(rows compared)")
    report.fact(f"Same cells? Every 20th id of our CSV ({n:,} rows × {len(_header(w2))} columns) compared with "
                f"DuckDB's row for that id (both parsed as CSV): "
                + (", ".join(f"{col}: {k:,} differ (e.g. {examples[col]})" for col, k in diffs.items())
                   if diffs else "no cell differs")
                + ". Line ends differ (ours CRLF, RFC 4180; DuckDB LF), and DuckDB writes an empty string "
                  "as `\"\"`, null as nothing; ours writes both as nothing.")
    return c.ok and same


def _header(path: Path) -> list[str]:
    with open(path, encoding="utf-8") as fh:
        return fh.readline().rstrip("\r\n").split(",")
