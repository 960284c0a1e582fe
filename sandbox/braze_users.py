"""Deterministic fake Braze users for the Braze sandbox: export lines and their ground truth.

Every user is a pure function of ``(segment_id, seed, i)`` plus the knobs of its
:class:`SegmentSpec`: the same spec always yields byte-identical exports, in any process, on any
machine (``shake_256`` per user, see :mod:`sandbox.braze_segment`, which also holds the identity
rules: missing ids, duplicates, malformed lines).

Two generators:

* plain (default, :mod:`sandbox.braze_users_plain`) -- mildly awkward data;
* ``SegmentSpec(..., realistic=True)`` (:mod:`sandbox.braze_users_realistic`) -- many scripts,
  emoji, U+2028/U+2029, literal "null" strings, nested attributes, multi-KB fields, ~2% missing
  ids and ~0.5% duplicates whose first occurrence is thousands of users (and files) earlier.

Ground truth for consumers:

* :func:`expected_users` -- the parsed users, ``None`` where the line is malformed;
* :func:`expected_rows` / :func:`row_status` -- per user index, whether its line is the
  **first occurrence** of its id (``"kept"``), a **later duplicate** (``"duplicate"``, with
  ``first_index`` = the index of the id's first parseable occurrence in export order, which is
  numeric file order then line order, i.e. index order), has **no id** (``"missing_id"``; also
  every row when ``external_id`` is not among the exported fields) or is **malformed**.

Files and lines: user ``i`` is line ``i % users_per_file`` of file ``i // users_per_file`` of an
export (see :mod:`sandbox.braze_exports`).

This module is "the other side" of the contract: it imports nothing from ``include/`` or
``plugins/``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import orjson

from sandbox.braze_segment import ALL_FIELDS, SegmentSpec, carried_id, first_occurrence
from sandbox.braze_users_plain import plain_user
from sandbox.braze_users_realistic import realistic_lines, realistic_user

__all__ = [
    "ALL_FIELDS",
    "DUPLICATE",
    "KEPT",
    "MALFORMED",
    "MISSING_ID",
    "ExpectedRow",
    "SegmentSpec",
    "expected_rows",
    "expected_users",
    "export_lines",
    "row_status",
    "user",
]

KEPT = "kept"
DUPLICATE = "duplicate"
MISSING_ID = "missing_id"
MALFORMED = "malformed"


def user(spec: SegmentSpec, i: int) -> dict:
    """The i-th user of the segment, as Braze's segment export would show it (all fields).

    The missing-email, missing-id and duplicate-id knobs are applied here, the malformed-line
    knob only in :func:`export_lines` (it concerns the line, not the user).
    """
    if not 0 <= i < spec.size:
        raise IndexError(f"user index {i} out of range for segment of size {spec.size}")
    return realistic_user(spec, i) if spec.realistic else plain_user(spec, i)


def _restrict(u: dict, fields: frozenset[str] | None) -> dict:
    if fields is None:
        return u
    return {k: v for k, v in u.items() if k in fields}


def _fieldset(fields: Iterable[str] | None) -> frozenset[str] | None:
    if fields is None:
        return None
    if isinstance(fields, str):
        raise TypeError("fields must be a list of field names, not a string")
    return frozenset(fields)


def _malformed(line: bytes) -> bytes:
    """A truncated copy of a JSON line: never valid JSON, still valid UTF-8, one line."""
    cut = line[: max(1, (len(line) - 1) // 2)]
    return cut.decode("utf-8", "ignore").encode() + b"\n"


def _lines(spec: SegmentSpec, fieldset: frozenset[str] | None) -> Iterator[bytes]:
    if spec.realistic:
        return realistic_lines(spec, fieldset)
    dumps, option = orjson.dumps, orjson.OPT_APPEND_NEWLINE
    return (dumps(_restrict(plain_user(spec, i), fieldset), option=option) for i in range(spec.size))


def _with_malformed(lines: Iterator[bytes], n_bad: int) -> Iterator[bytes]:
    for i, line in enumerate(lines):
        yield _malformed(line) if i % n_bad == n_bad - 1 else line


def export_lines(spec: SegmentSpec, fields: list[str] | None) -> Iterator[bytes]:
    """NDJSON lines (each ending in ``b"\\n"``) of the segment export, users 0..size-1.

    Each user is restricted to the requested top-level ``fields`` (None = all); knobs applied.
    """
    lines = _lines(spec, _fieldset(fields))
    return _with_malformed(lines, spec.malformed_every) if spec.malformed_every else lines


def expected_users(spec: SegmentSpec, fields: list[str] | None) -> Iterator[dict | None]:
    """The parsed users of :func:`export_lines`, in order; ``None`` where the line is malformed."""
    fieldset = _fieldset(fields)
    if spec.realistic:
        loads = orjson.loads
        for i, line in enumerate(realistic_lines(spec, fieldset)):
            yield None if spec.is_malformed(i) else loads(line)
        return
    for i in range(spec.size):
        yield None if spec.is_malformed(i) else _restrict(plain_user(spec, i), fieldset)


@dataclass(frozen=True, slots=True)
class ExpectedRow:
    """What a consumer should make of user ``index``'s line (see :func:`row_status`)."""

    index: int
    status: str  # KEPT | DUPLICATE | MISSING_ID | MALFORMED
    external_id: str | None  # the id on the line (None: missing or malformed)
    first_index: int | None  # KEPT: index itself; DUPLICATE: the id's first occurrence; else None
    user: dict | None = None  # the parsed, field-restricted user (None: malformed, or not asked for)


def row_status(
    spec: SegmentSpec, i: int, fields: Iterable[str] | None = None
) -> tuple[str, str | None, int | None]:
    """``(status, external_id, first_index)`` of user ``i``'s line, without generating the user.

    ``status`` is ``"kept"`` (first parseable occurrence of its id), ``"duplicate"`` (a later one:
    ``first_index`` is where the id first appears), ``"missing_id"`` or ``"malformed"``.
    """
    if not 0 <= i < spec.size:
        raise IndexError(f"user index {i} out of range for segment of size {spec.size}")
    if spec.is_malformed(i):
        return MALFORMED, None, None
    fieldset = _fieldset(fields)
    if fieldset is not None and "external_id" not in fieldset:
        return MISSING_ID, None, None
    external_id, k = carried_id(spec, i)
    if external_id is None:
        return MISSING_ID, None, None
    first = i if k == i else first_occurrence(spec, k)
    return (KEPT, external_id, i) if first == i else (DUPLICATE, external_id, first)


def expected_rows(
    spec: SegmentSpec, fields: Iterable[str] | None = None, *, users: bool = True
) -> Iterator[ExpectedRow]:
    """One :class:`ExpectedRow` per user index, in export order (``users=False``: skip the dicts)."""
    fieldset = _fieldset(fields)
    parsed = expected_users(spec, None if fieldset is None else list(fieldset)) if users else None
    for i in range(spec.size):
        u = next(parsed) if parsed is not None else None
        status, external_id, first = row_status(spec, i, fieldset)
        yield ExpectedRow(i, status, external_id, first, u)
