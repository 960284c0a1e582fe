"""The Braze -> Lytics benchmark's input: a realistic Braze segment export, and its ground truth.

The export is what Braze's "Export users by segment" link delivers for the pipeline's field list:
a zip of NDJSON files, 5,000 users each, members named
``segment-export/<segment>/<day>/<object_prefix>/<object_prefix>-<N>.json`` (N = 0, 1, 2, ... in
export order), written by the sandbox's own writer (``sandbox.braze_export_files.write_archive``,
deflate level 1) from ``sandbox.braze_users.export_lines(SegmentSpec("bench", N, realistic=True),
FIELDS)``: many scripts, emoji, U+2028, quotes/commas/newlines in values, "null" strings, ~2% of
users without ``external_id``, ~0.5% carrying the id of a user >= 5,000 positions (>= 1 file)
earlier. It is cached in ``bench/.data/realistic_<N>/`` with the same files extracted (DuckDB
cannot read a zip) and reused while the generator's parameters are the same.

Ground truth comes from ``sandbox.braze_users`` (which imports nothing from ``include/``):
``expected_rows`` says which line is the first occurrence of its id (kept), a later duplicate, or
has no id.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bench.b2l_worker import COLUMNS, ID_FIELD

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "bench" / ".data"
SEGMENT_ID = "bench"
USERS_PER_FILE = 5_000
DAY = "2026-11-23"
# Like the sandbox's object_prefix (<uuid4>-<epoch seconds>), fixed so the data is reproducible.
OBJECT_PREFIX = "4f3c2a1e-9b7d-4e6f-8a5c-2d1b0e9f8a7c-1795392000"
MEMBER_DIR = f"segment-export/{SEGMENT_ID}/{DAY}/{OBJECT_PREFIX}"
# What the pipeline asks Braze for (include/segments_to_lytics/config.py derives it the same way):
# the id field, then the top-level field of every mapped column, in column order.
FIELDS = list(dict.fromkeys([ID_FIELD.split(".", 1)[0], *(src.split(".", 1)[0] for src in COLUMNS.values())]))
FORMAT = 2  # bump when the layout or generator call changes: invalidates the cache


def spec(users: int):
    from sandbox.braze_users import SegmentSpec

    return SegmentSpec(SEGMENT_ID, users, realistic=True)


@dataclass
class Dataset:
    users: int
    zip_path: Path
    extracted: Path  # the zip's members, extracted with their directories
    files: int
    zip_bytes: int
    json_bytes: int
    reused: bool

    @property
    def glob(self) -> str:
        return str(self.extracted / "**" / "*.json")


def prepare_data(users: int, *, extract: bool = True) -> Dataset:
    """The realistic export zip (and its extracted files), cached in bench/.data/realistic_<users>/."""
    root = DATA / f"realistic_{users}"
    zip_path, extracted, meta_path = root / "export.zip", root / "files", root / "meta.json"
    files = max(1, math.ceil(users / USERS_PER_FILE))
    want = {"format": FORMAT, "users": users, "files": files, "fields": FIELDS, "prefix": OBJECT_PREFIX}
    try:
        meta = json.loads(meta_path.read_text())
        if ({k: meta.get(k) for k in want} == want and zip_path.stat().st_size == meta["zip_bytes"]
                and (not extract or len(list(extracted.glob("**/*.json"))) == files)):
            return Dataset(users, zip_path, extracted, files, meta["zip_bytes"], meta["json_bytes"], reused=True)
    except (OSError, ValueError, KeyError):
        pass

    from sandbox.braze_export_files import chunks, write_archive
    from sandbox.braze_users import export_lines

    print(f"preparing a realistic {users:,}-user export in {root} (once; reused next time) ...", flush=True)
    started = time.perf_counter()
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    tmp_zip = zip_path.with_name("export.zip.tmp")
    sizes: list[int] = []

    def counted() -> Iterator[bytes]:
        for data in chunks(export_lines(spec(users), FIELDS), USERS_PER_FILE):
            sizes.append(len(data))
            yield data

    write_archive(tmp_zip, counted(), "zip", OBJECT_PREFIX, MEMBER_DIR)
    os.replace(tmp_zip, zip_path)
    print(f"  zip written in {time.perf_counter() - started:.1f}s", flush=True)
    if extract:
        with zipfile.ZipFile(zip_path) as zf:
            zf.extractall(extracted)
    zip_bytes = zip_path.stat().st_size
    meta_path.write_text(json.dumps({**want, "zip_bytes": zip_bytes, "json_bytes": sum(sizes)}))
    print(f"  done in {time.perf_counter() - started:.1f}s", flush=True)
    return Dataset(users, zip_path, extracted, files, zip_bytes, sum(sizes), reused=False)


# ------------------------------------------------------------------------------------------------
# Ground truth
# ------------------------------------------------------------------------------------------------


@dataclass
class Truth:
    """What a correct shaping of the export writes (from sandbox.braze_users.expected_rows)."""

    users: int
    kept: int  # rows written: first occurrences of ids
    missing_id: int
    duplicates: int
    kept_ids: set[str] | None  # None when not collected (large exports)
    # id -> (fields of its first occurrence, fields of its first later duplicate), for duplicated ids
    dup_checks: dict[str, tuple[dict, dict]]

    def describe(self) -> str:
        return (f"{self.users:,} lines: {self.kept:,} kept (first occurrence of their id), "
                f"{self.duplicates:,} later duplicates, {self.missing_id:,} without external_id")


CHECK_COLUMNS = ("braze_id", "email", "first_name", "last_name")  # compared for the duplicate checks


def _cells(u: dict) -> dict:
    """The plain-string columns of a user as CSV text ('' for null/missing); non-strings skipped."""
    out = {}
    for col in CHECK_COLUMNS:
        v = u.get(COLUMNS[col])
        if v is None or isinstance(v, str):
            out[col] = v or ""
    return out


def ground_truth(users: int, *, collect_ids: bool = True, max_dup_checks: int = 5000) -> Truth:
    from sandbox.braze_users import DUPLICATE, KEPT, MISSING_ID, expected_rows, user

    s = spec(users)
    kept = missing = dups = 0
    ids: set[str] | None = set() if collect_ids else None
    pairs: dict[str, tuple[int, int]] = {}  # duplicated id -> (first index, first duplicate index)
    for r in expected_rows(s, FIELDS, users=False):
        if r.status == KEPT:
            kept += 1
            if ids is not None:
                ids.add(r.external_id)
        elif r.status == DUPLICATE:
            dups += 1
            if r.external_id not in pairs and len(pairs) < max_dup_checks:
                pairs[r.external_id] = (r.first_index, r.index)
        elif r.status == MISSING_ID:
            missing += 1
        else:
            raise AssertionError(f"unexpected status {r.status} at {r.index}")
    fieldset = set(FIELDS)
    checks = {}
    for ext_id, (first, dup) in pairs.items():
        a = {k: v for k, v in user(s, first).items() if k in fieldset}
        b = {k: v for k, v in user(s, dup).items() if k in fieldset}
        checks[ext_id] = (_cells(a), _cells(b))
    return Truth(users, kept, missing, dups, ids, checks)


@dataclass
class CsvCheck:
    rows: int
    ids_match: bool | None  # None: not checked
    duplicate_ids_once: bool  # no id appears twice in the output
    first_kept: int  # duplicated ids whose row holds the first occurrence's data
    later_kept: int  # ... whose row holds a later duplicate's data (wrong)
    other: int  # ... neither (missing from the output, or different data)
    examples: list[str]

    @property
    def ok(self) -> bool:
        return self.ids_match is not False and self.duplicate_ids_once and not self.later_kept and not self.other

    def describe(self, truth: Truth) -> str:
        ids = {None: "not checked", True: "same as the ground truth's", False: "DIFFERENT"}[self.ids_match]
        return (f"{self.rows:,} rows (expected {truth.kept:,}), id set {ids}, each id once: "
                f"{self.duplicate_ids_once}; of {len(truth.dup_checks):,} duplicated ids, first occurrence kept "
                f"{self.first_kept:,}, a later one {self.later_kept:,}, neither {self.other:,}"
                + (f" (e.g. {'; '.join(self.examples[:2])})" if self.examples else ""))


def check_csv(path: Path, truth: Truth) -> CsvCheck:
    """Compare a shaped CSV with the ground truth: row count, id set, first occurrence kept."""
    import csv
    import hashlib

    with open(path, encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader)
        idx = header.index("user_id")
        cols = {c: header.index(c) for c in CHECK_COLUMNS}
        ids: set = set()
        n = 0
        seen = {}
        for row in reader:
            n += 1
            key = row[idx]
            # the id set as 8-byte digests when not compared exactly: bounded memory for 5M rows
            ids.add(key if truth.kept_ids is not None else hashlib.blake2b(key.encode(), digest_size=8).digest())
            if key in truth.dup_checks:
                seen.setdefault(key, []).append({c: row[i] for c, i in cols.items()})
    first = later = other = 0
    examples = []
    for key, (want_first, want_dup) in truth.dup_checks.items():
        got = seen.get(key, [])
        if len(got) == 1 and all(got[0][c] == v for c, v in want_first.items()):
            first += 1
        elif len(got) == 1 and all(got[0][c] == v for c, v in want_dup.items()):
            later += 1
            examples.append(f"{key}: kept a later duplicate")
        else:
            other += 1
            examples.append(f"{key}: {len(got)} rows, {got[:1]} vs first {want_first}")
    ids_match = None if truth.kept_ids is None else ids == truth.kept_ids
    return CsvCheck(n, ids_match, len(ids) == n, first, later, other, examples)


def compare_cells(ours: Path, theirs: Path, sample_every: int = 20) -> dict[str, int]:
    """For every `sample_every`-th id of `ours`, count per column the cells that differ in `theirs`
    (the same id's row). Not a pass/fail check: how close the two outputs' formatting is."""
    import csv

    def rows(path: Path, wanted: set | None):
        with open(path, encoding="utf-8", newline="") as fh:
            reader = csv.reader(fh)
            header = next(reader)
            for i, row in enumerate(reader):
                key = row[0]
                if (wanted is None and i % sample_every == 0) or (wanted is not None and key in wanted):
                    yield key, dict(zip(header, row, strict=True))

    mine = dict(rows(ours, None))
    diffs: dict[str, int] = {"(rows compared)": len(mine)}
    examples: dict[str, str] = {}
    for key, row in rows(theirs, set(mine)):
        for col, v in row.items():
            if mine[key].get(col) != v:
                diffs[col] = diffs.get(col, 0) + 1
                examples.setdefault(col, f"{mine[key].get(col)!r:.80} vs {v!r:.80}")
    diffs["_examples"] = examples  # type: ignore[assignment]
    return diffs
