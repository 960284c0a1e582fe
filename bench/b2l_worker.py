"""One measured step of the Braze->Lytics benchmark, run in a fresh process by bench/run_b2l.py.

Usage (internal): `python -m bench.b2l_worker '<json task>'`. Prints one JSON line with
`seconds` (perf_counter around the operation only: interpreter start-up and module imports,
including paramiko, which our SFTP code imports lazily inside the call, are done before the
clock starts; see task_shape for the one exception) plus task-specific facts. Peak RSS is measured from outside by
the parent (the whole process tree), so this module imports as little as possible up front.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

# The Lytics CSV columns (CSV column -> Braze export field), as the brief's pipeline config maps them.
COLUMNS = {
    "user_id": "external_id",
    "braze_id": "braze_id",
    "email": "email",
    "first_name": "first_name",
    "last_name": "last_name",
    "country": "country",
    "city": "home_city",
    "language": "language",
    "birth_date": "dob",
    "created_at": "created_at",
    "tier": "custom_attributes.tier",
    "loyalty_points": "custom_attributes.loyalty_points",
    "vip": "custom_attributes.vip",
    "devices": "devices",
}
ID_FIELD = "external_id"
TIMESTAMP_COLUMN = "timestamp"
TIMESTAMP_VALUE = "2026-11-23T00:00:00Z"


def task_extract(t: dict) -> dict:
    import zipfile

    start = time.perf_counter()
    with zipfile.ZipFile(t["zip"]) as zf:
        zf.extractall(t["dest"])
    return {"seconds": time.perf_counter() - start}


def task_duckdb(t: dict) -> dict:
    """DuckDB doing the same job as our shaping (bench/b2l_duckdb.py), on the extracted files."""
    import duckdb

    from bench.b2l_duckdb import same_job_sql

    statements = same_job_sql(t["glob"], t["out"], t.get("variant", "ordinality"))
    start = time.perf_counter()
    con = duckdb.connect()
    for stmt in statements:
        res = con.execute(stmt).fetchall()
    con.close()
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "rows": res[0][0] if res and res[0] else None}


def task_duckdb_order(t: dict) -> dict:
    """Not timed for the table: does the variant's numbering put every row where it is in the export?"""
    import duckdb

    from bench.b2l_duckdb import order_check_sql

    start = time.perf_counter()
    con = duckdb.connect()
    for stmt in order_check_sql(t["glob"], t["variant"], t["users_per_file"], t["segment_id"]):
        row = con.execute(stmt).fetchone()
    con.close()
    keys = ("rows", "with_id", "at_own_position", "not_contiguous", "files", "max_line")
    return {"seconds": time.perf_counter() - start, **dict(zip(keys, row, strict=True))}


def task_shape(t: dict) -> dict:
    # shape_export imports these lazily before it forks its workers: import them before the clock.
    # Not numpy (imported lazily *after* the workers finished, for the duplicate check): importing
    # it here would be inherited by every forked worker and inflate the tree's RSS sum; its
    # ~0.1 s import stays inside the measured time, as in a fresh Airflow task process.
    import concurrent.futures  # noqa: F401
    import multiprocessing  # noqa: F401

    from include.segments_to_lytics.csv_shape import CsvShaper, shape_export

    shaper = CsvShaper(COLUMNS, id_field="external_id", timestamp_column=TIMESTAMP_COLUMN,
                       timestamp_value=TIMESTAMP_VALUE)
    start = time.perf_counter()
    stats = shape_export(Path(t["zip"]), shaper, Path(t["out"]), Path(t["quarantine"]), workers=t["workers"])
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "rows": stats.rows_written, "rows_read": stats.rows_read,
            "quarantined": stats.rows_quarantined}


def task_encrypt(t: dict) -> dict:
    from include.clients.pgp.files import encrypt_file

    key = Path(t["key_file"]).read_text()
    start = time.perf_counter()
    fpr = encrypt_file(Path(t["src"]), Path(t["dst"]), key, compress=True)
    return {"seconds": time.perf_counter() - start, "fingerprint": fpr}


def task_deliver(t: dict) -> dict:
    import paramiko  # noqa: F401 - imported lazily by open_sftp; import before the clock

    from include.clients.sftp import SftpSettings, deliver

    settings = SftpSettings(**t["settings"])
    start = time.perf_counter()
    result = deliver(settings, Path(t["local"]), t["remote"], manifest=False)
    return {"seconds": time.perf_counter() - start, "bytes": result.bytes}


def task_dagparse(t: dict) -> dict:
    """Time `import airflow.sdk`, then (separately) executing the DAG file as Airflow's parser does."""
    import importlib.util

    start = time.perf_counter()
    import airflow.sdk

    # As DagBag does: a module name of its own, and DAGs created in the file auto-register.
    from airflow.sdk.definitions._internal.contextmanager import DagContext

    sdk_done = time.perf_counter()
    spec = importlib.util.spec_from_file_location("bench_dag_under_test", t["file"])
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    DagContext.current_autoregister_module_name = spec.name
    spec.loader.exec_module(module)
    end = time.perf_counter()
    DagContext.current_autoregister_module_name = None
    dags = {id(d) for d, m in DagContext.autoregistered_dags if m is module}
    dags |= {id(v) for v in vars(module).values() if isinstance(v, airflow.sdk.DAG)}
    return {"seconds": end - sdk_done, "with_sdk_seconds": end - start, "sdk_seconds": sdk_done - start,
            "dags": len(dags)}


def task_transfer(t: dict) -> dict:
    """The whole transfer as the DAG's `transfer` task runs it (transfer_segment): download the export
    from the sandbox's link (BrazeExportClient.download, GET over HTTP) -> shape (workers=2) -> gzip
    -> PGP encrypt (gpg, no second compression) -> SFTP (atomic upload, no manifest)."""
    import concurrent.futures  # noqa: F401 - as task_shape: imported lazily by shape_export
    import multiprocessing  # noqa: F401
    from datetime import UTC, datetime

    import gnupg  # noqa: F401 - imported by the pgp client; before the clock like the others
    import paramiko  # noqa: F401
    import requests  # noqa: F401

    from include.clients.braze.export import BrazeExportClient
    from include.clients.pgp.files import PgpKey
    from include.clients.sftp import SftpSettings
    from include.segments_to_lytics import transfer as transfer_module
    from include.segments_to_lytics.config import PgpOptions, SegmentConfig
    from include.segments_to_lytics.transfer import TransferJob, transfer_segment

    segment = SegmentConfig(
        name="bench", segment_id=t["segment_id"], columns=COLUMNS, id_field=ID_FIELD, file_root="bench_users",
        fields_to_export=tuple(t["fields"]), compression="gzip", manifest=False, timestamp_column=TIMESTAMP_COLUMN,
        max_rejected_share=0.05, pgp=PgpOptions(encrypt_conn_id="bench_pgp", compress=True),
    )
    job = TransferJob(segment=segment, logical_date=datetime(2026, 11, 23, tzinfo=UTC),
                      sftp=SftpSettings(**t["settings"]), quarantine_dir=Path(t["quarantine_dir"]),
                      encrypt_key=PgpKey(Path(t["key_file"]).read_text(), source="the bench public key"),
                      workers=t["workers"])
    assert job.timestamp_value == TIMESTAMP_VALUE
    client = BrazeExportClient(t["base_url"], t["api_key"])
    stages: dict[str, float] = {}

    def timed(name: str, fn):
        """The stage functions as transfer_segment calls them, with a clock around each (4 calls a run)."""
        def call(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                stages[name] = stages.get(name, 0.0) + time.perf_counter() - t0
        return call

    for name in ("shape_export", "compress", "encrypt_file", "deliver"):
        setattr(transfer_module, name, timed(name, getattr(transfer_module, name)))

    def fetch(work: Path) -> Path:
        dest = work / "export.zip"
        client.download(t["url"], dest)
        return dest

    start = time.perf_counter()
    summary = transfer_segment(job, timed("download", fetch))
    seconds = time.perf_counter() - start
    keep = ("rows_read", "rows_written", "rows_rejected", "rows_duplicate", "export_bytes", "bytes", "remote_path")
    return {"seconds": seconds, "stages": stages, **{k: summary[k] for k in keep}}


TASKS = {
    "extract": task_extract,
    "duckdb": task_duckdb,
    "duckdb_order": task_duckdb_order,
    "transfer": task_transfer,
    "shape": task_shape,
    "encrypt": task_encrypt,
    "deliver": task_deliver,
    "dagparse": task_dagparse,
}


def _vm_hwm_kib() -> int:
    """This process's own peak RSS (VmHWM). Not ru_maxrss: on Linux that also carries the RSS the
    forking parent had at exec time, which would make every small child look as big as its parent."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def main(argv: list[str]) -> int:
    task = json.loads(argv[1])
    result = TASKS[task["task"]](task)
    result["self_hwm_kib"] = _vm_hwm_kib()
    sys.stdout.write("BENCH_RESULT " + json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
