"""Delete what old runs left in the state store; never anything a commit pointer names.

Failed, killed and dry runs leave chunk files, progress, planned payloads and uncommitted
snapshots behind; committed runs leave their plan and progress (small, kept for the report).
`prune` runs at the end of every sync run (best effort) and deletes, once older than
`prune_after_days`:

* `runs/<run_key>/...` of every run but the current one (the newest file of the run decides its
  age, so a run someone is still clearing is not pruned under them);
* `audiences/<slug>/snapshots/*.parquet` that the audience's commit pointer does not name (as its
  snapshot or among its `recent` ones).

Not touched: commit pointers, the snapshots they name, pending dead letters and repairs (the
next run needs them), parked users (a record of what was given up on).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from datetime import datetime, timedelta

from include.audiences_to_braze.snapshot import committed
from include.clients.state_store import StateStore

log = logging.getLogger(__name__)


def prune(store: StateStore, *, current_run_key: str, older_than: timedelta, now: datetime) -> dict:
    """Delete leftovers older than `older_than`; returns what was deleted (runs, snapshots, files)."""
    cutoff = now - older_than
    runs: dict[str, list[str]] = defaultdict(list)
    for key in store.list("runs"):
        parts = key.split("/")
        if len(parts) >= 3:
            runs[parts[1]].append(key)
    pruned_runs, files = [], 0
    for run_key, keys in sorted(runs.items()):
        if run_key == current_run_key or max(store.modified(k) for k in keys) >= cutoff:
            continue
        for key in keys:
            store.delete(key)
        files += len(keys)
        pruned_runs.append(run_key)
    snapshots = 0
    by_slug: dict[str, list[str]] = defaultdict(list)
    for key in store.list("audiences"):
        parts = key.split("/")
        if len(parts) == 4 and parts[2] == "snapshots" and key.endswith(".parquet"):
            by_slug[parts[1]].append(key)
    for slug, keys in sorted(by_slug.items()):
        pointer = committed(store, slug)
        named = set() if pointer is None else {pointer["snapshot"], *(pointer.get("recent") or [])}
        for key in keys:
            if key not in named and store.modified(key) < cutoff:
                store.delete(key)
                snapshots += 1
    if pruned_runs or snapshots:
        log.info("Housekeeping: deleted the files of %d old run(s) (%d files) and %d uncommitted snapshot(s) "
                 "older than %s", len(pruned_runs), files, snapshots, older_than)
    return {"runs": pruned_runs, "run_files": files, "snapshots": snapshots}
