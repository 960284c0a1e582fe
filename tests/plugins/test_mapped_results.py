"""Mapped results are read without touching an index past the end.

Airflow's lazy sequence of mapped results logs `[error] XCom not found` when an item past its end
is fetched, which plain iteration does to find the end. `FakeLazyResults` behaves like it: it
records every fetch and raises IndexError (after "logging") past the end.
"""

from __future__ import annotations

from collections.abc import Sequence

from braze_lytics.mapped_results import mapped_results


class FakeLazyResults(Sequence):
    def __init__(self, items):
        self.items, self.fetched, self.errors_logged = list(items), [], 0

    def __len__(self):
        return len(self.items)

    def __getitem__(self, key):
        self.fetched.append(key)
        if isinstance(key, slice):
            return self.items[key]
        if key >= len(self.items):
            self.errors_logged += 1  # what Airflow's supervisor logs as "[error] XCom not found"
            raise IndexError(key)
        return self.items[key]


def test_plain_iteration_reads_past_the_end_which_is_what_logs_the_error():
    lazy = FakeLazyResults([{"a": 1}, {"b": 2}])
    assert list(lazy) == [{"a": 1}, {"b": 2}]
    assert lazy.errors_logged == 1  # the behaviour mapped_results avoids


def test_mapped_results_reads_all_in_one_slice_and_never_past_the_end():
    lazy = FakeLazyResults([{"a": 1}, None, {"c": 3}])
    assert mapped_results(lazy) == [{"a": 1}, None, {"c": 3}]
    assert lazy.fetched == [slice(0, 3)] and lazy.errors_logged == 0


def test_a_single_result_a_list_and_nothing():
    assert mapped_results({"only": 1}) == [{"only": 1}]  # a mapped group's one result arrives bare
    assert mapped_results([1, 2]) == [1, 2]
    assert mapped_results(None) == []
    assert mapped_results(FakeLazyResults([])) == []
