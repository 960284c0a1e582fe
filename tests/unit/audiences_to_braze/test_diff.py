"""Audience diffs, the per-user merge, Braze batches, chunking and the data point estimate."""

from __future__ import annotations

import random

import numpy as np
import pyarrow as pa
import pytest

from include.audiences_to_braze import diff as audience_diff
from include.audiences_to_braze.diff import (
    CHANGES_SCHEMA,
    AudienceChanges,
    attribute_batches,
    diff_audience,
    estimate_data_points,
    merge_changes,
    sorted_unique,
    split_chunks,
)
from include.common.errors import ConfigError, PermanentError


def ids(*values: str) -> pa.Array:
    return pa.array(list(values), pa.string())


def as_list(arr: pa.Array) -> list[str]:
    return arr.to_pylist()


# --------------------------------------------------------------------------------------------------
# diff_audience
# --------------------------------------------------------------------------------------------------


def test_adds_are_new_members_and_removes_are_members_who_left():
    changes = diff_audience("vip", ids("a", "c", "d", "f"), ids("b", "c", "e", "f"))
    assert as_list(changes.adds) == ["a", "d"]
    assert as_list(changes.removes) == ["b", "e"]
    assert changes.slug == "vip"


def test_unchanged_audience_gives_no_changes():
    same = ids("u1", "u2", "u3")
    changes = diff_audience("vip", same, same)
    assert len(changes.adds) == 0 and len(changes.removes) == 0


@pytest.mark.parametrize("current, previous, adds, removes", [
    ([], [], [], []),
    ([], ["a", "b"], [], ["a", "b"]),  # everybody left
    (["a", "b"], [], ["a", "b"], []),  # an empty committed audience is not a first run
])
def test_empty_audiences(current, previous, adds, removes):
    changes = diff_audience("s", ids(*current), ids(*previous))
    assert as_list(changes.adds) == adds
    assert as_list(changes.removes) == removes
    assert changes.adds.type == changes.removes.type == pa.string()


def test_first_run_with_existing_users_adds_every_member():
    changes = diff_audience("vip", ids("a", "b"), None, existing_users=True)
    assert as_list(changes.adds) == ["a", "b"]
    assert as_list(changes.removes) == []


def test_first_run_without_existing_users_sends_nothing():
    changes = diff_audience("vip", ids("a", "b"), None, existing_users=False)
    assert len(changes.adds) == 0 and len(changes.removes) == 0


def test_full_resync_adds_everyone_and_still_removes_leavers():
    changes = diff_audience("vip", ids("a", "b", "c"), ids("b", "x"), full_resync=True)
    assert as_list(changes.adds) == ["a", "b", "c"]
    assert as_list(changes.removes) == ["x"]
    first = diff_audience("vip", ids("a"), None, existing_users=False, full_resync=True)
    assert as_list(first.adds) == ["a"]


def test_unsorted_or_duplicated_input_is_normalized():
    changes = diff_audience("s", ids("d", "a", "d", "c"), ids("c", "b", "b"))
    assert as_list(changes.adds) == ["a", "d"]
    assert as_list(changes.removes) == ["b"]


def test_chunked_and_large_string_inputs_are_accepted():
    current = pa.chunked_array([ids("a", "b"), ids("c")])
    previous = pa.array(["b", "z"], pa.large_string())
    changes = diff_audience("s", current, previous)
    assert as_list(changes.adds) == ["a", "c"]
    assert as_list(changes.removes) == ["z"]


def test_null_or_non_string_ids_are_refused():
    with pytest.raises(PermanentError, match="null"):
        diff_audience("s", pa.array(["a", None]), None)
    with pytest.raises(PermanentError, match="strings"):
        diff_audience("s", pa.array([1, 2]), None)


def test_byte_order_is_the_sort_order():
    # Arrow compares strings byte by byte: uppercase before lowercase, "u10" before "u9".
    current = sorted_unique(ids("u9", "u10", "U1", "é", "z"))
    assert as_list(current) == ["U1", "u10", "u9", "z", "é"]
    changes = diff_audience("s", current, ids("u10", "é"))
    assert as_list(changes.adds) == ["U1", "u9", "z"]


@pytest.mark.parametrize("seed", range(12))
def test_diff_matches_python_sets_on_random_audiences(seed, monkeypatch):
    rng = random.Random(seed)
    # Small search blocks exercise the block boundaries with small inputs.
    monkeypatch.setattr(audience_diff, "_SEARCH_BLOCK", rng.choice([1, 2, 3, 7, 256]))
    monkeypatch.setattr(audience_diff, "_ANCHOR_STEP", rng.choice([1, 2, 5, 16, 1000]))
    monkeypatch.setattr(audience_diff, "_CHECK_BLOCK", rng.choice([1, 5, 1 << 20]))
    universe = [f"u{i:05d}" for i in range(rng.choice([0, 1, 5, 300, 3000]))]
    previous = set(rng.sample(universe, rng.randint(0, len(universe))))
    current = set(rng.sample(universe, rng.randint(0, len(universe))))
    changes = diff_audience("s", ids(*sorted(current)), ids(*sorted(previous)))
    assert as_list(changes.adds) == sorted(current - previous)
    assert as_list(changes.removes) == sorted(previous - current)


def test_diff_of_a_large_audience_is_exact():
    n = 200_000
    numbers = np.arange(n)
    previous = pa.array([f"u{i:09d}" for i in numbers[numbers % 97 != 0]])
    current = pa.array([f"u{i:09d}" for i in numbers[numbers % 89 != 0]])
    changes = diff_audience("s", current, previous)
    assert as_list(changes.adds) == [f"u{i:09d}" for i in numbers if i % 97 == 0 and i % 89 != 0]
    assert as_list(changes.removes) == [f"u{i:09d}" for i in numbers if i % 89 == 0 and i % 97 != 0]


# --------------------------------------------------------------------------------------------------
# merge_changes
# --------------------------------------------------------------------------------------------------


def test_merge_across_three_audiences_gives_one_object_per_user():
    changes = [
        diff_audience("vip", ids("alice", "bob"), ids("bob")),  # alice enters vip
        diff_audience("churn_risk", ids("carol"), ids("alice", "carol")),  # alice leaves churn_risk
        diff_audience("active", ids("alice", "dave"), ids("dave")),  # alice enters active
    ]
    table = merge_changes(changes)
    assert table.schema == CHANGES_SCHEMA
    assert table.to_pylist() == [
        {"external_id": "alice", "add": ["active", "vip"], "remove": ["churn_risk"]},
    ]
    [batch] = list(attribute_batches(table))
    assert batch == [{"external_id": "alice",
                      "lytics_segments": {"add": ["active", "vip"], "remove": ["churn_risk"]}}]


def test_merge_is_sorted_and_deterministic_whatever_the_input_order():
    rng = random.Random(3)
    universe = [f"user-{i}" for i in range(400)]
    changes = []
    for slug in ["s3", "s1", "s2", "s0", "s4"]:
        current = sorted(rng.sample(universe, 150))
        previous = sorted(rng.sample(universe, 150))
        changes.append(diff_audience(slug, ids(*current), ids(*previous)))
    expected = merge_changes(changes)
    for _ in range(5):
        rng.shuffle(changes)
        assert merge_changes(changes).equals(expected)
    rows = expected.to_pylist()
    assert [r["external_id"] for r in rows] == sorted({r["external_id"] for r in rows})
    for row in rows:
        assert row["add"] == sorted(row["add"]) and row["remove"] == sorted(row["remove"])
        assert row["add"] or row["remove"]
    # Against a plain-Python reference.
    reference: dict[str, dict[str, list[str]]] = {}
    for change in sorted(changes, key=lambda c: c.slug):
        for op, arr in (("add", change.adds), ("remove", change.removes)):
            for uid in arr.to_pylist():
                reference.setdefault(uid, {"add": [], "remove": []})[op].append(change.slug)
    assert rows == [{"external_id": k, **v} for k, v in sorted(reference.items())]


def test_merge_of_one_audience_interleaves_adds_and_removes_in_id_order():
    table = merge_changes([diff_audience("vip", ids("a", "c", "e"), ids("b", "c", "d"))])
    assert table.to_pylist() == [
        {"external_id": "a", "add": ["vip"], "remove": []},
        {"external_id": "b", "add": [], "remove": ["vip"]},
        {"external_id": "d", "add": [], "remove": ["vip"]},
        {"external_id": "e", "add": ["vip"], "remove": []},
    ]


def test_merge_of_nothing_is_an_empty_table():
    assert merge_changes([]).equals(CHANGES_SCHEMA.empty_table())
    unchanged = diff_audience("vip", ids("a"), ids("a"))
    assert merge_changes([unchanged]).num_rows == 0


def test_merge_refuses_the_same_audience_twice():
    change = AudienceChanges("vip", ids("a"), ids())
    with pytest.raises(PermanentError, match="twice"):
        merge_changes([change, change])


# --------------------------------------------------------------------------------------------------
# attribute_batches, split_chunks, estimate_data_points
# --------------------------------------------------------------------------------------------------


def _table(n: int) -> pa.Table:
    """n users, alternating add-only, remove-only and both."""
    rows = []
    for i in range(n):
        add = ["a", "b"] if i % 3 != 1 else []
        remove = ["c"] if i % 3 != 0 else []
        rows.append({"external_id": f"u{i:06d}", "add": add, "remove": remove})
    return pa.Table.from_pylist(rows, schema=CHANGES_SCHEMA)


@pytest.mark.parametrize("n", [0, 1, 74, 75, 76, 150, 151, 10_001])
@pytest.mark.parametrize("size", [1, 50, 75])
def test_batches_never_exceed_size_and_hold_every_user_once_in_order(n, size):
    table = _table(n)
    batches = list(attribute_batches(table, size=size))
    assert all(1 <= len(b) <= size for b in batches)
    assert len(batches) == -(-n // size)
    objects = [o for b in batches for o in b]
    assert [o["external_id"] for o in objects] == table.column("external_id").to_pylist()
    for i, obj in enumerate(objects):
        operation = obj["lytics_segments"]
        assert set(obj) == {"external_id", "lytics_segments"}
        assert operation == {k: v for k, v in (("add", ["a", "b"] if i % 3 != 1 else []),
                                               ("remove", ["c"] if i % 3 != 0 else [])) if v}


@pytest.mark.parametrize("seed", range(20))
def test_batches_property_random_sizes(seed):
    rng = random.Random(seed)
    n = rng.choice([0, 1, 75, 76, rng.randint(0, 3000)])
    size = rng.randint(1, 75)
    table = _table(n)
    offset = rng.randint(0, n)  # a slice, as split_chunks hands out
    part = table.slice(offset, rng.randint(0, n - offset))
    batches = list(attribute_batches(part, attribute="segs", size=size))
    assert all(0 < len(b) <= size for b in batches)
    assert [o["external_id"] for b in batches for o in b] == part.column("external_id").to_pylist()


def test_batch_size_is_bounded_by_braze():
    with pytest.raises(ConfigError, match="75"):
        next(attribute_batches(_table(3), size=76))
    with pytest.raises(ConfigError):
        next(attribute_batches(_table(3), size=0))


@pytest.mark.parametrize("n", [0, 1, 9, 10, 99, 100, 101, 1000, 10_001])
@pytest.mark.parametrize("max_chunks, min_rows", [(1, 1), (4, 10), (8, 100), (16, 1), (3, 5000)])
def test_split_chunks_bounds(n, max_chunks, min_rows):
    table = _table(n)
    chunks = split_chunks(table, max_chunks, min_rows)
    assert 1 <= len(chunks) <= max_chunks
    if len(chunks) > 1:
        assert all(c.num_rows >= min_rows for c in chunks)
    sizes = [c.num_rows for c in chunks]
    assert max(sizes) - min(sizes) <= 1
    assert pa.concat_tables(chunks).equals(table)  # contiguous, in order, nothing lost
    if n >= max_chunks * min_rows:
        assert len(chunks) == max_chunks


def test_split_chunks_rejects_nonsense():
    with pytest.raises(ConfigError):
        split_chunks(_table(3), 0, 1)
    with pytest.raises(ConfigError):
        split_chunks(_table(3), 2, 0)


def test_data_points_count_every_slug_added_or_removed():
    table = merge_changes([
        diff_audience("x", ids("a", "b"), ids("c")),  # 2 adds, 1 remove
        diff_audience("y", ids("a"), None),  # 1 add
    ])
    assert estimate_data_points(table) == 4
    assert estimate_data_points(_table(6)) == 2 * 4 + 4
    assert estimate_data_points(CHANGES_SCHEMA.empty_table()) == 0
    assert estimate_data_points(table) == sum(
        len(o["lytics_segments"].get("add", [])) + len(o["lytics_segments"].get("remove", []))
        for b in attribute_batches(table) for o in b)


def test_slug_order_check_within_each_users_list():
    # lists [0, 2] and [1, 3]: each ascending even though the flat codes are not
    assert audience_diff._ascending_within(np.array([0, 2, 1, 3]), np.array([0, 2, 4]))
    assert not audience_diff._ascending_within(np.array([2, 0]), np.array([0, 2]))
    assert audience_diff._ascending_within(np.array([5, 1]), np.array([0, 0, 1, 1, 2]))  # empty lists
