"""Looking for literal secret values everywhere a run leaves text: captured output, log records,
files (also inside gzip/zip/Parquet/PGP), and every row of every table of the metadata DB.

A *finding* is ``(where, secret_name)``; tests assert the list of findings is empty, so a failure
says which secret showed up where (never the secret itself: pytest would print it in CI logs).
"""

from __future__ import annotations

import gzip
import io
import logging
import sqlite3
import traceback
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path

Secrets = dict[str, str]  # name -> literal value
Finding = tuple[str, str]  # (where, name of the secret found there)

_MIN_SECRET = 8  # shorter values would match by chance


def check_secrets(secrets: Secrets) -> Secrets:
    """The secrets, refusing values too short to be searched for meaningfully."""
    short = [name for name, value in secrets.items() if len(value) < _MIN_SECRET]
    assert not short, f"secrets too short to search for: {short}"
    return secrets


def in_text(where: str, text: str | bytes, secrets: Secrets) -> list[Finding]:
    """Findings of the literal values in one text (str or bytes, searched as UTF-8 and Latin-1)."""
    if isinstance(text, bytes):
        hay_b = text
        hay_s = text.decode("utf-8", "replace")
    else:
        hay_b = text.encode("utf-8", "surrogateescape")
        hay_s = text
    found = []
    for name, value in secrets.items():
        if value in hay_s or value.encode("utf-8") in hay_b or value.encode("latin-1", "ignore") in hay_b:
            found.append((where, name))
    return found


def decoded_views(data: bytes, *, pgp_decrypt=None) -> Iterator[tuple[str, bytes]]:
    """The bytes as stored, plus what they hold when they are gzip, zip, Parquet, zlib or PGP data."""
    yield "", data
    if data[:2] == b"\x1f\x8b":
        try:
            yield " (gunzipped)", gzip.decompress(data)
        except (OSError, EOFError):
            pass
    if data[:2] == b"PK":
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as zf:
                for name in zf.namelist():
                    yield f" (zip member {name})", name.encode() + b"\n" + zf.read(name)
        except zipfile.BadZipFile:
            pass
    if data[:4] == b"PAR1":
        import pyarrow.parquet as pq

        table = pq.read_table(io.BytesIO(data))
        yield " (parquet rows)", repr(table.to_pylist()).encode() + repr(table.schema).encode()
    if data[:1] in (b"x",):
        try:
            yield " (zlib)", zlib.decompress(data)
        except zlib.error:
            pass
    if pgp_decrypt is not None and data and (data[:5] == b"-----" or data[0] & 0x80):
        plain = pgp_decrypt(data)
        if plain is not None:
            for label, view in decoded_views(plain):
                yield f" (pgp-decrypted){label}", view


def in_tree(root: Path, secrets: Secrets, *, pgp_decrypt=None) -> tuple[list[Finding], int]:
    """Findings in every file name and file content under `root` (not following symlinks); the
    number of files read (a test asserts it read something)."""
    found: list[Finding] = []
    files = 0
    root = Path(root)
    if not root.exists():
        return found, files
    for path in sorted(root.rglob("*")):
        # (the name itself is not repeated in the finding: it would print the secret)
        found += in_text(f"name of an entry in {path.parent}", str(path.relative_to(root)), secrets)
        if path.is_symlink() or not path.is_file():
            continue
        files += 1
        data = path.read_bytes()
        for label, view in decoded_views(data, pgp_decrypt=pgp_decrypt):
            found += in_text(f"content of {path}{label}", view, secrets)
    return found, files


def in_database(db: Path, secrets: Secrets) -> tuple[list[Finding], dict[str, int]]:
    """Findings in every value of every row of every table of a SQLite DB (blobs also decompressed);
    the row count per table."""
    found: list[Finding] = []
    counts: dict[str, int] = {}
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            rows = conn.execute(f'SELECT * FROM "{table}"').fetchall()
            counts[table] = len(rows)
            for i, row in enumerate(rows):
                for value in row:
                    if value is None:
                        continue
                    where = f"DB table {table} row {i}"
                    if isinstance(value, bytes):
                        for label, view in decoded_views(value):
                            found += in_text(where + label, view, secrets)
                    else:
                        found += in_text(where, str(value), secrets)
    return found, counts


def exception_text(exc: BaseException) -> str:
    """An exception as a person (or a log) would see it: the full traceback with every cause and context."""
    return "".join(traceback.format_exception(exc))


class RecordingHandler(logging.Handler):
    """Keeps every record at or above its level, formatted with its traceback (what a log file holds)."""

    def __init__(self, level: int = logging.INFO) -> None:
        super().__init__(level)
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(self.format(record))
        except Exception:  # noqa: BLE001 - a record that cannot be formatted is kept raw
            self.lines.append(f"{record.name} {record.msg!r} {record.args!r}")

    @property
    def text(self) -> str:
        return "\n".join(self.lines)
