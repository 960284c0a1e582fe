"""The streamed diff of two snapshot files gives exactly `diff_audience`'s result, block by block."""

from __future__ import annotations

import random
import threading

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from include.audiences_to_braze import diff_files
from include.audiences_to_braze.diff import diff_audience, sorted_unique
from include.audiences_to_braze.diff_files import diff_snapshot_files
from include.audiences_to_braze.snapshot import read_snapshot, write_snapshot
from include.clients.state_store import StateStore
from include.common.errors import ConfigError, PermanentError


@pytest.fixture
def store(tmp_path) -> StateStore:
    return StateStore(str(tmp_path / "state"))


def put(store: StateStore, name: str, ids, row_group_size: int | None = None, type_=None) -> str:
    """A snapshot file of `ids` (stored as given: sorted or not), with small row groups if asked."""
    key = f"audiences/s/snapshots/{name}.parquet"
    store.write_table(key, pa.table({"id": pa.array(list(ids), type_ or pa.string())}), use_dictionary=False,
                      row_group_size=row_group_size)
    return key


def reference(store: StateStore, current: str, previous: str | None, **flags):
    """What the pipeline computes today: both snapshots read whole, then `diff_audience`."""
    return diff_audience("s", read_snapshot(store, current),
                         None if previous is None else read_snapshot(store, previous), **flags)


def streamed(store: StateStore, current: str, previous: str | None, **kwargs):
    return diff_snapshot_files("s", store.parquet_file(current),
                               None if previous is None else store.parquet_file(previous), **kwargs)


def assert_same(got, want) -> None:
    assert got.slug == want.slug
    assert got.adds.type == want.adds.type == pa.string()
    assert got.removes.type == want.removes.type == pa.string()
    assert got.adds.equals(want.adds), (got.adds.to_pylist()[:20], want.adds.to_pylist()[:20])
    assert got.removes.equals(want.removes), (got.removes.to_pylist()[:20], want.removes.to_pylist()[:20])


def check_all_flags(store: StateStore, current: str, previous: str | None, block_rows: int) -> None:
    for flags in ({}, {"full_resync": True}, {"existing_users": False},
                  {"existing_users": False, "full_resync": True}):
        assert_same(streamed(store, current, previous, block_rows=block_rows, **flags),
                    reference(store, current, previous, **flags))


def sorted_ids(values) -> list[str]:
    """Sorted the way the files are: by UTF-8 bytes (Arrow's order), unique."""
    return sorted_unique(pa.array(list(values), pa.string())).to_pylist()


# --------------------------------------------------------------------------------------------------
# equality with diff_audience
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(40))
def test_random_audiences_match_diff_audience(store, seed, monkeypatch):
    rng = random.Random(seed)
    monkeypatch.setattr(diff_files, "PREFETCH", rng.choice([0, 1, 2]))  # inline reads, reader threads
    block_rows = rng.choice([1, 2, 3, 5, 16, 100, 4096, diff_files.BLOCK_ROWS])
    size = rng.choice([0, 1, 2, 10, 100, 1000] + ([5000] if block_rows > 5 else []))  # tiny blocks: many rounds already
    universe = [f"u{i:06d}" for i in rng.sample(range(10 * size + 10), size)]
    churn = rng.choice([0.0, 0.01, 0.1, 0.5, 1.0])
    previous = set(rng.sample(universe, rng.randint(0, len(universe))))
    gone = {u for u in previous if rng.random() < churn}
    new = {u for u in universe if u not in previous and rng.random() < churn}
    current = (previous - gone) | new
    current_key = put(store, "cur", sorted_ids(current), rng.choice([None, 1, 5, 64]) if size < 5000 else 64)
    previous_key = put(store, "prev", sorted_ids(previous), rng.choice([None, 1, 3, 7, 64, 1000]) if size < 5000 else 1000)
    check_all_flags(store, current_key, previous_key, block_rows)
    first_run = rng.random() < 0.2
    if first_run:
        check_all_flags(store, current_key, None, block_rows)


@pytest.mark.parametrize("current, previous", [
    ([], []),
    ([], ["a", "b", "c"]),  # everybody left
    (["a", "b", "c"], []),  # everybody is new (an empty committed audience is not a first run)
    (["a", "b"], ["x", "y"]),  # all new and all removed, disjoint ranges
    (["x", "y"], ["a", "b"]),
    (["a", "c", "e"], ["b", "d", "f"]),  # interleaved, nothing in common
    (["a", "b", "c"], ["a", "b", "c"]),  # unchanged
])
@pytest.mark.parametrize("block_rows", [1, 2, 1 << 20])
def test_edge_audiences(store, current, previous, block_rows):
    check_all_flags(store, put(store, "cur", current, 1), put(store, "prev", previous, 2), block_rows)
    check_all_flags(store, put(store, "cur", current, 1), None, block_rows)


@pytest.mark.parametrize("block_rows", [10, 11, 9])
def test_changes_at_block_and_row_group_boundaries(store, block_rows):
    previous = [f"u{i:04d}" for i in range(100)]
    # Remove the first and last id of every 10-id block, add ids just before/after block edges.
    current = [u for i, u in enumerate(previous) if i % 10 not in (0, 9)]
    current += [f"u{i:04d}x" for i in range(9, 100, 10)] + ["u", "u9999", "t"]
    current_key = put(store, "cur", sorted_ids(current), 10)
    previous_key = put(store, "prev", previous, 10)
    check_all_flags(store, current_key, previous_key, block_rows)
    got = streamed(store, current_key, previous_key, block_rows=block_rows)
    assert got.removes.to_pylist() == [u for i, u in enumerate(previous) if i % 10 in (0, 9)]


def test_one_side_much_denser_than_the_other(store):
    # A long run of previous ids between two current ids: the previous buffer must not grow with it.
    previous = [f"m{i:06d}" for i in range(3000)]
    current = ["a", "m000500", "m002999", "z"]
    check_all_flags(store, put(store, "cur", current, 2), put(store, "prev", previous, 100), 7)
    check_all_flags(store, put(store, "cur", previous, 100), put(store, "prev", current, 2), 7)


def test_unicode_and_long_ids(store):
    rng = random.Random(7)
    alphabet = ["a", "Z", "é", "ß", "中", "文", "😀", "\u2028", " ", "0", "\x01", "ǅ"]
    values = {"".join(rng.choice(alphabet) for _ in range(rng.choice([1, 2, 3, 50, 2000])))
              for _ in range(600)}
    values |= {"a", "aa", "a" * 5000, "é", "e\u0301", "😀" * 300}
    universe = sorted_ids(values)
    previous = [u for u in universe if rng.random() < 0.7]
    current = [u for u in universe if rng.random() < 0.7]
    for block_rows in (1, 3, 50, 1 << 20):
        check_all_flags(store, put(store, "cur", current, 17), put(store, "prev", previous, 5), block_rows)


def test_large_string_columns_are_read_as_strings(store):
    current = put(store, "cur", ["a", "b", "c"], 1, type_=pa.large_string())
    previous = put(store, "prev", ["b", "z"], 1, type_=pa.large_string())
    check_all_flags(store, current, previous, 2)


# --------------------------------------------------------------------------------------------------
# files that are not what write_snapshot writes
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("current, previous", [
    (["d", "a", "c"], ["a", "b"]),  # unsorted inside a batch
    (["a", "b", "c", "d"], ["a", "c", "b"]),
    (["a", "b", "b", "c"], ["a", "c"]),  # a duplicate
    (["a", "c", "b", "d"], ["a"]),  # unsorted across batches only (batches of 2)
    (["a", "b", "b", "c"], ["a"]),  # a duplicate across batches
])
def test_unsorted_or_duplicated_files_fall_back_to_the_in_memory_diff(store, caplog, current, previous):
    check_all_flags(store, put(store, "cur", current, 2), put(store, "prev", previous, 2), 2)
    check_all_flags(store, put(store, "cur", current, 2), None, 2)
    assert "instead of streaming" in caplog.text
    assert not [t for t in threading.enumerate() if t.name == "diff-files-reader"]  # readers stopped first


def test_null_ids_are_refused(store):
    nulls = put(store, "nulls", ["a", None, "c"], 1)
    fine = put(store, "fine", ["a"], 1)
    for current, previous in ((nulls, fine), (fine, nulls), (nulls, None)):
        for flags in ({}, {"existing_users": False}, {"full_resync": True}):
            with pytest.raises(PermanentError, match="null"):
                streamed(store, current, previous, block_rows=2, **flags)
            with pytest.raises(PermanentError, match="null"):
                reference(store, current, previous, **flags)


def test_a_file_without_an_id_column_is_refused(store):
    key = "audiences/s/snapshots/bad.parquet"
    store.write_table(key, pa.table({"member": ["a"]}))
    fine = put(store, "fine", ["a"], 1)
    for current, previous in ((key, fine), (fine, key), (key, None)):
        with pytest.raises(PermanentError, match="`id` column"):
            streamed(store, current, previous, existing_users=False)


def test_block_rows_must_be_positive(store):
    key = put(store, "cur", ["a"])
    with pytest.raises(ConfigError):
        streamed(store, key, key, block_rows=0)


def test_snapshots_written_by_write_snapshot(store):
    # The real writer, its real row groups (1 Mi rows: one here), a re-run's second snapshot key.
    previous = write_snapshot(store, "s", "run-1", pa.array([f"id{i}" for i in range(5000)]))
    current = write_snapshot(store, "s", "run-2", pa.array([f"id{i}" for i in range(100, 5100)]))
    check_all_flags(store, current, previous, 64)
    got = streamed(store, current, previous)
    assert got.adds.to_pylist() == sorted_ids(f"id{i}" for i in range(5000, 5100))
    assert got.removes.to_pylist() == sorted_ids(f"id{i}" for i in range(100))


# --------------------------------------------------------------------------------------------------
# memory: bounded by the block size, not the file
# --------------------------------------------------------------------------------------------------


class _NoWholeReads(pq.ParquetFile):
    """A ParquetFile that counts the ids handed out by `iter_batches` and refuses whole-file reads."""

    def __init__(self, path, log: list, side: str):
        super().__init__(path)
        self._log, self._side = log, side

    def iter_batches(self, batch_size=65536, **kwargs):
        for batch in super().iter_batches(batch_size=batch_size, **kwargs):
            assert batch.num_rows <= batch_size
            self._log.append(("read", self._side, batch.num_rows))
            yield batch

    def read(self, *args, **kwargs):  # pragma: no cover - the assertion is the test
        raise AssertionError("read the whole file")

    def read_row_groups(self, *args, **kwargs):  # pragma: no cover
        raise AssertionError("read whole row groups")


@pytest.mark.parametrize("prefetch", [0, 1, 2])
def test_reads_batch_by_batch_and_diffs_bounded_blocks(store, monkeypatch, prefetch):
    monkeypatch.setattr(diff_files, "PREFETCH", prefetch)
    n, block_rows = 200_000, 4096
    previous = [f"u{i:07d}" for i in range(n) if i % 101]
    current = [f"u{i:07d}" for i in range(n) if i % 103] + [f"v{i:05d}" for i in range(30_000)]  # a tail only here
    current_key = put(store, "cur", current, 50_000)
    previous_key = put(store, "prev", previous, 50_000)
    log: list = []
    real_match = diff_files._match_sorted

    def spy(a, b):
        log.append(("match", len(a), len(b)))
        return real_match(a, b)

    monkeypatch.setattr(diff_files, "_match_sorted", spy)
    got = diff_snapshot_files("s", _NoWholeReads(store.path(current_key), log, "cur"),
                              _NoWholeReads(store.path(previous_key), log, "prev"), block_rows=block_rows)
    assert_same(got, reference(store, current_key, previous_key))

    matches = [e for e in log if e[0] == "match"]
    assert len(matches) >= n // block_rows  # many blocks, not one
    assert max(max(a, b) for _, a, b in matches) < 2 * block_rows  # each buffer < 2 blocks
    # Interleaved: what was read and not yet diffed is the buffer (< 2 blocks) plus, with reader
    # threads, the blocks read ahead (`prefetch` queued + 1 waiting to be queued). After the last
    # match, the rest of the current side is read straight into the adds.
    ahead = 2 * block_rows if prefetch == 0 else (3 + prefetch) * block_rows
    unmatched = {"cur": 0, "prev": 0}
    last_match = max(i for i, e in enumerate(log) if e[0] == "match")
    assert any(e[:2] == ("read", "cur") for e in log[last_match:])  # the tail was read after all matches
    for event in log[:last_match + 1]:
        if event[0] == "read":
            unmatched[event[1]] += event[2]
            assert unmatched[event[1]] < ahead
        else:
            unmatched["cur"] -= event[1]
            unmatched["prev"] -= event[2]
    # Both files were read through once, batch by batch.
    assert sum(e[2] for e in log if e[:2] == ("read", "cur")) == len(current)
    assert sum(e[2] for e in log if e[:2] == ("read", "prev")) == len(previous)


def test_collector_grows_past_what_the_metadata_announced(store):
    # The first-run / full-resync result is copied into arrays sized from the file's metadata;
    # should a file hold more (it cannot, for write_snapshot's files), they grow instead of failing.
    collector = diff_files._Collector(store.parquet_file(put(store, "small", ["a", "b"])))
    parts = [pa.array(["a", "b"]), pa.array(["c" * 1000, "d"]).slice(1), pa.array([]), pa.array(["e" * 5000, "f"])]
    for part in parts:
        collector.append(part)
    assert collector.result().to_pylist() == ["a", "b", "d", "e" * 5000, "f"]
