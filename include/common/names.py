"""The one rule for turning free text (an Airflow run id, a segment name) into a file-name part."""

from __future__ import annotations

import re

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


def file_safe(text: str, max_length: int = 120) -> str:
    """`text` with every character outside letters, digits, '_', '.', '-' replaced by '_', cut to
    `max_length`, without leading dots (no hidden files, no '..'): the same text always gives the
    same name, so a cleared task finds the files of its first try."""
    return _UNSAFE.sub("_", text or "")[:max_length].lstrip(".")
