"""Benchmark of the Braze -> Lytics pipeline core against reference tools, in one command.

    .venv/bin/python -m bench.run_b2l [--users 500000] [--out bench/results_b2l.md]

Steps (see bench/README.md for what each one means and how to read the table):

1. data prep (not timed): a Braze-style export zip of NDJSON files (5,000 users each) in bench/.data/,
   plus the same files extracted for DuckDB; reused on the next run when the user count matches.
2. shaping: include.segments_to_lytics.csv_shape.shape_export (workers=2 and 1) vs DuckDB read_ndjson -> COPY CSV.
3. PGP encrypt: include.clients.pgp.files.encrypt_file vs the gpg CLI.
4. SFTP upload to a real OpenSSH sshd: include.clients.sftp.deliver vs the OpenSSH sftp CLI.
5. DAG parse: executing each file in dags/ after `import airflow.sdk`, in a fresh interpreter.

Every measured run is a fresh child process; its peak RSS is the larger of (a) the highest sum of
RSS over the child and all its descendants, polled every 20 ms with psutil, and (b) the kernel's
ru_maxrss for the child's subtree from wait4(). Times are best of 3 (DAG parse: best of 5); the
RSS reported is that of the best run. The table reports; it never fails the command (exit 0).
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "bench" / ".data"
LINES_PER_FILE = 5000
REPEATS = 3
DAG_REPEATS = 5
POLL_SECONDS = 0.02
MB = 1024 * 1024


# ------------------------------------------------------------------------------------------------
# Measuring one child process
# ------------------------------------------------------------------------------------------------


@dataclass
class Run:
    seconds: float  # the step's wall time (worker-reported for Python workers, else parent wall clock)
    rss: int  # peak RSS of the process tree, bytes
    cpu: float  # user+sys CPU seconds of the child and its reaped descendants
    wall: float  # parent wall clock from spawn to exit (includes interpreter start for workers)
    info: dict = field(default_factory=dict)
    load1: float = 0.0  # 1-minute load average just before the run


class StepFailed(RuntimeError):
    pass


def measure(cmd: list[str], *, env: dict | None = None, worker: bool = False, timeout: float = 3600) -> Run:
    """Run `cmd` as a fresh child; wall time, peak tree RSS, CPU; the worker's JSON result if `worker`."""
    load1 = os.getloadavg()[0]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL, cwd=REPO, env=env)
        peak = [0, 0]  # [highest tree RSS sum, highest single-process VmHWM]
        stop = threading.Event()

        def poll() -> None:
            try:
                root = psutil.Process(proc.pid)
            except psutil.Error:
                return
            while not stop.is_set():
                try:
                    pids = [proc.pid, *(c.pid for c in root.children(recursive=True))]
                except psutil.Error:
                    return
                total = 0
                for pid in pids:
                    rss, hwm = _rss_hwm(pid)
                    total += rss
                    if hwm > peak[1]:
                        peak[1] = hwm
                if total > peak[0]:
                    peak[0] = total
                stop.wait(POLL_SECONDS)

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)  # rusage of the child *and* its reaped descendants
        finally:
            timer.cancel()
        wall = time.perf_counter() - start
        stop.set()
        poller.join()
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode(errors="replace")
        stderr = err.read().decode(errors="replace")
    if proc.returncode != 0:
        raise StepFailed(f"{' '.join(cmd[:4])}... exited {proc.returncode}:\n{stderr[-3000:]}{stdout[-1000:]}")
    # Not usage.ru_maxrss: Linux carries the forking parent's RSS at exec time into the child's
    # ru_maxrss, so every child would look at least as big as this (large) parent process.
    rss = max(peak)
    cpu = usage.ru_utime + usage.ru_stime
    info: dict = {}
    seconds = wall
    if worker:
        lines = [ln for ln in stdout.splitlines() if ln.startswith("BENCH_RESULT ")]
        if not lines:
            raise StepFailed(f"worker printed no result:\n{stderr[-3000:]}")
        info = json.loads(lines[-1].removeprefix("BENCH_RESULT "))
        seconds = info.pop("seconds")
        rss = max(rss, info.pop("self_hwm_kib", 0) * 1024)  # the worker's own VmHWM, read just before exit
    return Run(seconds=seconds, rss=rss, cpu=cpu, wall=wall, info=info, load1=load1)


def _rss_hwm(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of one process in bytes, from /proc (0, 0 if it is gone or a zombie)."""
    rss = hwm = 0
    try:
        with open(f"/proc/{pid}/status", "rb") as fh:
            for line in fh:
                if line.startswith(b"VmRSS:"):
                    rss = int(line.split()[1]) * 1024
                elif line.startswith(b"VmHWM:"):
                    hwm = int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return rss, hwm


def worker_env(extra: dict | None = None) -> dict:
    env = dict(os.environ)  # the project is installed (scripts/setup.sh); `-m bench...` runs from the repo root
    env.update(extra or {})
    return env


def run_worker(task: dict, env: dict | None = None) -> Run:
    return measure([sys.executable, "-m", "bench.b2l_worker", json.dumps(task)], env=env or worker_env(),
                   worker=True)


def best(runs: list[Run]) -> Run:
    return min(runs, key=lambda r: r.seconds)


# ------------------------------------------------------------------------------------------------
# Results
# ------------------------------------------------------------------------------------------------


@dataclass
class Row:
    step: str
    ours: Run | None
    baseline_name: str
    baseline: Run | None
    target: str
    limit_ratio: float | None = None  # ours/baseline must be <= this
    limit_seconds: float | None = None  # ours must take <= this
    limit_rss_mb: float | None = None  # ours peak RSS must be <= this
    baseline_seconds: float | None = None  # when the baseline is a sum of runs
    note: str = ""
    error: str = ""

    @property
    def base_s(self) -> float | None:
        if self.baseline_seconds is not None:
            return self.baseline_seconds
        return self.baseline.seconds if self.baseline else None

    @property
    def ratio(self) -> float | None:
        if self.ours is None or not self.base_s:
            return None
        return self.ours.seconds / self.base_s

    @property
    def met(self) -> str:
        if self.error:
            return "error"
        checks = []
        if self.limit_ratio is not None:
            checks.append(self.ratio is not None and self.ratio <= self.limit_ratio)
        if self.limit_seconds is not None:
            checks.append(self.ours is not None and self.ours.seconds <= self.limit_seconds)
        if self.limit_rss_mb is not None:
            checks.append(self.ours is not None and self.ours.rss / MB <= self.limit_rss_mb)
        if not checks:
            return "(context)"
        return "yes" if all(checks) else "**no**"


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    details: list[str] = field(default_factory=list)
    facts: list[str] = field(default_factory=list)

    def detail(self, label: str, runs: list[Run]) -> None:
        parts = [f"{r.seconds:.3f}s/{r.rss / MB:.0f}MB/cpu {r.cpu:.2f}s/wall {r.wall:.2f}s/load {r.load1:.2f}"
                 for r in runs]
        self.details.append(f"- {label}: " + "; ".join(parts))


def fmt_s(v: float | None) -> str:
    return "—" if v is None else f"{v:.3f}"


def table(rows: list[Row]) -> str:
    head = ["step", "ours (s)", "ours peak RSS (MB)", "baseline", "baseline (s)", "ratio", "target", "met?"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    for r in rows:
        if r.error:
            cells = [r.step, "—", "—", r.baseline_name, "—", "—", r.target, f"error: {r.error}"]
        else:
            cells = [
                r.step,
                fmt_s(r.ours.seconds if r.ours else None),
                f"{r.ours.rss / MB:.0f}" if r.ours else "—",
                r.baseline_name,
                fmt_s(r.base_s),
                "—" if r.ratio is None else f"{r.ratio:.2f}×",
                r.target,
                r.met,
            ]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# Step 1: data prep (not timed)
# ------------------------------------------------------------------------------------------------


@dataclass
class Dataset:
    users: int
    zip_path: Path
    extracted: Path
    files: int
    reused: bool


def prepare_data(users: int) -> Dataset:
    """The export as Braze delivers it (zip of NDJSON files, 5,000 lines each), cached in bench/.data."""
    DATA.mkdir(parents=True, exist_ok=True)
    zip_path = DATA / f"braze_export_{users}.zip"
    extracted = DATA / f"braze_export_{users}"
    meta_path = DATA / f"braze_export_{users}.json"
    files = max(1, math.ceil(users / LINES_PER_FILE))
    names = [f"segment_bench_users_{i:05d}.json" for i in range(files)]
    try:
        meta = json.loads(meta_path.read_text())
        if (meta.get("users") == users and meta.get("files") == files and zip_path.stat().st_size == meta["zip_bytes"]
                and sorted(p.name for p in extracted.glob("*.json")) == names):
            return Dataset(users, zip_path, extracted, files, reused=True)
    except (OSError, ValueError, KeyError):
        pass

    from sandbox.braze_users import SegmentSpec, export_lines

    print(f"preparing a {users:,}-user export in {DATA} (once; reused next time) ...", flush=True)
    started = time.perf_counter()
    meta_path.unlink(missing_ok=True)
    tmp_zip = zip_path.with_name(zip_path.name + ".tmp")
    lines = export_lines(SegmentSpec("bench", users), None)
    with zipfile.ZipFile(tmp_zip, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for i, name in enumerate(names):
            count = min(LINES_PER_FILE, users - i * LINES_PER_FILE)
            chunk = b"".join(next(lines) for _ in range(count))
            zf.writestr(name, chunk)
    os.replace(tmp_zip, zip_path)
    tmp_dir = extracted.with_name(extracted.name + ".tmp")
    shutil.rmtree(tmp_dir, ignore_errors=True)
    shutil.rmtree(extracted, ignore_errors=True)
    with zipfile.ZipFile(zip_path) as zf:
        zf.extractall(tmp_dir)
    os.replace(tmp_dir, extracted)
    meta_path.write_text(json.dumps({"users": users, "files": files, "zip_bytes": zip_path.stat().st_size}))
    print(f"  done in {time.perf_counter() - started:.1f}s", flush=True)
    return Dataset(users, zip_path, extracted, files, reused=False)


# ------------------------------------------------------------------------------------------------
# Step 2: shaping
# ------------------------------------------------------------------------------------------------


def count_rows_and_ids(path: Path) -> tuple[int, set[str]]:
    with open(path, encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader)
        idx = header.index("user_id")
        ids = set()
        n = 0
        for row in reader:
            n += 1
            ids.add(row[idx])
    return n, ids


def step_shaping(ds: Dataset, work: Path, report: Report) -> Path | None:
    ours2_out = work / "shaped_ours_w2.csv"
    ours1_out = work / "shaped_ours_w1.csv"
    duck_out = work / "shaped_duckdb.csv"
    duck2_out = work / "shaped_duckdb_unzipped.csv"
    unzip_dir = work / "unzipped"
    quarantine = work / "quarantine.csv"
    glob = str(ds.extracted / "*.json")
    runs: dict[str, list[Run]] = {"w2": [], "w1": [], "duck": [], "unzip": [], "duck_unzip": []}

    def ours(workers: int, out: Path) -> Run:
        return run_worker({"task": "shape", "zip": str(ds.zip_path), "out": str(out),
                           "quarantine": str(quarantine), "workers": workers})

    def duck() -> Run:
        return run_worker({"task": "duckdb", "glob": glob, "out": str(duck_out)})

    def unzip_then_duck() -> None:
        shutil.rmtree(unzip_dir, ignore_errors=True)
        runs["unzip"].append(run_worker({"task": "extract", "zip": str(ds.zip_path), "dest": str(unzip_dir)}))
        runs["duck_unzip"].append(run_worker({"task": "duckdb", "glob": str(unzip_dir / "*.json"),
                                              "out": str(duck2_out)}))
        shutil.rmtree(unzip_dir, ignore_errors=True)
        duck2_out.unlink(missing_ok=True)

    verified = ""
    for rep in range(REPEATS):
        pairs = [
            (lambda: runs["w2"].append(ours(2, ours2_out)), lambda: runs["duck"].append(duck())),
            (lambda: runs["w1"].append(ours(1, ours1_out)), unzip_then_duck),
        ]
        for a, b in pairs:
            for fn in ((a, b) if rep % 2 == 0 else (b, a)):  # alternate which side goes first
                fn()
        if rep == 0:
            n_ours, ids_ours = count_rows_and_ids(ours2_out)
            n_duck, ids_duck = count_rows_and_ids(duck_out)
            n_ours1, _ = count_rows_and_ids(ours1_out)
            same_bytes = _same_file(ours1_out, ours2_out)
            ok = n_ours == n_duck == ds.users and ids_ours == ids_duck
            verified = (f"row check: ours {n_ours:,} rows, DuckDB {n_duck:,} rows, expected {ds.users:,}; "
                        f"same user_id set: {ids_ours == ids_duck}; workers=1 rows {n_ours1:,}, "
                        f"byte-identical to workers=2: {same_bytes} -> {'OK' if ok else 'MISMATCH'}")
            print("  " + verified, flush=True)
            del ids_ours, ids_duck
            report.facts.append(f"Shaped CSV: ours {ours2_out.stat().st_size / MB:.1f} MB, "
                                f"DuckDB {duck_out.stat().st_size / MB:.1f} MB. {verified}")
        ours1_out.unlink(missing_ok=True)
        duck_out.unlink(missing_ok=True)
        print(f"  shaping repeat {rep + 1}/{REPEATS}: ours w2 {runs['w2'][-1].seconds:.2f}s, "
              f"DuckDB {runs['duck'][-1].seconds:.2f}s, ours w1 {runs['w1'][-1].seconds:.2f}s, "
              f"unzip {runs['unzip'][-1].seconds:.2f}s", flush=True)

    for key, label in (("w2", "shaping ours workers=2"), ("w1", "shaping ours workers=1"),
                       ("duck", "DuckDB on extracted files"), ("unzip", "unzip (zipfile.extractall)"),
                       ("duck_unzip", "DuckDB on freshly unzipped files")):
        report.detail(label, runs[key])
    bw2, bw1, bduck = best(runs["w2"]), best(runs["w1"]), best(runs["duck"])
    combined = [Run(seconds=u.seconds + d.seconds, rss=max(u.rss, d.rss), cpu=u.cpu + d.cpu, wall=u.wall + d.wall,
                    load1=u.load1) for u, d in zip(runs["unzip"], runs["duck_unzip"], strict=True)]
    bcomb = best(combined)
    mismatch = "MISMATCH" in verified
    duck_name = f"DuckDB {_duckdb_version()} read_ndjson→COPY CSV, extracted files"
    report.rows += [
        Row("2. shaping, workers=2", bw2, duck_name, bduck, "≤ 1.5×, ≤ 300 MB", limit_ratio=1.5,
            limit_rss_mb=300, error="row check failed" if mismatch else ""),
        Row("2. shaping, workers=2 (vs + unzip)", bw2, "DuckDB + unzip (extract then COPY)", bcomb, "(context)"),
        Row("2. shaping, workers=1", bw1, duck_name, bduck, "(context)"),
    ]
    report.facts.append(f"DuckDB peak RSS (best run): {bduck.rss / MB:.0f} MB on extracted files, "
                        f"{bcomb.rss / MB:.0f} MB for unzip + COPY.")
    return ours2_out


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


def _duckdb_version() -> str:
    try:
        from importlib.metadata import version

        return version("duckdb")
    except Exception:  # noqa: BLE001
        return "?"


# ------------------------------------------------------------------------------------------------
# Step 3: PGP encrypt
# ------------------------------------------------------------------------------------------------


def step_pgp(shaped: Path, work: Path, report: Report) -> Path:
    from tests.pgp_keys import make_keypair

    kp = make_keypair("B2L Bench Recipient", passphrase=None)
    key_file = work / "recipient.asc"
    key_file.write_text(kp.public_key)
    home = tempfile.mkdtemp(prefix="bg", dir="/tmp")  # short: gpg-agent socket path limit
    ours_out = work / "ours.csv.pgp"
    cli_out = work / "cli.csv.pgp"
    try:
        env = dict(os.environ, GNUPGHOME=home)
        subprocess.run(["gpg", "--batch", "--import", str(key_file)], env=env, check=True, capture_output=True)
        cli_cmd = ["gpg", "--batch", "--yes", "--trust-model", "always", "--recipient", kp.fingerprint,
                   "--output", str(cli_out), "--encrypt", str(shaped)]
        ours_runs, cli_runs = [], []
        for rep in range(REPEATS):
            order = ("ours", "cli") if rep % 2 == 0 else ("cli", "ours")
            for side in order:
                if side == "ours":
                    ours_out.unlink(missing_ok=True)
                    ours_runs.append(run_worker({"task": "encrypt", "src": str(shaped), "dst": str(ours_out),
                                                 "key_file": str(key_file)}))
                else:
                    cli_out.unlink(missing_ok=True)
                    cli_runs.append(measure(cli_cmd, env=env))
            print(f"  pgp repeat {rep + 1}/{REPEATS}: ours {ours_runs[-1].seconds:.2f}s, "
                  f"gpg CLI {cli_runs[-1].seconds:.2f}s", flush=True)
        report.detail("encrypt_file (ours)", ours_runs)
        report.detail("gpg CLI", cli_runs)
        report.facts.append(f"Encrypted file: ours {ours_out.stat().st_size / MB:.1f} MB, gpg CLI "
                            f"{cli_out.stat().st_size / MB:.1f} MB (both gpg's default compression); gpg CLI "
                            f"peak RSS {best(cli_runs).rss / MB:.0f} MB.")
        report.rows.append(Row("3. PGP encrypt", best(ours_runs),
                               f"{_gpg_version()} CLI --encrypt (key pre-imported)", best(cli_runs), "≤ 1.2×",
                               limit_ratio=1.2))
    finally:
        subprocess.run(["gpgconf", "--homedir", home, "--kill", "gpg-agent"], capture_output=True, check=False)
        shutil.rmtree(home, ignore_errors=True)
        cli_out.unlink(missing_ok=True)
    return ours_out


def _gpg_version() -> str:
    try:
        out = subprocess.run(["gpg", "--version"], capture_output=True, text=True, check=False).stdout
        return "gpg " + out.splitlines()[0].split()[-1]
    except (OSError, IndexError):
        return "gpg"


# ------------------------------------------------------------------------------------------------
# Step 4: SFTP upload
# ------------------------------------------------------------------------------------------------


def step_sftp(encrypted: Path, work: Path, report: Report) -> None:
    from tests.sshd_server import OpenSshServer

    size = encrypted.stat().st_size
    with OpenSshServer() as srv:
        key_file = work / "id_ed25519"
        key_file.write_text(srv.private_key_pem)
        os.chmod(key_file, 0o600)
        known_hosts = work / "known_hosts"
        known_hosts.write_text(f"[{srv.host}]:{srv.port} {srv.host_key_line}\n")
        batch = work / "sftp_batch"
        batch.write_text(f"put {encrypted} /upload/y.pgp\n")
        cli_cmd = ["sftp", "-b", str(batch), "-i", str(key_file), "-P", str(srv.port),
                   "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={known_hosts}",
                   f"{srv.key_user}@{srv.host}"]
        settings = {"host": srv.host, "port": srv.port, "username": srv.key_user,
                    "private_key": srv.private_key_pem, "host_key": srv.host_key_line, "name": "bench"}
        ours_runs, cli_runs = [], []
        for rep in range(REPEATS):
            order = ("ours", "cli") if rep % 2 == 0 else ("cli", "ours")
            for side in order:
                srv.empty_shared_dirs()
                if side == "ours":
                    ours_runs.append(run_worker({"task": "deliver", "settings": settings, "local": str(encrypted),
                                                 "remote": "/upload/x.pgp"}))
                    landed = srv.chroot / "upload" / "x.pgp"
                else:
                    cli_runs.append(measure(cli_cmd))
                    landed = srv.chroot / "upload" / "y.pgp"
                if landed.stat().st_size != size:
                    raise StepFailed(f"{landed.name} landed with {landed.stat().st_size} bytes, expected {size}")
            print(f"  sftp repeat {rep + 1}/{REPEATS}: ours {ours_runs[-1].seconds:.2f}s, "
                  f"sftp CLI {cli_runs[-1].seconds:.2f}s", flush=True)
        srv.empty_shared_dirs()
    report.detail("deliver (ours, paramiko)", ours_runs)
    report.detail("OpenSSH sftp CLI", cli_runs)
    report.facts.append(f"SFTP: {size / MB:.1f} MB over loopback to OpenSSH {_ssh_version()} (chrooted "
                        f"internal-sftp, ed25519 key auth); sftp CLI peak RSS {best(cli_runs).rss / MB:.0f} MB; "
                        f"both sizes verified on the server.")
    report.rows.append(Row("4. SFTP upload", best(ours_runs), "OpenSSH sftp CLI `put`", best(cli_runs), "≤ 1.2×",
                           limit_ratio=1.2))


def _ssh_version() -> str:
    try:
        out = subprocess.run(["ssh", "-V"], capture_output=True, text=True, check=False)
        return (out.stderr or out.stdout).split(",")[0].split("_", 1)[-1].strip()
    except OSError:
        return "?"


# ------------------------------------------------------------------------------------------------
# Step 5: DAG parse
# ------------------------------------------------------------------------------------------------


def step_dags(work: Path, report: Report) -> None:
    for dag_file in sorted((REPO / "dags").glob("*.py")):
        if dag_file.name.startswith("_"):
            continue
        home = tempfile.mkdtemp(prefix="b2l-af-")
        try:
            base = {
                "AIRFLOW_HOME": home,
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
                "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
            }
            # warm: bytecode cached (as on a running DAG processor); kept under bench/.data, not in the repo
            warm_env = worker_env({**base, "PYTHONPYCACHEPREFIX": str(DATA / "pycache")})
            warm_env.pop("PYTHONDONTWRITEBYTECODE", None)
            # cold: no bytecode written or read for the project's code (the venv's own .pyc still used)
            cold_env = worker_env({**base, "PYTHONDONTWRITEBYTECODE": "1"})
            task = {"task": "dagparse", "file": str(dag_file)}
            run_worker(task, warm_env)  # fills the bytecode cache; not counted
            warm, cold = [], []
            for _ in range(DAG_REPEATS):
                warm.append(run_worker(task, warm_env))
                cold.append(run_worker(task, cold_env))
        finally:
            shutil.rmtree(home, ignore_errors=True)
        dags = warm[0].info.get("dags")
        name = dag_file.name
        bw, bc = best(warm), best(cold)
        with_sdk = min(warm, key=lambda r: r.info["with_sdk_seconds"])
        with_sdk_run = Run(seconds=with_sdk.info["with_sdk_seconds"], rss=with_sdk.rss, cpu=with_sdk.cpu,
                           wall=with_sdk.wall, load1=with_sdk.load1)
        report.detail(f"DAG {name} (warm bytecode, file only)", warm)
        report.detail(f"DAG {name} (no project bytecode, file only)", cold)
        report.details.append(f"- DAG {name}: import airflow.sdk alone: "
                              + ", ".join(f"{r.info['sdk_seconds']:.3f}s" for r in warm)
                              + f"; DAG objects found: {dags}")
        report.rows += [
            Row(f"5. DAG parse {name} (after `import airflow.sdk`)", bw, "—", None, "≤ 0.3 s", limit_seconds=0.3,
                error="" if dags else "no DAG object found"),
            Row(f"5. DAG parse {name}, no .pyc for project code", bc, "—", None, "≤ 0.3 s", limit_seconds=0.3),
            Row(f"5. DAG parse {name} incl. `import airflow.sdk`", with_sdk_run, "—", None, "(context)"),
        ]
        print(f"  dag {name}: file {bw.seconds:.3f}s (no pyc {bc.seconds:.3f}s), "
              f"incl. airflow.sdk {with_sdk_run.seconds:.3f}s", flush=True)


# ------------------------------------------------------------------------------------------------
# Main
# ------------------------------------------------------------------------------------------------


def machine() -> str:
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = psutil.virtual_memory().total / (1024**3)
    return (f"{os.cpu_count()} CPUs (nproc {len(os.sched_getaffinity(0))}), {model}, {mem:.1f} GiB RAM, "
            f"Python {platform.python_version()}, {platform.system()} {platform.release()}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--users", type=int, default=500_000, help="users in the export (default 500000)")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results_b2l.md", help="markdown report file")
    args = ap.parse_args(argv)

    started = dt.datetime.now(dt.UTC)
    load_start = os.getloadavg()
    report = Report()
    print(f"Braze→Lytics benchmark, {args.users:,} users; load average {_load(load_start)}", flush=True)

    ds = prepare_data(args.users)
    report.facts.insert(0, f"Export: {ds.users:,} users in {ds.files} NDJSON files of ≤ {LINES_PER_FILE:,} lines, "
                           f"zip {ds.zip_path.stat().st_size / MB:.1f} MB, extracted "
                           f"{sum(p.stat().st_size for p in ds.extracted.glob('*.json')) / MB:.1f} MB "
                           f"({'reused from' if ds.reused else 'generated into'} bench/.data).")

    work = Path(tempfile.mkdtemp(prefix="b2l-", dir="/tmp"))
    try:
        shaped = encrypted = None
        steps = [
            ("2. shaping", lambda: step_shaping(ds, work, report)),
            ("3. PGP encrypt", lambda: step_pgp(shaped, work, report)),
            ("4. SFTP upload", lambda: step_sftp(encrypted, work, report)),
            ("5. DAG parse", lambda: step_dags(work, report)),
        ]
        for name, fn in steps:
            print(f"{name} ... (load average {_load(os.getloadavg())})", flush=True)
            try:
                if name == "3. PGP encrypt" and shaped is None:
                    raise StepFailed("no shaped CSV (shaping failed)")
                if name == "4. SFTP upload" and encrypted is None:
                    raise StepFailed("no encrypted file (PGP step failed)")
                result = fn()
                if name == "2. shaping":
                    shaped = result
                elif name == "3. PGP encrypt":
                    encrypted = result
            except Exception as exc:  # noqa: BLE001 - the benchmark reports, it does not gate
                traceback.print_exc()
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                report.rows.append(Row(name, None, "—", None, "—", error=first[:120]))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    load_end = os.getloadavg()
    finished = dt.datetime.now(dt.UTC)
    body = table(report.rows)
    header = [
        f"# Braze → Lytics pipeline core benchmark ({args.users:,} users)",
        "",
        f"- Date: {started:%Y-%m-%d %H:%M} UTC (took {(finished - started).total_seconds():.0f} s)",
        f"- Machine: {machine()}",
        f"- Load average (1/5/15 min): {_load(load_start)} at start, {_load(load_end)} at end "
        "(other processes may share the CPUs; see the per-run load in the details)",
        "- Command: `.venv/bin/python -m bench.run_b2l "
        f"--users {args.users}`",
        f"- Times: best of {REPEATS} (DAG parse: best of {DAG_REPEATS}), ours and baseline alternating in one run; "
        "peak RSS: the best run's, whole process tree (Python interpreter included for ours).",
        "",
    ]
    text = "\n".join([
        *header,
        body,
        "",
        "## Facts",
        "",
        *(f"- {f}" for f in report.facts),
        "",
        "## Every run",
        "",
        "time / peak RSS / CPU user+sys of the whole process tree / wall clock from spawn to exit (includes "
        "interpreter start-up and imports for Python workers) / 1-min load average before the run",
        "",
        *report.details,
        "",
    ])
    print()
    print(body)
    print()
    for f in report.facts:
        print(f"- {f}")
    print(f"- load average: {_load(load_start)} at start, {_load(load_end)} at end")
    try:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        print(f"\nwritten to {args.out}")
    except OSError as exc:
        print(f"could not write {args.out}: {exc}", file=sys.stderr)
    return 0


def _load(avg: tuple[float, float, float]) -> str:
    return " / ".join(f"{x:.2f}" for x in avg)


if __name__ == "__main__":
    sys.exit(main())
