"""Case table: export files (Braze API NDJSON in a zip or gzip, the dashboard CSV of a drop).

Each case is the bytes of one fetched export file, the segment settings it is read with, and how the
transfer must end. Inputs are small: the bombs are a few hundred KB to 2 MB compressed, refused by the
configured `max_inflate_ratio` long before they could fill a disk.
"""

from __future__ import annotations

import gzip
import io
import os
import struct
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache

from include.common.errors import ConfigError, RejectedRowsError
from include.segments_to_lytics.export_streams import DamagedExportError, ExportFormatError, InflateRatioError

API = {}  # the default segment: source api, NDJSON, columns user_id <- external_id, email <- email
DROP = {"source": "drop", "drop": {"path": "/landing"}, "columns": {"user_id": "user_id", "email": "email"}}

AGAIN = r"request a new export .*drop a fresh copy"  # the advice of every damaged/unreadable export
REJECTED = (r"segment 'vip'", r"were rejected", r"Nothing was delivered", r"quarantine\.csv",
            r"Fix the source data, or raise max_rejected_share")


@dataclass(frozen=True)
class ExportCase:
    id: str
    build: Callable[[], bytes]
    error: type[Exception]
    says: tuple[str, ...]
    name: str = "export.zip"  # the fetched file's name
    seg: dict = field(default_factory=dict)  # segment settings over the default
    quarantined: str | None = None  # RejectedRowsError: the reason the quarantine file must hold


# ---------------------------------------------------------------------------------------------- builders
def line(**fields) -> bytes:
    import orjson

    return orjson.dumps(fields) + b"\n"


GOOD = line(external_id="u1", email="a@example.com") + line(external_id="u2", email="b@example.com")


def zipped(members: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


@cache
def good_zip() -> bytes:
    return zipped({"seg-0.json": GOOD * 500})


def _patch_method(data: bytes, method: int) -> bytes:
    """The zip with its (only) member's compression method changed in both headers."""
    z = bytearray(data)
    struct.pack_into("<H", z, 8, method)
    struct.pack_into("<H", z, z.find(b"PK\x01\x02") + 10, method)
    return bytes(z)


def _encrypted_flag(data: bytes) -> bytes:
    z = bytearray(data)
    struct.pack_into("<H", z, 6, 1)
    struct.pack_into("<H", z, z.find(b"PK\x01\x02") + 8, 1)
    return bytes(z)


def _bad_crc_stored() -> bytes:
    z = bytearray(zipped({"seg-0.json": line(external_id="u1") * 50}, zipfile.ZIP_STORED))
    z[z.find(b'"u1"') + 1] = ord("v")  # one byte of data changed, the CRC left as it was
    return bytes(z)


def _corrupt_deflate() -> bytes:
    z = bytearray(zipped({"seg-0.json": GOOD * 50 + os.urandom(300).hex().encode()}))
    z[z.find(b"PK\x01\x02") - 40] ^= 0xFF  # a byte inside the compressed stream
    return bytes(z)


BOMB_MIB = 32  # what one bomb member inflates to; ~32 KB compressed (deflate's ~1000:1 on repeated lines)


@cache
def _bomb_member() -> tuple[bytes, int, int]:
    """(raw deflate, CRC-32, size) of BOMB_MIB MiB of one repeated NDJSON line: the core of every bomb."""
    chunk = line(external_id="u1", email="x" * 200) * 4000
    c, crc, size, out = zlib.compressobj(9, zlib.DEFLATED, -15), 0, 0, []
    for _ in range((BOMB_MIB << 20) // len(chunk)):
        out.append(c.compress(chunk))
        crc, size = zlib.crc32(chunk, crc), size + len(chunk)
    return b"".join(out) + c.flush(), crc, size


@cache
def gzip_bomb() -> bytes:
    """4 gzip members of BOMB_MIB MiB each (a multi-member gzip, as Braze writes): 128 MiB from ~0.5 MB."""
    deflated, crc, size = _bomb_member()
    member = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff" + deflated + struct.pack("<II", crc, size & 0xFFFFFFFF)
    return member * 4


@cache
def zip_bomb_declared() -> bytes:
    """A zip whose directory honestly declares a member ~1000x its compressed size: refused before inflating."""
    return _zip_with_raw_member(declared=None)


@cache
def zip_bomb_lying() -> bytes:
    """The same member, but both headers claim it is only 1,000 bytes: caught while inflating."""
    return _zip_with_raw_member(declared=1000)


def _zip_with_raw_member(declared: int | None) -> bytes:
    deflated, crc, size = _bomb_member()
    size_field = size if declared is None else declared
    name = b"seg-0.json"
    local = struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", 20, 0, 8, 0, 0x21, crc, len(deflated), size_field, len(name), 0)
    central = struct.pack("<4sHHHHHHIIIHHHHHII", b"PK\x01\x02", 20, 20, 0, 8, 0, 0x21, crc, len(deflated), size_field,
                          len(name), 0, 0, 0, 0, 0, 0)
    cd_offset = len(local) + len(name) + len(deflated)
    end = struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, 1, 1, len(central) + len(name), cd_offset, 0)
    return local + name + deflated + central + name + end


def zip_of_gzip_bomb() -> bytes:
    return zipped({"seg-0.json.gz": gzip_bomb()}, zipfile.ZIP_STORED)


def latin1_ndjson() -> bytes:
    return "".join(f'{{"external_id": "u{i}", "email": "Jos\xe9 {i}"}}\n' for i in range(20)).encode("latin-1")


def utf16_ndjson() -> bytes:
    return "".join(f'{{"external_id": "u{i}"}}\n' for i in range(20)).encode("utf-16")


def csv_bytes(text: str, encoding: str = "utf-8") -> bytes:
    return text.replace("\n", "\r\n").encode(encoding)


# ---------------------------------------------------------------------------------------------- cases
CASES: list[ExportCase] = [
    # --- whole-file damage: the file is refused, nothing is read into the output -----------------
    ExportCase("export-empty-0-bytes", lambda: b"", DamagedExportError,
               (r"export\.zip", r"empty \(0 bytes\)", AGAIN)),
    ExportCase("export-zip-truncated", lambda: good_zip()[: len(good_zip()) // 2], DamagedExportError,
               (r"export\.zip", r"damaged", r"truncated or corrupt", AGAIN)),
    ExportCase("export-zip-cut-in-central-directory", lambda: good_zip()[:-10], DamagedExportError,
               (r"export\.zip", r"not a readable zip", AGAIN)),
    ExportCase("export-zip-bad-crc", _bad_crc_stored, DamagedExportError,
               (r"export\.zip!seg-0\.json", r"CRC-32", AGAIN)),
    ExportCase("export-zip-corrupt-deflate", _corrupt_deflate, DamagedExportError,
               (r"export\.zip!seg-0\.json", r"damaged", AGAIN)),
    ExportCase("export-zip-leading-garbage", lambda: b"\x00\x01junk" * 8 + good_zip(), ExportFormatError,
               (r"export\.zip", r"not NDJSON text", r"binary data", r"re-export the segment")),
    ExportCase("export-zip-encrypted-member", lambda: _encrypted_flag(zipped({"seg-0.json": GOOD})), ExportFormatError,
               (r"export\.zip!seg-0\.json", r"encrypted", r"drop an unencrypted zip")),
    ExportCase("export-zip-deflate64-member", lambda: _patch_method(zipped({"seg-0.json": GOOD}), 9), ExportFormatError,
               (r"export\.zip!seg-0\.json", r"method 9 \(Deflate64\)", r"re-zip the file")),
    ExportCase("export-zip-without-data-files", lambda: zipped({"__MACOSX/._seg-0.json": b"junk", "dir/": b""}),
               ExportFormatError, (r"export\.zip", r"no data files", r"__MACOSX", AGAIN)),
    ExportCase("export-zip-inside-zip", lambda: zipped({"seg-0.json": good_zip()}, zipfile.ZIP_STORED),
               ExportFormatError, (r"export\.zip!seg-0\.json", r"looks like a zip archive", r"re-export")),
    ExportCase("export-zip-bomb-declared-size", zip_bomb_declared, InflateRatioError,
               (r"export\.zip!seg-0\.json", r"would inflate to", r"max_inflate_ratio=200", r"decompression bomb",
                r"Re-export the file", r"raise the limit")),
    ExportCase("export-zip-bomb-lying-header", zip_bomb_lying, InflateRatioError,
               (r"export\.zip!seg-0\.json", r"inflated past", r"max_inflate_ratio=50\b", r"Re-export"),
               seg={"max_inflate_ratio": 50}),
    ExportCase("export-gzip-bomb", gzip_bomb, InflateRatioError,
               (r"export\.json\.gz", r"inflated past", r"max_inflate_ratio=20\b", r"decompression bomb"),
               name="export.json.gz", seg={"max_inflate_ratio": 20}),
    ExportCase("export-zip-gz-member-bomb", zip_of_gzip_bomb, InflateRatioError,
               (r"export\.zip!seg-0\.json\.gz", r"inflated past", r"max_inflate_ratio"), seg={"max_inflate_ratio": 20}),
    ExportCase("export-gzip-truncated", lambda: gzip.compress(GOOD * 2000)[:400], DamagedExportError,
               (r"export\.json\.gz", r"truncated gzip stream", AGAIN), name="export.json.gz"),
    ExportCase("export-gzip-trailing-garbage", lambda: gzip.compress(GOOD) + b"trailing garbage", DamagedExportError,
               (r"export\.json\.gz", r"corrupt compressed data", AGAIN), name="export.json.gz"),
    ExportCase("export-gzip-compressed-twice", lambda: gzip.compress(gzip.compress(GOOD)), ExportFormatError,
               (r"export\.json\.gz", r"compressed twice", r"re-export"), name="export.json.gz"),
    ExportCase("export-ndjson-utf16", utf16_ndjson, ExportFormatError,
               (r"export\.json", r"binary data", r"newline-delimited JSON"), name="export.json"),
    ExportCase("export-ndjson-binary-garbage", lambda: bytes(range(256)) * 16, ExportFormatError,
               (r"export\.json", r"binary data", r"re-export the segment"), name="export.json"),
    # Binary that starts like an OpenPGP message (a public-key session key packet header, 0x85) is taken for
    # PGP (transfer.looks_encrypted): without a decryption key that is a ConfigError naming the missing setting.
    ExportCase("export-binary-looks-like-pgp", lambda: b"\x85\x01\x0c" + bytes(range(256)) * 16, ConfigError,
               (r"segment 'vip'", r"'export\.json'", r"PGP-encrypted", r"pgp\.decrypt_conn_id"), name="export.json"),
    ExportCase("export-ndjson-is-a-pdf", lambda: b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n" + os.urandom(200),
               ExportFormatError, (r"export\.json", r"looks like a PDF", r"check the file"), name="export.json"),
    ExportCase("export-ndjson-is-parquet", lambda: b"PAR1\x15\x04" + os.urandom(300), ExportFormatError,
               (r"export\.json", r"Parquet", r"re-export"), name="export.json"),
    # --- record-level problems: quarantined with a reason; too many -> RejectedRowsError -----------
    ExportCase("export-ndjson-latin1", latin1_ndjson, RejectedRowsError, (*REJECTED, r"invalid JSON"),
               name="export.json", quarantined="not valid UTF-8"),
    ExportCase("export-ndjson-malformed-lines", lambda: GOOD + b'{"external_id": "u3", email}\n{{{\n', RejectedRowsError,
               (*REJECTED, r"invalid JSON: 2"), name="export.json", quarantined="invalid JSON"),
    ExportCase("export-ndjson-truncated-last-line", lambda: GOOD + b'{"external_id": "u3", "em', RejectedRowsError,
               (*REJECTED, r"invalid JSON"), name="export.json", quarantined="invalid JSON"),
    ExportCase("export-ndjson-not-objects", lambda: GOOD + b'[1, 2]\n"u9"\n42\nnull\n', RejectedRowsError,
               (*REJECTED, r"not a JSON object: 4"), name="export.json", quarantined="not a JSON object"),
    ExportCase("export-ndjson-nan-literal", lambda: GOOD + b'{"external_id": "u3", "score": NaN}\n', RejectedRowsError,
               REJECTED, name="export.json", quarantined="invalid JSON"),
    ExportCase("export-ndjson-html-page", lambda: b"<!DOCTYPE html>\n<html><body>Sign in</body></html>\n",
               RejectedRowsError, (*REJECTED, r"invalid JSON"), name="export.json", quarantined="invalid JSON"),
    ExportCase("export-id-missing", lambda: GOOD + line(email="c@example.com"), RejectedRowsError,
               (*REJECTED, r"missing external_id"), name="export.json", quarantined="missing external_id"),
    ExportCase("export-id-empty-string", lambda: GOOD + line(external_id="  "), RejectedRowsError,
               (*REJECTED, r"empty external_id"), name="export.json", quarantined="empty external_id"),
    ExportCase("export-id-float", lambda: GOOD + line(external_id=1.5), RejectedRowsError,
               (*REJECTED, r"external_id is not a string"), name="export.json", quarantined="not a string (float)"),
    ExportCase("export-id-boolean", lambda: GOOD + line(external_id=True), RejectedRowsError,
               (*REJECTED, r"external_id is not a string"), name="export.json", quarantined="not a string (bool)"),
    ExportCase("export-id-list", lambda: GOOD + line(external_id=["u9"]), RejectedRowsError,
               (*REJECTED, r"external_id is not a string"), name="export.json", quarantined="not a string (list)"),
    ExportCase("export-id-object", lambda: GOOD + line(external_id={"id": "u9"}), RejectedRowsError,
               (*REJECTED, r"external_id is not a string"), name="export.json", quarantined="not a string (dict)"),
    ExportCase("export-id-null", lambda: GOOD + b'{"external_id": null}\n', RejectedRowsError,
               (*REJECTED, r"missing external_id"), name="export.json", quarantined="missing external_id"),
    ExportCase("export-huge-field", lambda: GOOD + line(external_id="u3", email="x" * 40_000), RejectedRowsError,
               (*REJECTED, r"record longer than 10,485 bytes|record longer than"), name="export.json",
               seg={"max_record_mib": 0.01}, quarantined="record longer than"),
    # --- the dashboard CSV of a drop --------------------------------------------------------------
    ExportCase("csv-empty-0-bytes", lambda: b"", DamagedExportError, (r"users\.csv", r"empty \(0 bytes\)", AGAIN),
               name="users.csv", seg=DROP),
    ExportCase("csv-missing-column", lambda: csv_bytes("User ID,email\nu1,a@example.com\n"), ExportFormatError,
               (r"users\.csv", r"no column 'user_id'", r"found 'User ID'", r"Fix the segment's `columns` mapping"),
               name="users.csv", seg=DROP),
    ExportCase("csv-renamed-column", lambda: csv_bytes("user_id,e_mail\nu1,a@example.com\n"), ExportFormatError,
               (r"users\.csv", r"no column 'email'", r"header found: \['user_id', 'e_mail'\]", r"re-export the CSV"),
               name="users.csv", seg=DROP),
    ExportCase("csv-blank-header", lambda: csv_bytes("\nu1,a@example.com\n"), ExportFormatError,
               (r"users\.csv", r"header, is empty", r"is this a CSV export"), name="users.csv", seg=DROP),
    ExportCase("csv-latin1", lambda: csv_bytes("user_id,email\nu1,Jos\xe9@example.com\n", "latin-1"), ExportFormatError,
               (r"users\.csv line 2", r"not UTF-8", r"re-export the CSV as UTF-8"), name="users.csv", seg=DROP),
    ExportCase("csv-utf16", lambda: csv_bytes("user_id,email\nu1,a@example.com\n", "utf-16"), ExportFormatError,
               (r"users\.csv line 1", r"not UTF-8", r"re-export the CSV as UTF-8"), name="users.csv", seg=DROP),
    ExportCase("csv-unterminated-quote-truncated", lambda: csv_bytes('user_id,email\nu1,"a@exa\nu2,b@example.com\n'),
               DamagedExportError, (r"users\.csv line 3", r"ends inside a quoted field", r"truncated", AGAIN),
               name="users.csv", seg=DROP),
    ExportCase("csv-zip-truncated", lambda: zipped({"users.csv": csv_bytes("user_id,email\n" + "".join(f"u{i},a{i}\n" for i in range(3000)))})[:3000],
               DamagedExportError, (r"users\.zip", r"damaged", AGAIN), name="users.zip", seg=DROP),
    ExportCase("csv-wrong-field-count", lambda: csv_bytes("user_id,email\nu1,a@example.com\nu2\nu3,c,extra\n"),
               RejectedRowsError, (*REJECTED, r"wrong number of fields for the header: 2"), name="users.csv", seg=DROP,
               quarantined="wrong number of fields"),
    ExportCase("csv-empty-id", lambda: csv_bytes("user_id,email\nu1,a@example.com\n,b@example.com\n"),
               RejectedRowsError, (*REJECTED, r"empty user_id"), name="users.csv", seg=DROP, quarantined="empty user_id"),
    ExportCase("csv-huge-record", lambda: csv_bytes("user_id,email\nu1,a\nu2," + "x" * 40_000 + "\n"),
               RejectedRowsError, (*REJECTED, r"record longer than"), name="users.csv",
               seg={**DROP, "max_record_mib": 0.01}, quarantined="record longer than"),
    ExportCase("csv-header-over-the-limit", lambda: csv_bytes("user_id," + "h" * 40_000 + "\nu1,a\n"),
               ExportFormatError, (r"users\.csv", r"header line is unreadable", r"record longer than",
                                   r"is this a CSV export"), name="users.csv", seg={**DROP, "max_record_mib": 0.01}),
]
