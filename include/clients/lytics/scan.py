"""Lytics audiences: look them up, and scan every member's Braze id into one sorted array.

Contract (docs/vendor-contracts.md#lytics-api-and-audience-scans; lytics/go-lytics ``segment.go``, Lytics OpenAPI spec):
auth is the raw ``Authorization: <token>`` header (no ``Bearer``); ``GET /api/segment?table=user``
lists audiences, ``GET /api/segment/{id-or-slug}`` returns one, and
``GET /api/segment/{id}/scan?limit=N&fields=f&start=<token>`` pages through the members
(``limit`` at most 100, ``_next`` is ``""`` on the last page, the ``start`` token must be recent).

A scan survives what a long scan meets: a failed page (429, 5xx, timeout, reset) is asked
again with the *same* ``start`` token, so the scan resumes where it was; only when Lytics says
the token has expired does it start over, a bounded number of times. The ids are gathered in
pyarrow chunks, never as millions of Python strings, so 10M members fit in a few hundred MB
(:mod:`include.clients.lytics.scan_pages`).

A scan must add up before anything may use it (an incomplete scan reads as "these users left
the audience", and the pipeline would remove them from Braze):

* only ``"_next": ""`` ends a scan: a page with no members but a ``_next`` token is skipped
  over, and a run of more than ``max_empty_pages`` of them in a row is an
  :class:`InconsistentScanError` (the scan is not progressing);
* the members read are compared with the ``total`` Lytics reports (taken from the first and the
  last page, as membership may change during a long scan): outside ``[min(totals) - tolerance,
  max(totals) + tolerance]``, tolerance ``max(1% of the total, 10 members)`` by default, the scan
  is an :class:`InconsistentScanError` and no result is returned at all.

Example::

    client = LyticsClient("https://api.lytics.io", token)
    result = client.scan_ids("high_value", "braze_id")
    result.ids  # pyarrow large_string array: unique, ascending
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import orjson
import requests

from include.clients.lytics.scan_pages import (
    IdChunks,
    ScanEffort,
    ScanPass,
    is_expired,
    page_total,
    segment_path,
    usable_id,
)
from include.common.errors import ConfigError, NotFoundError, PermanentError, TransientError
from include.common.http import redact_url, request
from include.common.progress import Progress
from include.common.retry import RetryPolicy, retry_call

if TYPE_CHECKING:  # pyarrow is imported where it is used: hooks/DAGs import this module at parse time
    import pyarrow as pa

log = logging.getLogger(__name__)

MAX_LIMIT = 100  # Lytics rejects larger scan pages (400)
MAX_RESTARTS = 3  # scans started over after an expired start token, before giving up
MAX_EMPTY_PAGES = 25  # pages in a row with no members but a `_next` token, before the scan is declared stuck
TOTAL_TOLERANCE_SHARE = 0.01  # members read may differ from Lytics' `total` by this share of it ...
TOTAL_TOLERANCE_MEMBERS = 10  # ... or by this many members, whichever is larger
_AUTH_HINT = (
    "Lytics rejected the API token (password of connection lytics_default); check that it is "
    "current and that its role may read audiences."
)


@dataclass(frozen=True)
class ScanResult:
    """One complete scan of an audience.

    * ``ids`` -- the members' ids: pyarrow ``large_string``, unique, ascending.
    * ``members_seen`` -- member records read in the final (complete) pass.
    * ``skipped_no_id`` -- of those, members without a usable id (field missing, null, empty
      or not a string/integer): they are left out, not guessed.
    * ``pages``, ``retries``, ``restarts`` -- effort over all passes: pages read, failed
      requests retried, and passes started over because a ``start`` token expired.
    * ``total_first``, ``total_last`` -- the ``total`` Lytics reported on the first and the last
      page of the final pass (None when it reported none); ``members_seen`` was checked against
      them.
    * ``empty_pages`` -- pages of the final pass that held no member but a ``_next`` token.
    """

    ids: pa.Array
    members_seen: int
    skipped_no_id: int
    pages: int
    retries: int
    restarts: int
    total_first: int | None = None
    total_last: int | None = None
    empty_pages: int = 0


class InconsistentScanError(PermanentError):
    """A scan that does not add up: its members disagree with Lytics' own ``total``, or it stopped
    progressing (empty pages without end). Nothing of it is returned, so nothing can use it."""

    def __init__(self, message: str, *, audience: str, members_read: int, total_first: int | None = None,
                 total_last: int | None = None):
        super().__init__(message)
        self.audience = audience
        self.members_read = members_read
        self.total_first = total_first
        self.total_last = total_last


def total_tolerance(total: int, share: float = TOTAL_TOLERANCE_SHARE, members: int = TOTAL_TOLERANCE_MEMBERS) -> int:
    """How far the members read may be from ``total``: ``max(ceil(share * total), members)``."""
    return max(math.ceil(share * max(total, 0)), members)


def total_mismatch(members_read: int, total_first: int | None, total_last: int | None, *,
                   share: float = TOTAL_TOLERANCE_SHARE, members: int = TOTAL_TOLERANCE_MEMBERS) -> str | None:
    """Why ``members_read`` disagrees with the scan's totals beyond the tolerance, or None if it agrees
    (or no total is known). Membership may change during a scan, so anything between the two
    totals (widened by the tolerance) is accepted."""
    totals = [t for t in (total_first, total_last) if t is not None]
    if not totals:
        return None
    low, high = min(totals), max(totals)
    tolerance = total_tolerance(high, share, members)
    if low - tolerance <= members_read <= high + tolerance:
        return None
    reported = f"{low:,}" if low == high else f"{total_first:,} (first page) and {total_last:,} (last page)"
    return (f"read {members_read:,} members but Lytics reported a total of {reported}; at most {tolerance:,} "
            f"difference is accepted (max({share:.0%} of the total, {members} members))")


class _TokenExpired(Exception):
    """Lytics no longer accepts the scan's ``start`` token: the pass must start over."""


class LyticsClient:
    """Lytics' audience endpoints for one account (base URL + API token).

    ``policy`` governs retries of each request (default :class:`RetryPolicy`); ``timeout`` is
    (connect, read) seconds per request; ``session`` lets the caller supply its own
    ``requests.Session`` (the token is set on it as a header, never put in a URL).
    """

    def __init__(self, base_url: str, token: str, *, policy: RetryPolicy | None = None,
                 timeout: tuple[float, float] = (10, 60), session: requests.Session | None = None):
        if not base_url.startswith(("http://", "https://")):
            raise ConfigError(
                f"Lytics API endpoint {base_url!r} is not a URL; set the host of connection "
                f"lytics_default to e.g. https://api.lytics.io"
            )
        if not token or not token.strip():
            raise ConfigError("Lytics API token is empty; put it in the password of connection lytics_default")
        if token.lower().startswith("bearer "):
            raise ConfigError(
                "The Lytics API token in connection lytics_default starts with 'Bearer ': Lytics takes "
                "the raw token in the Authorization header; store the token alone"
            )
        self.base_url = base_url.rstrip("/")
        self.policy = policy or RetryPolicy()
        self.timeout = timeout
        self.session = session or requests.Session()
        # Lytics wants the raw token, no scheme (go-lytics sets `Authorization: <key>`).
        self.session.headers.update({"Authorization": token.strip(), "Accept": "application/json"})

    # ------------------------------------------------------------------ scan
    def scan_ids(self, segment_id: str, id_field: str = "braze_id", *, limit: int = MAX_LIMIT,
                 total_tolerance_share: float = TOTAL_TOLERANCE_SHARE,
                 total_tolerance_members: int = TOTAL_TOLERANCE_MEMBERS,
                 max_empty_pages: int = MAX_EMPTY_PAGES) -> ScanResult:
        """Every member's ``id_field`` value, unique and sorted, with counts of what was read.

        ``limit`` is the page size (1..100; larger pages mean fewer requests). The scan must agree
        with Lytics' ``total`` within ``max(total_tolerance_share * total, total_tolerance_members)``
        and may not return more than ``max_empty_pages`` empty pages in a row; otherwise
        :class:`InconsistentScanError` is raised and no result is returned.
        """
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
            raise ConfigError(f"Lytics scan limit must be an integer from 1 to {MAX_LIMIT}, got {limit!r}")
        if not 0 <= total_tolerance_share < 1 or isinstance(total_tolerance_members, bool) \
                or not isinstance(total_tolerance_members, int) or total_tolerance_members < 0:
            raise ConfigError(f"Lytics scan total tolerance must be a share in [0, 1) and a member count >= 0, got "
                              f"{total_tolerance_share!r} and {total_tolerance_members!r}")
        if isinstance(max_empty_pages, bool) or not isinstance(max_empty_pages, int) or max_empty_pages < 1:
            raise ConfigError(f"max_empty_pages must be a positive integer, got {max_empty_pages!r}")
        if not isinstance(id_field, str) or not id_field.strip():
            raise ConfigError(f"the Lytics id field to scan must be a field name, got {id_field!r}")
        segment_path(segment_id)  # a bad id is a ConfigError now, not after the first request
        effort = ScanEffort()
        began = time.monotonic()
        restarts = 0
        while True:
            try:
                scan = self._scan_pass(segment_id, id_field, limit, max_empty_pages, effort)
                break
            except _TokenExpired:
                if restarts == MAX_RESTARTS:
                    raise TransientError(
                        f"scanning Lytics audience {segment_id!r}: the scan token expired {restarts + 1} times "
                        f"(the scan was started over {restarts} times); pages are read too slowly for "
                        f"Lytics, e.g. because of long retry waits. The task will be retried."
                    ) from None
                restarts += 1
                log.warning("Lytics scan token of audience %r expired after %d pages; starting the scan over "
                            "(%d of at most %d)", segment_id, effort.pages, restarts, MAX_RESTARTS)
        seen, skipped = scan.seen, scan.skipped
        problem = total_mismatch(seen, scan.total_first, scan.total_last, share=total_tolerance_share,
                                 members=total_tolerance_members)
        if problem:
            raise InconsistentScanError(
                f"scan of Lytics audience {segment_id!r} does not add up: {problem}. The scan is incomplete "
                f"(or Lytics' count is wrong), so it was not used: nothing was written and no member is "
                f"removed because of it. Scan again later; if it keeps failing, report the audience and these "
                f"numbers to Lytics support. If the audience really changes by more than that during one scan, "
                f"raise scan_total_tolerance_share / scan_total_tolerance_members.",
                audience=segment_id, members_read=seen, total_first=scan.total_first, total_last=scan.total_last)
        if scan.total_first is None and scan.total_last is None:
            log.warning("Lytics audience %r: the scan reported no 'total'; the %d members read could not be checked "
                        "against it", segment_id, seen)
        if skipped:
            log.warning("Lytics audience %r: %d of %d members have no usable %r and were left out",
                        segment_id, skipped, seen, id_field)
        log.info("Scanned Lytics audience %r in %.1fs: %d members (Lytics' total: %s), %d unique ids, %d pages "
                 "(%d empty), %d retries, %d restarts", segment_id, time.monotonic() - began, seen,
                 scan.total_last if scan.total_last is not None else "none", len(scan.ids), effort.pages,
                 scan.empty_pages, effort.retries, restarts)
        return ScanResult(ids=scan.ids, members_seen=seen, skipped_no_id=skipped, pages=effort.pages,
                          retries=effort.retries, restarts=restarts, total_first=scan.total_first,
                          total_last=scan.total_last, empty_pages=scan.empty_pages)

    def _scan_pass(self, segment_id: str, id_field: str, limit: int, max_empty_pages: int,
                   effort: ScanEffort) -> ScanPass:
        """One pass from the first page to the last (the one whose ``_next`` is empty)."""
        ids = IdChunks()
        seen = skipped = 0
        empty = empty_run = 0
        total_first = total_last = None
        pass_began = effort.pages
        start = ""
        path = segment_path(segment_id) + "/scan"
        while True:
            params = {"limit": limit, "fields": id_field}
            if start:
                params["start"] = start
            body = self._get(path, params, what=f"scanning Lytics audience {segment_id!r} (page {effort.pages + 1})",
                             audience=segment_id, expired_start=bool(start), on_retry=effort.count_retry)
            data = body.get("data")
            next_start = body.get("_next", "")
            if not isinstance(data, list) or not isinstance(next_start, str):
                raise PermanentError(
                    f"Lytics answered a scan page of audience {segment_id!r} without a 'data' list or "
                    f"'_next' token: {str(body)[:200]}. Check that the host of the Lytics connection is the API "
                    f"(https://api.lytics.io); if it is, report the answer to Lytics support"
                )
            first_page = effort.pages == pass_began
            effort.pages += 1
            total = page_total(body.get("total"))
            if first_page:
                total_first = total
            total_last = total
            if first_page:
                shown = Progress(log, f"Scanning Lytics audience {segment_id!r}", total=total, unit="members")
            shown.set(seen)
            for member in data:
                seen += 1
                value = usable_id(member.get(id_field) if isinstance(member, dict) else None)
                if value is None:
                    skipped += 1
                else:
                    ids.append(value)
            if not next_start:  # only an empty `_next` ends a scan; an empty page does not
                return ScanPass(ids.unique_sorted(), seen, skipped, total_first, total_last, empty)
            if data:
                empty_run = 0
                if next_start == start:  # the same page again: a server bug that would loop forever
                    raise PermanentError(f"Lytics returned the same scan token twice for audience {segment_id!r}: "
                                         f"the scan would loop forever, so it was abandoned and not used. Scan again "
                                         f"later; if it keeps happening, report the audience to Lytics support")
            else:
                empty += 1
                empty_run += 1
                if empty_run > max_empty_pages:
                    raise InconsistentScanError(
                        f"scan of Lytics audience {segment_id!r} is not progressing: {empty_run} pages in a row held "
                        f"no member but a '_next' token (after {seen:,} members; Lytics' total: "
                        f"{total_last if total_last is not None else 'not reported'}). The scan was abandoned and "
                        f"not used: nothing was written and no member is removed because of it. Scan again later; "
                        f"if it keeps happening, report the audience to Lytics support.",
                        audience=segment_id, members_read=seen, total_first=total_first, total_last=total_last)
                log.info("Lytics audience %r: page %d held no member but a '_next' token; reading on",
                         segment_id, effort.pages)
            start = next_start

    # ------------------------------------------------------------------ one GET
    def _get(self, path: str, params: dict, *, what: str, audience: str | None = None,
             expired_start: bool = False, on_retry: Callable[[int, TransientError, float], None] | None = None) -> dict:
        """One GET with retries, parsed; 404 of an audience -> NotFoundError, expired token -> _TokenExpired."""
        url = f"{self.base_url}{path}"

        def ours(resp: requests.Response) -> bool:
            # Answers we word ourselves instead of the generic classification of request().
            return (resp.status_code == 404 and audience is not None) or (expired_start and is_expired(resp))

        def attempt() -> requests.Response:
            try:
                return request(self.session, "GET", url, service="Lytics", what=what, auth_hint=_AUTH_HINT,
                               timeout=self.timeout, ok=ours, params=params)
            except (requests.exceptions.ChunkedEncodingError, requests.exceptions.ContentDecodingError) as exc:
                raise TransientError(f"{what}: the answer of Lytics broke off ({type(exc).__name__})") from None

        def attempt_parsed() -> tuple[int, dict]:
            resp = attempt()
            if resp.status_code >= 400:
                return resp.status_code, {}
            if "html" in resp.headers.get("Content-Type", "").lower():  # a web page: asking again cannot help
                raise PermanentError(
                    f"{what}: {redact_url(url)} answered {resp.status_code} with an HTML page, not Lytics' JSON. "
                    f"Check that the host of the Lytics connection is the API (https://api.lytics.io), not the "
                    f"web app or a proxy's login page")
            try:
                body = orjson.loads(resp.content)
            except orjson.JSONDecodeError:  # a cut-off body from a proxy: asking again may help
                raise TransientError(f"{what}: Lytics answered {resp.status_code} with a body that is not JSON "
                                     f"(cut off?)") from None
            if not isinstance(body, dict):
                raise PermanentError(f"{what}: Lytics answered a JSON {type(body).__name__}, not an object. Check "
                                     f"that the host of the Lytics connection is the API (https://api.lytics.io)")
            return resp.status_code, body

        status, body = retry_call(attempt_parsed, self.policy, what=what, on_retry=on_retry)
        if status == 404:
            raise NotFoundError(f"Lytics audience {audience!r} not found; check the audience id/slug in the configuration")
        if status == 400:
            raise _TokenExpired()
        return body
