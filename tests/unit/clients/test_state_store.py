"""The state store (local dir and memory://) and the audience snapshots kept in it."""

from __future__ import annotations

import os
import uuid
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pytest

from include.audiences_to_braze import snapshot as snap
from include.clients.state_store import StateStore
from include.common.errors import ConfigError, NotFoundError, PermanentError


@pytest.fixture(params=["local", "memory"])
def store(request, tmp_path) -> StateStore:
    if request.param == "local":
        return StateStore(str(tmp_path / "state"))
    return StateStore(f"memory://test-{uuid.uuid4().hex}/state")  # the memory fs is process-global


# --------------------------------------------------------------------------------------------------
# StateStore
# --------------------------------------------------------------------------------------------------


def test_bytes_json_roundtrip_exists_delete(store):
    assert not store.exists("a/b.bin")
    store.write_bytes("a/b.bin", b"\x00data")
    assert store.exists("a/b.bin")
    assert store.read_bytes("a/b.bin") == b"\x00data"
    store.write_bytes("a/b.bin", b"new")  # replace
    assert store.read_bytes("a/b.bin") == b"new"
    store.write_json("a/c.json", {"x": [1, "é"]})
    assert store.read_json("a/c.json") == {"x": [1, "é"]}
    store.delete("a/b.bin")
    store.delete("a/b.bin")  # deleting twice is fine
    assert not store.exists("a/b.bin")
    with pytest.raises(NotFoundError, match="b.bin"):
        store.read_bytes("a/b.bin")


def test_list_is_recursive_relative_and_sorted(store):
    for key in ["x/2.bin", "x/1.bin", "x/sub/3.bin", "y/4.bin"]:
        store.write_bytes(key, b"")
    assert store.list("x") == ["x/1.bin", "x/2.bin", "x/sub/3.bin"]
    assert store.list("x/") == store.list("x")
    assert store.list() == ["x/1.bin", "x/2.bin", "x/sub/3.bin", "y/4.bin"]
    assert store.list("nothing/here") == []


def test_table_roundtrip_is_parquet_zstd(store):
    table = pa.table({"id": pa.array(["a", "b", "c"])})
    store.write_table("t/ids.parquet", table)
    assert store.read_table("t/ids.parquet").equals(table)
    import pyarrow.parquet as pq

    meta = pq.ParquetFile(pa.BufferReader(store.read_bytes("t/ids.parquet"))).metadata
    assert meta.row_group(0).column(0).compression == "ZSTD"
    with pytest.raises(NotFoundError):
        store.read_table("t/missing.parquet")


def test_failed_open_write_leaves_no_file_and_keeps_the_old_one(store, tmp_path):
    with pytest.raises(RuntimeError):
        with store.open_write("k/new.bin") as fh:
            fh.write(b"half")
            raise RuntimeError("boom")
    assert not store.exists("k/new.bin")
    store.write_bytes("k/old.bin", b"old")
    with pytest.raises(RuntimeError):
        with store.open_write("k/old.bin") as fh:
            fh.write(b"half of the new content")
            raise RuntimeError("boom")
    assert store.read_bytes("k/old.bin") == b"old"
    assert store.list("k") == ["k/old.bin"]
    if store.url.startswith(str(tmp_path)):  # no temp file left behind in the directory either
        assert os.listdir(tmp_path / "state" / "k") == ["old.bin"]


def test_failed_write_table_leaves_nothing(store):
    with pytest.raises(Exception):  # noqa: B017 - whatever pyarrow raises for a bad option
        store.write_table("t/bad.parquet", pa.table({"id": ["a"]}), compression="no-such-codec")
    assert not store.exists("t/bad.parquet")
    assert store.list("t") == []


def test_local_write_is_a_rename_of_a_temp_file_in_the_same_directory(tmp_path, monkeypatch):
    store = StateStore(str(tmp_path))
    seen = []
    real_replace = os.replace

    def spy(src, dst):
        seen.append((os.path.dirname(src), os.path.basename(src), dst))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    store.write_bytes("d/file.json", b"{}")
    [(src_dir, src_name, dst)] = seen
    assert src_dir == str(tmp_path / "d") and src_name.startswith(".file.json.tmp-")
    assert dst == str(tmp_path / "d" / "file.json")


@pytest.mark.parametrize("key", ["../x", "a/../../x", "/etc/passwd", "a//b", "./a", "a/./b", "", "a\\..\\b",
                                 "C:/x"])
def test_path_traversal_and_odd_keys_are_refused(store, key):
    with pytest.raises(PermanentError):
        store.write_bytes(key, b"x")
    with pytest.raises(PermanentError):
        store.read_bytes(key)


def test_path_names_the_full_location(tmp_path):
    assert StateStore(str(tmp_path)).path("a/b.json") == str(tmp_path / "a" / "b.json")
    assert StateStore("memory://bucket/pre").path("a/b.json") == "memory:///bucket/pre/a/b.json"


def test_memory_stores_with_the_same_url_share_state():
    url = f"memory://shared-{uuid.uuid4().hex}"
    StateStore(url).write_json("p.json", {"n": 1})
    assert StateStore(url).read_json("p.json") == {"n": 1}


def test_bad_urls_and_damaged_json_are_clear_errors(store):
    with pytest.raises(ConfigError):
        StateStore("")
    with pytest.raises(ConfigError):
        StateStore("nosuchprotocol-xyz://bucket/x")
    store.write_bytes("bad.json", b"{not json")
    with pytest.raises(PermanentError, match="not valid JSON"):
        store.read_json("bad.json")


# --------------------------------------------------------------------------------------------------
# audience snapshots
# --------------------------------------------------------------------------------------------------


def ids(*values: str) -> pa.Array:
    return pa.array(list(values), pa.string())


def test_snapshot_roundtrip_and_layout(store):
    key = snap.write_snapshot(store, "vip", "scheduled__2026-11-23T00:00:00+00:00", ids("b", "a", "b"))
    # One naming rule for run keys (include.common.names.file_safe): ":" and "+" become "_".
    assert key == "audiences/vip/snapshots/scheduled__2026-11-23T00_00_00_00_00.parquet"
    assert snap.read_snapshot(store, key).to_pylist() == ["a", "b"]  # stored sorted and unique
    assert store.read_table(key).column_names == ["id"]
    assert snap.committed(store, "vip") is None
    assert snap.committed_ids(store, "vip") is None  # written is not committed


def test_commit_swaps_the_pointer(store):
    first = snap.write_snapshot(store, "vip", "r1", ids("a", "b"))
    pointer = snap.commit(store, "vip", "r1", first, 2, "2026-11-23T00:00:00+00:00")
    assert store.read_json("audiences/vip/committed.json") == pointer
    assert pointer == {"snapshot": first, "members": 2, "run_key": "r1",
                       "committed_at": "2026-11-23T00:00:00+00:00", "recent": [first]}
    second = snap.write_snapshot(store, "vip", "r2", ids("b", "c"))
    # Until the commit, the committed members are still the first run's.
    assert snap.committed_ids(store, "vip").to_pylist() == ["a", "b"]
    snap.commit(store, "vip", "r2", second, 2, "2026-11-24T00:00:00+00:00")
    assert snap.committed_ids(store, "vip").to_pylist() == ["b", "c"]
    assert snap.committed(store, "vip")["recent"] == [second, first]


def test_commit_keeps_the_last_three_committed_snapshots(store):
    keys = []
    for n in range(1, 6):
        key = snap.write_snapshot(store, "vip", f"r{n}", ids(f"u{n}"))
        snap.commit(store, "vip", f"r{n}", key, 1, f"2026-11-2{n}T00:00:00+00:00")
        keys.append(key)
    assert store.list("audiences/vip/snapshots") == sorted(keys[-3:])
    assert snap.committed(store, "vip")["recent"] == keys[:-4:-1]
    assert snap.committed_ids(store, "vip").to_pylist() == ["u5"]


def test_uncommitted_snapshots_are_pruned_only_once_three_newer_were_committed(store, monkeypatch):
    clock = {"now": 0}
    real_modified = StateStore.modified
    written = {}

    def fake_modified(self, key):  # stores' timestamps have coarse resolution: use a logical clock
        real_modified(self, key)
        return written[key]

    monkeypatch.setattr(StateStore, "modified", fake_modified)

    def write(run_key, *members):
        key = snap.write_snapshot(store, "vip", run_key, ids(*members))
        clock["now"] += 1
        written[key] = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=clock["now"])
        return key

    snap.commit(store, "vip", "r1", write("r1", "a"), 1, "t1")
    failed = write("r-failed", "x")  # a run that never commits
    for n in (2, 3):
        snap.commit(store, "vip", f"r{n}", write(f"r{n}", "a"), 1, f"t{n}")
    assert store.exists(failed)  # r1 is still kept and older than the failed snapshot
    in_flight = write("r-in-flight", "y")
    snap.commit(store, "vip", "r4", write("r4", "a"), 1, "t4")
    assert not store.exists(failed)  # older than r2, r3, r4: abandoned
    assert store.exists(in_flight)  # newer than the oldest kept: a running task may still commit it


def test_rerun_of_a_committed_run_does_not_overwrite_its_snapshot(store):
    key = snap.write_snapshot(store, "vip", "r1", ids("a"))
    snap.commit(store, "vip", "r1", key, 1, "t1")
    again = snap.write_snapshot(store, "vip", "r1", ids("a", "b"))
    assert again == "audiences/vip/snapshots/r1-2.parquet"
    assert snap.committed_ids(store, "vip").to_pylist() == ["a"]  # still what Braze was told
    snap.commit(store, "vip", "r1", again, 2, "t1b")
    assert snap.committed_ids(store, "vip").to_pylist() == ["a", "b"]


def test_commit_refuses_missing_or_foreign_snapshots(store):
    with pytest.raises(PermanentError, match="does not exist"):
        snap.commit(store, "vip", "r1", "audiences/vip/snapshots/r1.parquet", 0, "t")
    other = snap.write_snapshot(store, "other", "r1", ids("a"))
    with pytest.raises(PermanentError, match="does not belong"):
        snap.commit(store, "vip", "r1", other, 1, "t")
    assert snap.committed(store, "vip") is None


def test_pointer_to_a_vanished_snapshot_is_a_clear_error(store):
    key = snap.write_snapshot(store, "vip", "r1", ids("a"))
    snap.commit(store, "vip", "r1", key, 1, "t")
    store.delete(key)
    with pytest.raises(PermanentError, match="gone"):
        snap.committed_ids(store, "vip")


@pytest.mark.parametrize("slug", ["../x", "a/b", ".hidden", "", "x" * 201])
def test_bad_slugs_are_refused(store, slug):
    with pytest.raises(PermanentError):
        snap.write_snapshot(store, slug, "r1", ids("a"))


def test_unsafe_run_key_characters_are_replaced():
    assert snap.snapshot_key("vip", "manual/../x y") == "audiences/vip/snapshots/manual_.._x_y.parquet"
    with pytest.raises(PermanentError):
        snap.snapshot_key("vip", "..")


def test_read_snapshot_builds_one_array_from_many_batches(store):
    values = [f"u{i:07d}" for i in range(300_001)]  # more than two read batches
    key = snap.write_snapshot(store, "big", "r1", pa.array(values))
    got = snap.read_snapshot(store, key)
    got.validate(full=True)
    assert got.type == pa.string() and got.to_pylist() == values


def test_read_snapshot_of_an_empty_audience(store):
    key = snap.write_snapshot(store, "empty", "r1", ids())
    got = snap.read_snapshot(store, key)
    assert got.type == pa.string() and len(got) == 0


def test_read_snapshot_of_a_file_written_elsewhere(store):
    # Dictionary-encoded, large_string, repeated values: the uncompressed size underestimates
    # the string bytes, so the reader must grow its buffer.
    values = ["x" * 200 + str(i % 3) for i in range(5000)]
    store.write_table("audiences/other/snapshots/r1.parquet",
                      pa.table({"n": list(range(5000)), "id": pa.array(values, pa.large_string())}),
                      use_dictionary=True)
    got = snap.read_snapshot(store, "audiences/other/snapshots/r1.parquet")
    got.validate(full=True)
    assert got.to_pylist() == values
    store.write_table("audiences/other/snapshots/r2.parquet", pa.table({"member": ["a"]}))
    with pytest.raises(PermanentError, match="no `id` column"):
        snap.read_snapshot(store, "audiences/other/snapshots/r2.parquet")
