"""The reference: DuckDB doing the *same job* as our shaping, on the extracted export files.

Same job = the same CSV columns (``b2l_worker.COLUMNS``: nested ``custom_attributes.tier`` etc.,
``devices`` as JSON text, booleans true/false, the same constant timestamp column); rows whose
``external_id`` is missing, null or empty dropped; of several rows with the same id, the **first
in export order** kept -- numeric file order (``x-2.json`` before ``x-10.json``: the number is
parsed from the name), then line order.

DuckDB has no line number for ``read_ndjson`` (no ``file_row_number`` virtual column for JSON;
``row_number() OVER (PARTITION BY filename)`` numbers rows in whatever order they reach the window,
which a parallel scan does not fix). Three ways to get one, all checked by :func:`order_check`:

* ``ordinality`` (default) -- ``read_ndjson(glob, filename=true) WITH ORDINALITY``. DuckDB plans
  it as a *Streaming Window* ``row_number() OVER ()`` right above the scan; that operator is not
  parallel (``PhysicalStreamingWindow`` keeps one atomic counter and does not override
  ``ParallelOperator()``), so the scan pipeline runs on one thread, files in (sorted) list order,
  lines in file order: the ordinality is the row's position in that scan. Costs DuckDB its
  parallel JSON parsing; the window and the CSV writing are still parallel.
* ``table`` -- ``CREATE TEMP TABLE`` from the parallel scan, then ``rowid``: DuckDB preserves
  insertion order (``preserve_insertion_order``, default true) when it materialises a scan.
* ``union`` -- one ``read_ndjson(file) WITH ORDINALITY`` per file, ``UNION ALL``: a per-file
  line number; the branches can run in parallel.

Then ``QUALIFY row_number() OVER (PARTITION BY external_id ORDER BY file_no, line) = 1``.

CLI (the shell chain of the whole-transfer step uses it)::

    python -m bench.b2l_duckdb [--variant ordinality] 'dir/**/*.json' out.csv   # out may be /dev/stdout
"""

from __future__ import annotations

import argparse
import glob as globlib
import sys

from bench.b2l_worker import COLUMNS, ID_FIELD, TIMESTAMP_COLUMN, TIMESTAMP_VALUE

VARIANTS = ("ordinality", "table", "union")
FILE_NO = r"CAST(regexp_extract(filename, '-(\d+)\.json$', 1) AS INTEGER)"


def lit(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def _read_columns() -> str:
    """read_ndjson's `columns`: every top-level field as text, except objects we take fields from
    (a STRUCT of VARCHARs: JSON true -> 'true', numbers as written) and objects/lists written whole
    (JSON: the value as JSON text). Declared, not inferred: inference would turn dob into a DATE,
    created_at into a TIMESTAMP and device ids into UUIDs, i.e. change the text of the cells."""
    top: dict[str, list[str] | None] = {}
    for src in COLUMNS.values():
        head, _, rest = src.partition(".")
        if rest:
            top.setdefault(head, [])
            top[head].append(rest)
        else:
            top.setdefault(head, None)
    parts = []
    for name, subs in top.items():
        if subs:
            typ = "STRUCT(" + ", ".join(f'"{s}" VARCHAR' for s in dict.fromkeys(subs)) + ")"
        elif name == "devices":
            typ = "JSON"
        else:
            typ = "VARCHAR"
        parts.append(f"{lit(name)}: {lit(typ)}")
    return "{" + ", ".join(parts) + "}"


def _select_list() -> str:
    cols = []
    for name, src in COLUMNS.items():
        head, _, rest = src.partition(".")
        expr = f'"{head}"' + (f'."{rest}"' if rest else "")
        cols.append(f'{expr} AS "{name}"')
    cols.append(f'{lit(TIMESTAMP_VALUE)} AS "{TIMESTAMP_COLUMN}"')
    return ", ".join(cols)


def _numbered(glob: str, variant: str) -> tuple[list[str], str, str, str]:
    """(setup statements, FROM clause, file number, row number within the file's order) of a variant."""
    cols = _read_columns()
    if variant == "ordinality":
        src = f"read_ndjson({lit(glob)}, columns={cols}, filename=true) WITH ORDINALITY AS src"
        return [], src, FILE_NO, "ordinality"
    if variant == "table":
        setup = [f"CREATE TEMP TABLE src AS SELECT *, {FILE_NO} AS file_no "
                 f"FROM read_ndjson({lit(glob)}, columns={cols}, filename=true)"]
        return setup, "src", "file_no", "rowid"
    if variant == "union":
        files = sorted(globlib.glob(glob, recursive=True))
        if not files:
            raise FileNotFoundError(glob)
        branches = [f"SELECT *, {FILE_NO} AS file_no FROM read_ndjson({lit(f)}, columns={cols}, filename=true) "
                    f"WITH ORDINALITY" for f in files]
        return [], "(" + " UNION ALL ".join(branches) + ") AS src", "file_no", "ordinality"
    raise ValueError(f"unknown variant {variant!r}; one of {VARIANTS}")


def same_job_sql(glob: str, out_csv: str, variant: str = "ordinality") -> list[str]:
    """The statements that write the shaped CSV (the last one is the COPY)."""
    setup, src, file_no, num = _numbered(glob, variant)
    idf = f'"{ID_FIELD}"'
    copy = (f"COPY (SELECT {_select_list()} FROM {src} "
            f"WHERE {idf} IS NOT NULL AND trim({idf}) <> '' "
            f"QUALIFY row_number() OVER (PARTITION BY {idf} ORDER BY {file_no}, {num}) = 1) "
            f"TO {lit(out_csv)} (HEADER)")
    return [*setup, copy]


def order_check_sql(glob: str, variant: str, users_per_file: int, segment_id: str) -> list[str]:
    """Where each row sits in export order by the variant's numbering vs where it really is.

    A row whose id is its own natural id (``<segment>-u<8-digit index>``: every kept row of the
    generated export) must land at index ``file_no * users_per_file + line`` (``line`` 0-based:
    the numbering minus the file's smallest number). A scan that interleaved files or reordered
    lines would misplace them."""
    setup, src, file_expr, num = _numbered(glob, variant)
    rank = f"row_number() OVER (PARTITION BY {file_expr} ORDER BY {num}) - 1"
    idf = f'"{ID_FIELD}"'
    query = (f"WITH n AS (SELECT {idf} AS id, {file_expr} AS file_no, {num} AS num, "
             f"{num} - min({num}) OVER (PARTITION BY {file_expr}) AS line, {rank} AS rank FROM {src}) "
             f"SELECT count(*), count(id), "
             f"count(*) FILTER (WHERE id = {lit(segment_id + '-u')} || lpad(CAST(file_no * {users_per_file} + line "
             f"AS VARCHAR), 8, '0')), "
             f"count(*) FILTER (WHERE line <> rank), count(DISTINCT file_no), max(line) FROM n")
    return [*setup, query]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="DuckDB doing the same job as our shaping (see module doc).")
    ap.add_argument("--variant", choices=VARIANTS, default="ordinality")
    ap.add_argument("--threads", type=int, default=0, help="DuckDB threads (default: DuckDB's, = CPUs)")
    ap.add_argument("glob")
    ap.add_argument("out")
    args = ap.parse_args(argv)
    import duckdb

    con = duckdb.connect()
    if args.threads:
        con.execute(f"SET threads = {args.threads}")
    for stmt in same_job_sql(args.glob, args.out, args.variant):
        con.execute(stmt)
    con.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
