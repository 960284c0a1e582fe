"""Old runs' leftovers are pruned; the current run and every committed snapshot are kept."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime, timedelta

import pyarrow as pa

from include.audiences_to_braze import run_files
from include.audiences_to_braze.housekeeping import prune
from include.audiences_to_braze.snapshot import commit, write_snapshot
from include.clients.state_store import StateStore

NOW = datetime.now(UTC)


def age(root, key: str, days: float) -> None:
    then = time.time() - days * 86_400
    os.utime(root / key, (then, then))


def test_only_old_uncommitted_leftovers_go(tmp_path):
    store = StateStore(str(tmp_path))
    committed_keys = []
    for n in range(4):  # four committed runs: the pointer keeps the newest 3 as `recent`
        key = write_snapshot(store, "vip", f"run{n}", pa.array([f"u{n}"]))
        commit(store, "vip", f"run{n}", key, 1, "2026-01-01T00:00:00Z")
        committed_keys.append(key)
    failed = write_snapshot(store, "vip", "failed_run", pa.array(["u9"]))  # never committed
    fresh = write_snapshot(store, "vip", "running_now", pa.array(["u8"]))  # a run under way
    store.write_json(run_files.plan_key("failed_run"), {})
    store.write_table(run_files.chunk_key("failed_run", 0), pa.table({"x": [1]}))
    store.write_json(run_files.plan_key("old_current"), {})
    store.write_json(run_files.plan_key("recent_failure"), {})
    store.write_table(run_files.dead_letter_key("failed_run"), pa.table({"external_id": ["u1"]}))
    for key in [*committed_keys[1:], failed, run_files.plan_key("failed_run"), run_files.chunk_key("failed_run", 0),
                run_files.plan_key("old_current"), run_files.dead_letter_key("failed_run")]:
        age(tmp_path, key, 10)

    result = prune(store, current_run_key="old_current", older_than=timedelta(days=7), now=NOW)

    assert result == {"runs": ["failed_run"], "run_files": 2, "snapshots": 1}
    assert not store.exists(failed) and store.exists(fresh)
    assert all(store.exists(k) for k in committed_keys[1:])  # named by the pointer, however old
    assert store.exists(run_files.plan_key("old_current"))  # the current run, however old
    assert store.exists(run_files.plan_key("recent_failure"))  # younger than the limit
    assert store.exists(run_files.dead_letter_key("failed_run"))  # the next run still needs it


def test_a_run_with_any_recent_file_is_kept_whole(tmp_path):
    store = StateStore(str(tmp_path))
    store.write_json(run_files.plan_key("r"), {})
    store.write_json(run_files.progress_key("r", 0), {})
    age(tmp_path, run_files.plan_key("r"), 30)  # planned long ago, but a clear touched it today
    assert prune(store, current_run_key="x", older_than=timedelta(days=7), now=NOW)["runs"] == []
    assert store.exists(run_files.plan_key("r"))
