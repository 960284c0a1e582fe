"""CSV cells for Lytics: how a Braze value becomes one RFC 4180 cell, and the row function.

A missing value or JSON null is an empty cell, booleans are `true`/`false`, numbers as Python
writes them, objects and lists compact JSON; a cell with a comma, quote, CR or LF is quoted with
its quotes doubled (exactly csv.writer's QUOTE_MINIMAL). `compile_row` builds, for one header,
the function the shaper calls per record: the hot loop of a segment transfer.
"""

from __future__ import annotations

import re

import orjson

NEEDS_QUOTES = re.compile(r'[",\r\n]').search


def quote(cell: str) -> str:
    """RFC 4180 quoting of one cell: exactly csv.writer's QUOTE_MINIMAL, ~30% faster per row.

    (csv.writer re-checks its dialect per field; a compiled search per cell is cheaper, and
    shaping is the hot loop. tests/unit/segments_to_lytics/test_csv_shape.py compares the two byte for byte.)
    """
    return '"' + cell.replace('"', '""') + '"' if NEEDS_QUOTES(cell) else cell


def format_value(value) -> str:
    """One CSV cell: '' for missing, true/false for booleans, compact JSON for objects/lists."""
    if value is None:
        return ""
    kind = type(value)
    if kind is str:
        return value
    if kind is bool:
        return "true" if value else "false"
    if kind is int or kind is float:
        return str(value)
    return orjson.dumps(value).decode()


def compile_row(paths: list[tuple[str, ...]], timestamp_value: str, id_index: int):
    """Build `record -> (CSV line, id cell)` for this header as one flat function.

    Shaping is the hot loop (millions of records); a generated function with each lookup and
    each cell's RFC 4180 quoting spelled out inline runs several times faster than walking the
    paths and calling a formatter per cell. Field names only ever appear as string literals
    (repr), never as code.
    """
    lines = ["def row(r):"]
    cells = []
    parents: dict[tuple[str, ...], str] = {(): "r"}
    for path in paths:
        for depth in range(1, len(path)):
            parent = path[:depth]
            if parent not in parents:
                name = f"p{len(parents)}"
                lines.append(f"    {name} = {parents[parent[:-1]]}.get({parent[-1]!r})")
                lines.append(f"    {name} = {name} if type({name}) is dict else EMPTY")
                parents[parent] = name
        v = f"v{len(cells)}"
        lines.append(f"    {v} = {parents[path[:-1]]}.get({path[-1]!r})")
        # A plain string without , " CR or LF is written as is, one with them quoted (QS); a missing
        # value or JSON null is empty; anything else (numbers, booleans, objects, lists) goes through Q.
        lines.append(f"    if type({v}) is str:")
        lines.append(f"        if NEEDS({v}): {v} = QS({v})")
        lines.append(f"    else: {v} = '' if {v} is None else Q({v})")
        cells.append(v)
    lines.append(f"    return ','.join([{', '.join(cells)}, TS]), v{id_index}")
    namespace = {"EMPTY": {}, "Q": _quoted_cell, "QS": _quote_always, "NEEDS": NEEDS_QUOTES,
                 "TS": quote(timestamp_value) + "\r\n"}
    exec("\n".join(lines), namespace)  # noqa: S102 - code built above from literals only
    return namespace["row"]


def _quoted_cell(value) -> str:
    """`quote(format_value(value))` in one call for the common non-string cells: a number or a
    boolean never needs quoting (digits, '.', '-', '+', 'e', letters)."""
    kind = type(value)
    if kind is bool:
        return "true" if value else "false"
    if kind is int or kind is float:
        return str(value)
    text = orjson.dumps(value).decode() if kind is list or kind is dict else format_value(value)
    return '"' + text.replace('"', '""') + '"' if NEEDS_QUOTES(text) else text


def _quote_always(cell: str) -> str:
    return '"' + cell.replace('"', '""') + '"'


def lookup(record: dict, path: tuple[str, ...]):
    value = record
    for key in path:
        if type(value) is not dict:
            return None
        value = value.get(key)
    return value
