"""The files of a Braze segment export, as the sandbox writes them.

Braze docs, "Export users by segment": newline-delimited JSON, one user per line, usually one file
per ~5,000 users (``users_per_file``; 5,000 by default). File ``N`` (0, 1, 2, ... in export order)
holds users ``N * users_per_file`` onwards and is named ``<object_prefix>-<N>.json``:

* by link, one archive: a zip with one member per file, named
  ``segment-export/<SEGMENT_ID>/<YYYY-MM-DD>/<object_prefix>/<object_prefix>-<N>.json``, or a gzip
  file with one gzip member per file (each member's header names ``<object_prefix>-<N>.json``);
  an empty segment gives a zip without members or one empty gzip member;
* in a bucket, one object per file (see :mod:`sandbox.braze_bucket`): a zip holding the single
  member ``<object_prefix>-<N>.json``, or that file gzipped; an empty segment writes no object.

Files are written with low compression effort (level 1): the sandbox must be quick, not small.
Imports nothing from ``include/`` or ``plugins/``.
"""

from __future__ import annotations

import gzip
import io
import itertools
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path

__all__ = ["CONTENT_TYPES", "USERS_PER_FILE", "chunks", "file_name", "object_body", "write_archive"]

USERS_PER_FILE = 5_000
CONTENT_TYPES = {"zip": "application/zip", "gzip": "application/gzip"}


def chunks(lines: Iterable[bytes], size: int) -> Iterator[bytes]:
    """The export's files' contents: ``size`` lines each (the last may be shorter)."""
    it = iter(lines)
    while chunk := list(itertools.islice(it, size)):
        yield b"".join(chunk)


def file_name(object_prefix: str, n: int) -> str:
    return f"{object_prefix}-{n}.json"


def _gzip(data: bytes, name: str) -> bytes:
    buf = io.BytesIO()
    with gzip.GzipFile(filename=name, mode="wb", fileobj=buf, compresslevel=1, mtime=0) as gz:
        gz.write(data)
    return buf.getvalue()


def write_archive(
    path: Path, files: Iterable[bytes], output_format: str, object_prefix: str, member_dir: str
) -> None:
    """The by-link archive at ``path``: a zip (members under ``member_dir``) or a multi-member gzip."""
    if output_format == "zip":
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
            for n, data in enumerate(files):
                zf.writestr(f"{member_dir}/{file_name(object_prefix, n)}", data)
        return
    with open(path, "wb") as f:
        wrote = False
        for n, data in enumerate(files):
            f.write(_gzip(data, file_name(object_prefix, n)))
            wrote = True
        if not wrote:  # empty segment: one empty member, still a valid gzip stream
            f.write(_gzip(b"", file_name(object_prefix, 0)))


def object_body(data: bytes, object_prefix: str, n: int, output_format: str) -> bytes:
    """Bucket object ``n``: a one-member zip, or the file gzipped."""
    if output_format == "gzip":
        return _gzip(data, file_name(object_prefix, n))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        zf.writestr(file_name(object_prefix, n), data)
    return buf.getvalue()
