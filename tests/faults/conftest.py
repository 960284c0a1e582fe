"""Fault suites: what each injected, how it ended. Every suite adds its figures to ``figures``
(suite -> name -> value); they are printed at the end of the session (also without ``-s``), and
are the source of the tables in docs/reliability.md."""

from __future__ import annotations

import json
from collections import defaultdict

import pytest

_FIGURES: dict[str, dict] = defaultdict(dict)


@pytest.fixture(scope="session")
def figures() -> dict[str, dict]:
    """``figures[suite][name] = value``: recorded by the fault tests, printed when the session ends."""
    return _FIGURES


def pytest_terminal_summary(terminalreporter) -> None:
    if not _FIGURES:
        return
    terminalreporter.section("fault suites: figures")
    for suite in sorted(_FIGURES):
        terminalreporter.write_line(f"[{suite}]")
        for name, value in _FIGURES[suite].items():
            if isinstance(value, dict) and value and all(isinstance(v, dict) for v in value.values()):
                terminalreporter.write_line(f"  {name}:")  # one line per case
                for case, figures in value.items():
                    terminalreporter.write_line(f"    {case}: {json.dumps(figures, default=str)}")
            else:
                shown = json.dumps(value, sort_keys=True, default=str) if isinstance(value, dict | list) else value
                terminalreporter.write_line(f"  {name}: {shown}")
