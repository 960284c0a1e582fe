"""Read the results of a mapped task without Airflow logging an error.

Iterating the lazy sequence Airflow passes for a mapped task's results (`for r in results`,
`list(results)`) fetches item after item until one is missing; that last fetch is logged as
`[error] XCom not found ...` in every successful run, and on-call staff read `[error]` as a
failure. One slice request reads them all and logs nothing. A single mapped result can also
arrive as the bare value (a mapped task group's one result does), and a task that did not run as
None.
"""

from __future__ import annotations

from collections.abc import Sequence


def mapped_results(results) -> list:
    """All results of a mapped task as a list, in map-index order, with one request and no error log."""
    if results is None:
        return []
    if isinstance(results, dict):
        return [results]
    if isinstance(results, list | tuple):
        return list(results)
    if isinstance(results, Sequence):
        return list(results[0:len(results)])
    raise TypeError(f"unexpected mapped results {type(results).__name__}")
