"""Ids Braze can never accept are left out of a snapshot, counted by reason, with a readable sample."""

from __future__ import annotations

import pyarrow as pa

from include.audiences_to_braze.ids import MAX_EXTERNAL_ID_CHARS, check_ids


def test_valid_ids_of_any_script_pass_untouched_and_in_order():
    ids = pa.array(["u1", "Zoë-42", "用户-7", "😀" * 10, "a,b\"c", "x" * MAX_EXTERNAL_ID_CHARS], pa.large_string())
    checked = check_ids(ids)
    assert checked.valid.to_pylist() == ids.to_pylist()
    assert (checked.invalid, checked.by_reason, checked.sample) == (0, {}, [])


def test_each_kind_of_unusable_id_is_left_out_with_its_reason_and_counted_once():
    ids = pa.array(["ok1", "", "   ", "y" * (MAX_EXTERNAL_ID_CHARS + 1), "a\x00b", "line\nbreak", "sep\u2028x",
                    " \t ", "ok2", "\n" + "z" * 300])
    checked = check_ids(ids)
    assert checked.valid.to_pylist() == ["ok1", "ok2"]
    assert checked.invalid == 8 == len(ids) - 2
    assert checked.by_reason == {"empty or only spaces": 3, "longer than 255 characters": 2,
                                 "holds control characters (e.g. NUL, tab, line break)": 3}
    long_one = next(s for s in checked.sample if s["reason"].startswith("longer"))
    assert long_one["id"].endswith("... (256 characters)") and len(long_one["id"]) < 100  # cut, not 256 chars
    assert {"id": "a\\x00b", "reason": "holds control characters (e.g. NUL, tab, line break)"} in checked.sample


def test_the_sample_is_bounded_on_a_large_input():
    ids = pa.array([f"u{i}" if i % 3 else "" for i in range(30_000)])
    checked = check_ids(ids)
    assert checked.invalid == 10_000 and len(checked.valid) == 20_000 and len(checked.sample) == 10
