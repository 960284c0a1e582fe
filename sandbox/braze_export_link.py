"""The by-link side of the Braze sandbox's exports: one export's state, and what its link answers.

See :mod:`sandbox.braze_exports` for the contract and :mod:`sandbox.s3_link` for S3's answers.
Imports nothing from ``include/`` or ``plugins/``.
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import formatdate
from pathlib import Path

from sandbox.braze_export_files import chunks, write_archive
from sandbox.braze_faults import HTML_PAGE
from sandbox.braze_http import Response
from sandbox.braze_users import SegmentSpec, export_lines
from sandbox.s3_link import UNSATISFIABLE, parse_range, s3_error, s3_headers, utc_iso

__all__ = ["OUTPUT_FORMATS", "ExportJob", "LinkDownloads"]

OUTPUT_FORMATS = {"zip": ("zip", "application/zip"), "gzip": ("gz", "application/gzip")}


@dataclass
class ExportJob:
    spec: SegmentSpec
    fields: list[str]
    output_format: str  # "zip" | "gzip"
    object_prefix: str
    ready_at: float  # time.monotonic(): link downloadable / bucket writing starts
    callback: str | None
    token: str | None = None  # by link
    url: str | None = None
    expires_at: float = math.inf  # time.monotonic()
    expires_wall: datetime | None = None
    path: Path | None = None
    etag: str = ""
    day: str | None = None  # YYYY-MM-DD the export finished
    keys: list[str] = field(default_factory=list)  # bucket objects written so far
    files: int = 0  # ceil(size / users_per_file)
    error: str | None = None
    callback_status: int | str | None = None
    written: threading.Event = field(default_factory=threading.Event)  # the data is complete
    done: threading.Event = field(default_factory=threading.Event)  # ... and the callback sent
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def ext(self) -> str:
        return OUTPUT_FORMATS[self.output_format][0]


class LinkDownloads:
    """Mixed into :class:`sandbox.braze_exports.SegmentExports`: the pre-signed link's answers."""

    # ------------------------------------------------------------------ the link
    def download(self, method: str, token: str, ext: str, query: str, headers) -> Response:
        """``/exports/<token>.<ext>?X-Amz-...``: what the pre-signed S3 GET link answers."""
        path = f"/exports/{token}.{ext}"
        refused = self.signer.refuse(method, path, query)
        if refused is not None:
            return refused
        with self._lock:
            export = self._exports.get(token)
        key = f"{export.object_prefix if export else token}.{ext}"
        now = time.monotonic()
        if export is None or export.ext != ext or now < export.ready_at and now < export.expires_at:
            if self.not_ready_status == 403:
                return s3_error(403, "AccessDenied", "Access Denied")
            return s3_error(404, "NoSuchKey", "The specified key does not exist.", Key=key)
        if now >= export.expires_at:
            return s3_error(
                403,
                "AccessDenied",
                "Request has expired",
                X_Amz_Expires=str(max(1, math.ceil(self.link_ttl))),
                Expires=utc_iso(export.expires_wall),
                ServerTime=utc_iso(datetime.now(UTC)),
            )
        self._materialise(export)
        size = export.path.stat().st_size
        ctype = OUTPUT_FORMATS[export.output_format][1]
        common = {
            **s3_headers(),
            "Accept-Ranges": "bytes",
            "ETag": export.etag,
            "Last-Modified": formatdate(export.path.stat().st_mtime, usegmt=True),
        }
        wanted = parse_range(headers.get("Range"), size)
        if wanted == UNSATISFIABLE:
            resp = s3_error(
                416,
                "InvalidRange",
                "The requested range is not satisfiable",
                RangeRequested=headers.get("Range", ""),
                ActualObjectSize=str(size),
            )
            resp.headers["Content-Range"] = f"bytes */{size}"
            return resp
        if wanted is not None:
            first, last = wanted
            return Response(
                206,
                headers={**common, "Content-Range": f"bytes {first}-{last}/{size}"},
                file=export.path,
                file_range=(first, last),
                content_type=ctype,
            )
        with self._lock:
            fault = self.download_faults.draw(export.object_prefix)
        if fault == "empty":
            return Response(200, b"", common, content_type=ctype)
        if fault == "html":
            return Response(200, HTML_PAGE, content_type="text/html; charset=utf-8")
        return Response(
            200,
            headers=common,
            file=export.path,
            content_type=ctype,
            truncate_at=size // 2 if fault == "truncated" else None,
        )

    def _materialise(self, export: ExportJob) -> None:
        """Write the export file once (first request after readiness); others wait on the lock."""
        with export.lock:
            if export.path.exists():
                return
            if export.day is None:
                export.day = self.finished_day().isoformat()
            tmp = export.path.with_name(export.path.name + ".part")
            files = chunks(export_lines(export.spec, export.fields), self.users_per_file)
            member_dir = f"segment-export/{export.spec.segment_id}/{export.day}/{export.object_prefix}"
            write_archive(tmp, files, export.output_format, export.object_prefix, member_dir)
            with open(tmp, "rb") as f:
                export.etag = f'"{hashlib.file_digest(f, "md5").hexdigest()}"'
            tmp.replace(export.path)
            with self._lock:
                self.files_generated += 1
