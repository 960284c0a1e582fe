"""The worker side of bench/run_l2b_diff.py: one measured operation per fresh process.

`python -m bench.run_l2b_diff --worker '<json>'` runs one task of :data:`TASKS` (ours, DuckDB,
or the data preparation) and prints its result as one `BENCH_RESULT {...}` line, with the
process's own peak RSS (VmHWM). The measured code is imported inside each task, not at module
level.
"""

from __future__ import annotations

import json
import os
import shutil
import time

ID_WIDTH = 9  # u000000000 .. u999999999


def read_ids(path: str):
    """A snapshot file's ids the way the pipeline reads the committed snapshot (read_snapshot)."""
    from include.audiences_to_braze.snapshot import read_snapshot
    from include.clients.state_store import StateStore

    directory, name = os.path.split(path)
    return read_snapshot(StateStore(directory), name)


def _write_ids(path: str, **arrays) -> None:
    """Each array, sorted (DuckDB's output is unordered; ours already is), to `<path>.<name>.arrow`."""
    import pyarrow as pa
    import pyarrow.compute as pc

    for name, arr in arrays.items():
        ordered = pa.table({"id": arr.take(pc.sort_indices(arr))})
        with pa.OSFile(f"{path}.{name}.arrow", "wb") as sink, pa.ipc.new_file(sink, ordered.schema) as writer:
            writer.write_table(ordered)


def _parquet_file(path: str):
    """A snapshot file opened the way the pipeline opens one to stream it (StateStore.parquet_file)."""
    from include.clients.state_store import StateStore

    directory, name = os.path.split(path)
    return StateStore(directory).parquet_file(name)


def task_ours(t: dict) -> dict:
    import pyarrow.compute as pc

    from include.audiences_to_braze.diff import AudienceChanges, diff_audience, merge_changes

    streamed = t.get("files", False)
    if streamed:  # imported only here: the other variants run exactly what they ran before it existed
        from include.audiences_to_braze import diff_files
    timed_read = t.get("read_in_clock", False) or streamed
    if not timed_read:
        previous, current = read_ids(t["previous"]), read_ids(t["current"])
    start = time.perf_counter()
    if streamed:  # opening the files (footers) is inside the clock; the reading is inside the diff
        changes = diff_files.diff_snapshot_files("bench", _parquet_file(t["current"]), _parquet_file(t["previous"]))
    elif timed_read:
        previous, current = read_ids(t["previous"]), read_ids(t["current"])
    read_done = time.perf_counter()
    if streamed:
        pass
    elif t.get("hash"):  # the is_in (hash anti-join) variant, for context
        adds = current.filter(pc.invert(pc.is_in(current, value_set=previous)))
        removes = previous.filter(pc.invert(pc.is_in(previous, value_set=current)))
        changes = AudienceChanges("bench", adds, removes)
    else:
        changes = diff_audience("bench", current, previous)
    diff_done = time.perf_counter()
    table = merge_changes([changes])
    end = time.perf_counter()
    _write_ids(t["out"], adds=changes.adds, removes=changes.removes)
    if streamed:  # the diff ran before read_done: report it as the diff
        read_done, diff_done = start, read_done
    result = {"seconds": end - start, "read_s": read_done - start, "diff_s": diff_done - read_done,
              "merge_s": end - diff_done, "rows": table.num_rows, "adds": len(changes.adds),
              "removes": len(changes.removes)}
    if streamed:
        result.update(block_rows=diff_files.BLOCK_ROWS, prefetch=diff_files.PREFETCH)
    return result


def task_duckdb(t: dict) -> dict:
    import duckdb
    import pyarrow as pa

    con = duckdb.connect()
    if t.get("temp_dir"):  # where it would spill (the default is `.tmp` in the working directory: the repo)
        con.execute(f"SET temp_directory = '{t['temp_dir']}'")
    if t.get("read_in_clock"):
        sources = {"prev": f"read_parquet('{t['previous']}')", "cur": f"read_parquet('{t['current']}')"}
    else:
        prev_tbl = pa.table({"id": read_ids(t["previous"])})
        cur_tbl = pa.table({"id": read_ids(t["current"])})
        con.register("prev_tbl", prev_tbl)
        con.register("cur_tbl", cur_tbl)
        sources = {"prev": "prev_tbl", "cur": "cur_tbl"}
    start = time.perf_counter()
    adds = con.sql(f"SELECT id FROM {sources['cur']} AS c ANTI JOIN {sources['prev']} AS p USING (id)").to_arrow_table()
    removes = con.sql(f"SELECT id FROM {sources['prev']} AS p ANTI JOIN {sources['cur']} AS c USING (id)").to_arrow_table()
    end = time.perf_counter()
    threads = con.execute("SELECT current_setting('threads')").fetchall()[0][0]
    memory_limit = con.execute("SELECT current_setting('memory_limit')").fetchall()[0][0]
    temp_directory = con.execute("SELECT current_setting('temp_directory')").fetchall()[0][0]
    spilled = _tree_bytes(temp_directory) if temp_directory else 0  # left over only if it spilled and kept files
    con.close()
    adds_arr, removes_arr = adds.column("id").combine_chunks(), removes.column("id").combine_chunks()
    _write_ids(t["out"], adds=adds_arr, removes=removes_arr)
    return {"seconds": end - start, "adds": len(adds_arr), "removes": len(removes_arr), "threads": threads,
            "version": duckdb.__version__, "memory_limit": memory_limit, "temp_directory": temp_directory,
            "temp_left_bytes": spilled}


def _tree_bytes(path: str) -> int:
    total = 0
    for root, _, names in os.walk(path):
        for name in names:
            try:
                total += os.path.getsize(os.path.join(root, name))
            except OSError:
                pass
    return total


def task_prep(t: dict) -> dict:
    """Generate previous/current ids (sorted, unique) and the expected changes into t['dir']."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    from include.audiences_to_braze.snapshot import write_snapshot
    from include.clients.state_store import StateStore

    members, churn, seed = t["members"], t["churn"], t["seed"]
    changed = int(round(members * churn))
    rng = np.random.default_rng(seed)
    universe = members + changed
    is_new = np.zeros(universe, dtype=bool)
    is_new[rng.choice(universe, changed, replace=False)] = True
    previous_n = np.flatnonzero(~is_new)
    new_n = np.flatnonzero(is_new)
    removed = np.zeros(len(previous_n), dtype=bool)
    removed[rng.choice(len(previous_n), changed, replace=False)] = True
    removed_n = previous_n[removed]
    current_n = np.sort(np.concatenate([previous_n[~removed], new_n]))

    def ids(numbers):  # zero-padded, so numeric order is byte order: the arrays come out sorted
        digits = pc.utf8_lpad(pc.cast(pa.array(numbers), pa.string()), ID_WIDTH, "0")
        return pc.binary_join_element_wise("u", digits, "")

    store = StateStore(t["dir"])
    for name, numbers in (("previous", previous_n), ("current", current_n), ("expected_adds", new_n),
                          ("expected_removes", removed_n)):
        key = write_snapshot(store, "bench", name, ids(numbers))  # exactly as the pipeline stores them
        os.replace(store.path(key), os.path.join(t["dir"], f"{name}.parquet"))
    shutil.rmtree(os.path.join(t["dir"], "audiences"), ignore_errors=True)
    return {"seconds": 0.0, "previous": len(previous_n), "current": len(current_n), "changed": changed}


def task_prep_stream(t: dict) -> dict:
    """The same data set, generated a slice at a time (for audiences too large to build in memory)."""
    from bench.l2b_diff_data import generate, same_layout_as_write_snapshot

    meta = generate(t["dir"], t["members"], t["churn"], t["seed"])
    meta["layout_as_write_snapshot"] = same_layout_as_write_snapshot(t["dir"])
    meta["seconds"] = 0.0
    return meta


TASKS = {"ours": task_ours, "duckdb": task_duckdb, "prep": task_prep, "prep_stream": task_prep_stream}


def worker_main(arg: str) -> None:
    task = json.loads(arg)
    result = TASKS[task["task"]](task)
    result["self_hwm_kib"] = _self_hwm_kib()
    print("BENCH_RESULT " + json.dumps(result), flush=True)


def _self_hwm_kib() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0
