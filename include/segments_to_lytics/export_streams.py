"""Open the data files of a Braze export as decompressed byte streams, in export order, with bounds.

`member_streams` yields `(source, stream)` for each data file of an export (the members of a
zip, a gzip file, or a plain file); `export_files` turns the streams into records. Here live
the parts that guard against damaged and hostile files:

- **Order.** Members are listed in export order, `export_order`: names sorted with digit runs
  compared as numbers, so `x-2.json` comes before `x-10.json`.
- **Inflate ratio.** A zip member, a `.gz` inside a zip or a gzip file may inflate to at most
  `max_inflate_ratio` (default 200) times its compressed size (never less than 1 MiB, so tiny
  files are not flagged). Zip members are checked against their declared sizes before anything
  is read, and every stream counts its output as it goes: more is an `InflateRatioError`.
  Decompression is incremental, so memory stays bounded whatever the ratio.
- **Errors.** Nothing raw escapes: a truncated gzip (`EOFError`), a zip that is not one or has a
  bad CRC (`BadZipFile`), corrupt deflate data, a zip member compressed with a method Python
  cannot read (`NotImplementedError`) or encrypted each become an `ExportFileError` that names
  the file and member and says what to do.

Damaged files are *permanent* failures. The reader cannot tell a file truncated in transit from
one that is damaged at the source, and a retry would read the same bytes again. Truncation in
transit is the downloader's to catch (compare the bytes received with Content-Length or the
object size and raise `TransientError` there); a file that reaches the reader damaged must be
re-exported (API source) or dropped again (drop source) before the task is cleared.
"""

from __future__ import annotations

import gzip
import io
import lzma
import math
import re
import struct
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path

from include.common.errors import PermanentError

try:  # ISA-L inflates about twice as fast as zlib (bench/); the stdlib is the fallback
    from isal import igzip as _gzip
    from isal import isal_zlib as _zlib
    from isal.isal_zlib import error as _IsalError
except ImportError:  # pragma: no cover - isal is pinned in requirements.txt
    _gzip, _zlib, _IsalError = gzip, zlib, zlib.error

ZIP_MAGIC = b"PK\x03\x04"
EMPTY_ZIP_MAGIC = b"PK\x05\x06"
GZIP_MAGIC = b"\x1f\x8b"
DEFAULT_MAX_INFLATE_RATIO = 200
_RATIO_FLOOR = 1 << 20  # output allowed whatever the ratio: a few repeated lines compress very well
_CHUNK = 1 << 20  # read/buffer size of every stream
_IN_CHUNK = 256 << 10  # compressed bytes handed to the inflater at a time
_MAX_OUT = 8 << 20  # most bytes one inflate call may produce
_CODEC_ERRORS = (EOFError, zipfile.BadZipFile, zlib.error, _IsalError, lzma.LZMAError, OSError)
_METHODS = {9: "Deflate64", 12: "bzip2", 14: "LZMA", 93: "Zstandard", 95: "XZ", 98: "PPMd",
            99: "AES encryption"}
_AGAIN = ("request a new export (API source) or drop a fresh copy of the file (drop source), "
          "then clear the task; a retry would read the same bytes")


class ExportFileError(PermanentError):
    """The export file cannot be read as delivered; a retry reads the same bytes."""


class DamagedExportError(ExportFileError):
    """The file's bytes are broken: truncated, corrupt compressed data, CRC mismatch."""


class ExportFormatError(ExportFileError):
    """The bytes are intact but not an export we can read (method, encryption, content, header)."""


class InflateRatioError(ExportFileError):
    """A member inflates far more than any real export: a decompression bomb, or damage."""


_DIGITS = re.compile(r"(\d+)")


def _natural_key(name: str) -> tuple[list, str]:
    parts: list = _DIGITS.split(name)  # str at even indexes, digit runs at odd ones
    parts[1::2] = [int(p) for p in parts[1::2]]
    return parts, name


def export_order(names: Iterable[str]) -> list[str]:
    """`names` in export order: digit runs compare as numbers (`x-2.json` < `x-10.json`).

    Works for zip members (`<prefix>-<N>.json`) and bucket keys (`…-<N>.zip`, `…-<N>.gz`) alike;
    names equal as numbers (`x-01`, `x-1`) fall back to string order, so the order is total.
    """
    return sorted(names, key=_natural_key)


def sniff(path: Path) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(4)


def is_zip(magic: bytes) -> bool:
    return magic in (ZIP_MAGIC, EMPTY_ZIP_MAGIC)


def is_junk(name: str) -> bool:
    """macOS zip tools add __MACOSX/ and .DS_Store entries that are not data."""
    base = name.rsplit("/", 1)[-1]
    return name.startswith("__MACOSX/") or base.startswith(".")


def open_zip(path: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except _CODEC_ERRORS as exc:
        if isinstance(exc, OSError) and exc.errno is not None:
            raise  # a real I/O error (disk), not damaged data
        raise DamagedExportError(
            f"{path.name}: the file is damaged, not a readable zip ({exc}): truncated or corrupt; {_AGAIN}"
        ) from None


def data_members(zf: zipfile.ZipFile) -> list[str]:
    """The data files of a zip, in export order (directories and macOS junk left out)."""
    return export_order(i.filename for i in zf.infolist() if not i.is_dir() and not is_junk(i.filename))


Streams = Iterator[tuple[str, io.BufferedReader]]


def member_streams(path: Path, members: list[str] | None = None,
                   max_inflate_ratio: float | None = DEFAULT_MAX_INFLATE_RATIO) -> Streams:
    """`(source, binary stream)` of each data file in `path` (or of the given zip members), in export order.

    `source` names the file (`export.zip!prefix-3.json` for a member). `max_inflate_ratio=None`
    lifts the ratio cap. An empty zip (no entries at all, as for an empty segment) yields nothing.
    """
    ratio = math.inf if max_inflate_ratio is None else max_inflate_ratio
    if path.stat().st_size == 0:  # even an empty segment exports a valid zip/gzip, a dashboard CSV its header
        raise DamagedExportError(f"{path.name}: the file is empty (0 bytes), which no Braze export is: it was cut "
                                 f"off or taken before it was written; {_AGAIN}")
    magic = sniff(path)
    if is_zip(magic):
        yield from _zip_streams(path, members, ratio)
    elif magic[:2] == GZIP_MAGIC:
        with _gzip.open(path, "rb") as gz:  # handles multi-member gzip (one member per Braze file)
            yield path.name, _buffered(gz, path.name, path.stat().st_size, ratio, "gzip stream")
    else:
        with open(path, "rb", buffering=_CHUNK) as fh:
            yield path.name, fh


def _zip_streams(path: Path, members: list[str] | None, ratio: float) -> Streams:
    with open_zip(path) as zf:
        names = data_members(zf) if members is None else export_order(members)
        entries = zf.infolist()
        if not names and entries:
            listed = ", ".join(repr(i.filename[:80]) for i in entries[:5])
            listed += ", …" if len(entries) > 5 else ""
            raise ExportFormatError(f"{path.name}: the zip holds no data files, only {listed}: it is not a "
                                    f"Braze export; check the file, or {_AGAIN}")
        infos = [zf.getinfo(n) for n in names]
        for info in infos:  # declared sizes first: a bomb is refused before anything is inflated
            if info.file_size > _allowed(info.compress_size, ratio):
                raise _ratio_error(f"{path.name}!{info.filename}", info.file_size, info.compress_size, ratio,
                                   "would inflate to")
        for info in infos:
            where = f"{path.name}!{info.filename}"
            with _open_member(zf, path, info, where) as member:
                if not info.filename.lower().endswith(".gz"):
                    yield where, _buffered(member, where, info.compress_size, ratio, "zip member")
                    continue
                zipped = _Capped(member, where, info.compress_size, ratio, "zip member")
                with _gzip.GzipFile(fileobj=zipped) as gz:  # a .gz in a zip: capped against the zip's bytes
                    yield where, _buffered(gz, where, info.compress_size, ratio, "gzip stream")


def _buffered(stream, where: str, compressed: int, ratio: float, what: str) -> io.BufferedReader:
    return io.BufferedReader(_Capped(stream, where, compressed, ratio, what), _CHUNK)


def _allowed(compressed: int, ratio: float) -> float:
    return max(compressed * ratio, _RATIO_FLOOR)


def _ratio_error(where: str, size: int, compressed: int, ratio: float, verb: str) -> InflateRatioError:
    return InflateRatioError(
        f"{where}: {verb} {size:,} bytes from {compressed:,} compressed bytes, more than max_inflate_ratio="
        f"{ratio:g} times its compressed size: this looks like a decompression bomb or a damaged export. "
        f"Re-export the file; if the data is genuine, raise the limit (segment setting `max_inflate_ratio`, "
        f"passed to the reader as max_inflate_ratio)"
    )


def _open_member(zf: zipfile.ZipFile, path: Path, info: zipfile.ZipInfo, where: str):
    """A zip member's bytes; deflated members inflate with ISA-L when available (~2x zlib here)."""
    if info.flag_bits & 0x1:
        raise ExportFormatError(f"{where}: the member is encrypted: drop an unencrypted zip (PGP-encrypted "
                                f"files are decrypted by the pipeline itself), or re-export the segment")
    if _zlib is not zlib and info.compress_type == zipfile.ZIP_DEFLATED:
        return _InflatingReader(path, info, where)
    try:
        return zf.open(info)
    except NotImplementedError:
        method = _METHODS.get(info.compress_type, "unknown")
        raise ExportFormatError(
            f"{where}: the member is compressed with zip method {info.compress_type} ({method}), which "
            f"cannot be read here: re-zip the file with standard Deflate (e.g. `zip -r`), or drop it unzipped"
        ) from None
    except _CODEC_ERRORS as exc:
        if isinstance(exc, OSError) and exc.errno is not None:
            raise
        raise DamagedExportError(f"{where}: the file is damaged ({exc}): {_AGAIN}") from None


class _Capped(io.RawIOBase):
    """A decompressed stream that counts its output against the ratio cap and types codec errors."""

    def __init__(self, inner, where: str, compressed: int, ratio: float, what: str):
        self._inner, self._readinto = inner, inner.readinto
        self._where, self._compressed, self._ratio, self._what = where, compressed, ratio, what
        self._limit = _allowed(compressed, ratio)
        self._out = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        try:
            n = self._readinto(buffer)
        except _CODEC_ERRORS as exc:
            if isinstance(exc, OSError) and exc.errno is not None:
                raise
            raise self._damaged(exc) from None
        self._out += n
        if self._out > self._limit:
            raise _ratio_error(self._where, self._out, self._compressed, self._ratio, "inflated past")
        return n

    def _damaged(self, exc: Exception) -> DamagedExportError:
        if isinstance(exc, EOFError):
            what = f"truncated {self._what}"
        elif "CRC" in str(exc):
            what = f"CRC-32 mismatch: {exc}"
        else:
            what = f"corrupt compressed data: {exc}"
        return DamagedExportError(f"{self._where}: the file is damaged ({what}, after {self._out:,} "
                                  f"decompressed bytes): {_AGAIN}")


class _InflatingReader(io.RawIOBase):
    """Streams one deflated zip member through ISA-L, checking size and CRC-32 at the end.

    Each inflate call produces at most 8 MiB, whatever the compression ratio.
    """

    def __init__(self, path: Path, info: zipfile.ZipInfo, where: str):
        self._fh = open(path, "rb")  # noqa: SIM115 - closed in close()
        self._fh.seek(info.header_offset)
        local = self._fh.read(30)
        if len(local) < 30 or local[:4] != ZIP_MAGIC:
            self._fh.close()
            raise DamagedExportError(f"{where}: the file is damaged (bad local zip header): {_AGAIN}")
        name_len, extra_len = struct.unpack("<HH", local[26:30])
        self._fh.seek(info.header_offset + 30 + name_len + extra_len)
        self._left = info.compress_size
        self._info, self._where = info, where
        self._inflater = _zlib.decompressobj(-15)
        self._out, self._pos, self._crc, self._size, self._done = b"", 0, 0, 0, False

    def readable(self) -> bool:
        return True

    def _refill(self) -> None:
        data = self._inflater.unconsumed_tail
        if not data and self._left:
            data = self._fh.read(min(_IN_CHUNK, self._left))
            if not data:
                raise DamagedExportError(f"{self._where}: the file is damaged (the zip is truncated): "
                                         f"{_AGAIN}")
            self._left -= len(data)
        if data:
            try:
                self._out = self._inflater.decompress(data, _MAX_OUT)
            except _IsalError as exc:
                raise DamagedExportError(f"{self._where}: the file is damaged (corrupt compressed data: "
                                         f"{exc}, after {self._size:,} decompressed bytes): {_AGAIN}") from None
        else:
            self._out, self._done = self._inflater.flush(), True
        self._pos = 0
        self._crc = _zlib.crc32(self._out, self._crc)
        self._size += len(self._out)
        if self._done and (self._size != self._info.file_size or self._crc != self._info.CRC):
            raise DamagedExportError(
                f"{self._where}: the file is damaged (size or CRC-32 does not match the zip directory: "
                f"{self._size:,} bytes inflated, {self._info.file_size:,} declared): {_AGAIN}"
            )

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
