"""Read Braze export files as a stream of records, whatever their packaging.

Braze API exports are newline-delimited JSON, one user per line, usually ~5,000 users per
file, delivered as a zip of files or as gzip (docs/vendor-contracts.md#braze-segment-exports);
dashboard exports are a CSV, often zipped. Members are read in name order so the same file
always yields the same record order. Nothing here holds more than one record in memory.
"""

from __future__ import annotations

import csv
import gzip
import io
import struct
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path

from include.common.errors import PermanentError

try:  # ISA-L inflates about twice as fast as zlib (bench/); the stdlib is the fallback
    from isal import igzip as _gzip
    from isal import isal_zlib as _zlib
except ImportError:  # pragma: no cover - isal is pinned in requirements.txt
    _gzip, _zlib = gzip, zlib

_ZIP_MAGIC = b"PK\x03\x04"
_EMPTY_ZIP_MAGIC = b"PK\x05\x06"
_GZIP_MAGIC = b"\x1f\x8b"


# Records are plain tuples `(source, line_no, payload)`: millions of them pass through, and a
# tuple costs a fraction of a dataclass instance. payload: bytes (an NDJSON line, unparsed so a
# malformed one can be quarantined as it was), dict (a CSV row), or str (the raw text of a CSV
# row whose field count does not match the header).
Record = tuple[str, int, "bytes | dict[str, str] | str"]


def _sniff(path: Path) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(4)


def _is_csv_name(name: str) -> bool:
    return name.lower().removesuffix(".gz").endswith(".csv")


def member_groups(path: Path, parts: int) -> list[list[str] | None]:
    """Split a zip's data files into up to `parts` contiguous runs (export order kept).

    Anything that is not a zip of several files is one group, `[None]` (= the whole file).
    """
    if parts < 2 or _sniff(path) != _ZIP_MAGIC:
        return [None]
    with zipfile.ZipFile(path) as zf:
        names = _data_members(zf)
    if len(names) < 2:
        return [None]
    parts = min(parts, len(names))
    size, extra = divmod(len(names), parts)
    groups, start = [], 0
    for i in range(parts):
        end = start + size + (1 if i < extra else 0)
        groups.append(names[start:end])
        start = end
    return groups


def _data_members(zf: zipfile.ZipFile) -> list[str]:
    return sorted(i.filename for i in zf.infolist() if not i.is_dir() and not _is_junk(i.filename))


def _member_streams(path: Path, members: list[str] | None = None) -> Iterator[tuple[str, io.BufferedIOBase]]:
    """(name, binary stream) for each data file inside `path`, decompressing zip/gzip."""
    magic = _sniff(path)
    if magic in (_ZIP_MAGIC, _EMPTY_ZIP_MAGIC):
        with zipfile.ZipFile(path) as zf:
            names = _data_members(zf) if members is None else members
            for name in names:
                with _open_member(zf, path, name) as member:
                    if name.lower().endswith(".gz"):
                        with _gzip.GzipFile(fileobj=member) as gz:
                            yield f"{path.name}!{name}", io.BufferedReader(gz, 1 << 20)
                    else:
                        yield f"{path.name}!{name}", io.BufferedReader(member, 1 << 20)
    elif magic[:2] == _GZIP_MAGIC:
        with _gzip.open(path, "rb") as gz:  # handles multi-member gzip (one member per Braze file)
            yield path.name, io.BufferedReader(gz, 1 << 20)
    else:
        with open(path, "rb", buffering=1 << 20) as fh:
            yield path.name, fh


def _open_member(zf: zipfile.ZipFile, path: Path, name: str):
    """A zip member's bytes; deflated members inflate with ISA-L when available (~2x zlib here)."""
    info = zf.getinfo(name)
    if _zlib is zlib or info.compress_type != zipfile.ZIP_DEFLATED or info.flag_bits & 0x1:
        return zf.open(info)  # stdlib path: stored/encrypted/other methods, or no isal installed
    return _InflatingReader(path, info)


class _InflatingReader(io.RawIOBase):
    """Streams one deflated zip member through a fast inflater, checking size and CRC-32 at the end."""

    def __init__(self, path: Path, info: zipfile.ZipInfo):
        self._fh = open(path, "rb")  # noqa: SIM115 - closed in close()
        self._fh.seek(info.header_offset)
        local = self._fh.read(30)
        if local[:4] != b"PK\x03\x04":
            raise PermanentError(f"{path.name}!{info.filename}: damaged zip (bad local header); re-export the file")
        name_len, extra_len = struct.unpack("<HH", local[26:30])
        self._fh.seek(info.header_offset + 30 + name_len + extra_len)
        self._left = info.compress_size
        self._info, self._where = info, f"{path.name}!{info.filename}"
        self._inflater = _zlib.decompressobj(-15)
        self._out, self._pos, self._crc, self._size, self._done = b"", 0, 0, 0, False

    def readable(self) -> bool:
        return True

    def _refill(self) -> None:
        if self._left:
            chunk = self._fh.read(min(1 << 20, self._left))
            if not chunk:
                raise PermanentError(f"{self._where}: the zip file is truncated; re-download it")
            self._left -= len(chunk)
            try:
                self._out = self._inflater.decompress(chunk)
            except _zlib.error as exc:
                raise PermanentError(f"{self._where}: corrupt compressed data ({exc}); re-export the file") from None
        else:
            self._out, self._done = self._inflater.flush(), True
        self._pos = 0
        self._crc = _zlib.crc32(self._out, self._crc)
        self._size += len(self._out)
        if self._done and (self._size != self._info.file_size or self._crc != self._info.CRC):
            raise PermanentError(f"{self._where}: size or CRC-32 does not match the zip directory; the file is corrupt")

    def readinto(self, buffer) -> int:
        while self._pos >= len(self._out):
            if self._done:
                return 0
            self._refill()
        n = min(len(buffer), len(self._out) - self._pos)
        buffer[:n] = self._out[self._pos:self._pos + n]
        self._pos += n
        return n

    def close(self) -> None:
        self._fh.close()
        super().close()


def _is_junk(name: str) -> bool:
    """macOS zip tools add __MACOSX/ and .DS_Store entries that are not data."""
    base = name.rsplit("/", 1)[-1]
    return name.startswith("__MACOSX/") or base.startswith(".")


def detect_kind(path: Path) -> str:
    """'csv' when the file (or the zip's members) is a dashboard CSV, else 'ndjson'."""
    if _sniff(path) in (_ZIP_MAGIC, _EMPTY_ZIP_MAGIC):
        with zipfile.ZipFile(path) as zf:
            names = [n for n in zf.namelist() if not n.endswith("/") and not _is_junk(n)]
        return "csv" if names and all(_is_csv_name(n) for n in names) else "ndjson"
    return "csv" if _is_csv_name(path.name.removesuffix(".zip")) else "ndjson"


def iter_records(path: Path, kind: str, members: list[str] | None = None) -> Iterator[Record]:
    """The records of `path` (or of the given zip members), NDJSON or CSV per `kind`."""
    return (iter_csv_records if kind == "csv" else iter_json_lines)(path, members)


def iter_json_lines(path: Path, members: list[str] | None = None) -> Iterator[Record]:
    """Every non-blank line of every NDJSON file inside `path`."""
    for source, stream in _member_streams(path, members):
        for line_no, line in enumerate(stream, 1):
            if len(line) > 2 or line.strip():
                yield source, line_no, line


def iter_csv_records(path: Path, members: list[str] | None = None) -> Iterator[Record]:
    """Rows of the dashboard CSV(s) inside `path`, as dicts keyed by the header."""
    for source, stream in _member_streams(path, members):
        text = io.TextIOWrapper(stream, encoding="utf-8-sig", newline="")
        reader = csv.reader(text)
        try:
            header = next(reader)
        except StopIteration:
            continue
        except UnicodeDecodeError as exc:
            raise PermanentError(f"{source}: not UTF-8 text ({exc}); re-export the CSV as UTF-8") from None
        width = len(header)
        try:
            for row in reader:
                if not row:
                    continue
                if len(row) != width:
                    yield source, reader.line_num, ",".join(row)
                else:
                    yield source, reader.line_num, dict(zip(header, row, strict=True))
        except UnicodeDecodeError as exc:
            raise PermanentError(f"{source} near line {reader.line_num}: not UTF-8 ({exc})") from None
