"""Where one run of the audience sync keeps its files in the state store, named in one place.

    runs/<run_key>/scans/<slug>.json       an audience's scan is done (its snapshot key, counts)
    runs/<run_key>/plan.json               the run's plan: per-audience counts, chunk count, options
    runs/<run_key>/chunks/<i>.parquet      the changes chunk i delivers (removed after commit)
    runs/<run_key>/progress/<i>.json       chunk i's delivery checkpoint
    runs/<run_key>/planned_payloads.jsonl  a dry run's request bodies, for review
    runs/<run_key>/committed.json          the run is committed
    dead_letter/pending/<run_key>.parquet  users Braze rejected, retried by the next run
    dead_letter/parked/<run_key>.parquet   users rejected park_after_runs runs in a row: reported, not re-sent
    repairs/pending/<check_key>.parquet    users a drift check found out of step, re-sent by the next run

Committed audience snapshots live beside these, under `audiences/` (see `snapshot.py`).
"""

from __future__ import annotations

from include.common.names import file_safe

DEAD_LETTER_PREFIX = "dead_letter/pending"
REPAIR_PREFIX = "repairs/pending"


def run_key_for(run_id: str) -> str:
    """A file-name-safe key for an Airflow run id (same run -> same key)."""
    return file_safe(run_id)


def scan_marker(run_key: str, slug: str) -> str:
    return f"runs/{run_key}/scans/{slug}.json"


def plan_key(run_key: str) -> str:
    return f"runs/{run_key}/plan.json"


def chunk_key(run_key: str, index: int) -> str:
    return f"runs/{run_key}/chunks/{index}.parquet"


def progress_key(run_key: str, index: int) -> str:
    return f"runs/{run_key}/progress/{index}.json"


def payloads_key(run_key: str) -> str:
    return f"runs/{run_key}/planned_payloads.jsonl"


def committed_marker(run_key: str) -> str:
    return f"runs/{run_key}/committed.json"


def dead_letter_key(run_key: str) -> str:
    return f"{DEAD_LETTER_PREFIX}/{run_key}.parquet"


def parked_key(run_key: str) -> str:
    return f"dead_letter/parked/{run_key}.parquet"


def repair_key(check_key: str) -> str:
    """Users a drift check found out of step with the committed state (same columns as dead letters:
    external_id, add, remove); the next sync run re-sends them and deletes the file when it commits."""
    return f"{REPAIR_PREFIX}/{check_key}.parquet"
