"""Where one run of the audience sync keeps its files in the state store, named in one place.

    runs/<run_key>/scans/<slug>.json       an audience's scan is done (its snapshot key, counts)
    runs/<run_key>/plan.json               the run's plan: per-audience counts, chunk count, options
    runs/<run_key>/chunks/<i>.parquet      the changes chunk i delivers (removed after commit)
    runs/<run_key>/progress/<i>.json       chunk i's delivery checkpoint
    runs/<run_key>/planned_payloads.jsonl  a dry run's request bodies, for review
    runs/<run_key>/committed.json          the run is committed
    dead_letter/pending/<run_key>.parquet  users Braze rejected, retried by the next run

Committed audience snapshots live beside these, under `audiences/` (see `snapshot.py`).
"""

from __future__ import annotations

from include.common.names import file_safe

DEAD_LETTER_PREFIX = "dead_letter/pending"


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
