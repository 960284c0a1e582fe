"""Braze segment exports: start one, see whether its file is ready, download it.

Contract (braze-docs `_docs/_api/endpoints/export/user_data/post_users_segment.md`):
`POST /users/export/segment` with `segment_id`, `fields_to_export` (required) and
`output_format` answers `{"message": "success", "object_prefix": ..., "url": ...}`; the URL
answers only once the export is ready, so callers poll it. The URL is a pre-signed link:
whoever holds it can read the users, so it is treated as a secret (sealed before it goes to
XCom, never logged with its query string).
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import requests

from include.common.errors import ConfigError, PermanentError, TransientError
from include.common.http import redact_url, request, require_tls
from include.common.progress import Progress
from include.common.retry import RetryPolicy, retry_call
from include.common.scratch import open_private

log = logging.getLogger(__name__)

_AUTH_HINT = (
    "Check the REST API key (password of the Braze connection) and that it has the "
    "users.export.segment permission for this workspace."
)
_CHUNK = 1 << 20


def braze_session(base_url: str, api_key: str, session: requests.Session | None = None) -> tuple[str, requests.Session]:
    """The validated REST endpoint and a session sending the key as Braze expects (Bearer, JSON)."""
    if not base_url.startswith(("http://", "https://")):
        raise ConfigError(
            f"Braze REST endpoint {base_url!r} is not a URL; set the connection's host to e.g. "
            f"https://rest.iad-01.braze.com"
        )
    if not api_key:
        raise ConfigError("Braze REST API key is empty; put it in the connection's password field")
    session = session or requests.Session()
    session.headers.update({"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"})
    return base_url.rstrip("/"), session


@dataclass(frozen=True)
class ExportJob:
    """Where Braze will put the export: a pre-signed download `url`, or (bucket exports, `url`
    None) files under `object_prefix` in the workspace's own S3/Azure/GCS bucket."""

    url: str | None
    object_prefix: str


class ExportLinkExpired(PermanentError):
    """The pre-signed download link expired: only a new export helps."""


_EXPIRED_ADVICE = ("Braze's download links are valid for a limited time: clear the segment's task group from "
                   "start_export on to request a new export (and raise export_timeout_minutes only if Braze "
                   "was still building the file).")


def _link_answer(resp: requests.Response, url: str) -> str:
    """What a pre-signed S3 link's answer means: "ready", "not ready"; raises for an expired or refused link.

    S3 answers a GET of an object that does not exist yet with 404 NoSuchKey, or 403 AccessDenied when
    the signer may not list the bucket; an expired link with 403 "Request has expired"; a link used
    with another method than the one signed (e.g. HEAD) with 403 SignatureDoesNotMatch
    (docs/vendor-contracts.md#braze-segment-exports).
    """
    if resp.status_code in (200, 206):
        return "ready"
    if resp.status_code == 404:
        return "not ready"
    if resp.status_code == 403:
        body = resp.raw.read(4096, decode_content=True).decode("utf-8", "replace") if resp.raw else resp.text
        shown = redact_url(url, keep_path=False)
        if "expired" in body.lower():
            raise ExportLinkExpired(f"the Braze export link ({shown}) has expired. {_EXPIRED_ADVICE}")
        if "SignatureDoesNotMatch" in body:
            raise PermanentError(f"the Braze export link ({shown}) was refused (SignatureDoesNotMatch): the link is "
                                 f"damaged. Clear the segment's task group from start_export on to re-export.")
        return "not ready"  # AccessDenied: the object is not there yet
    raise AssertionError(resp.status_code)  # request() classified every other status already


class BrazeExportClient:
    """Braze's export endpoints for one workspace (base URL + REST API key)."""

    def __init__(self, base_url: str, api_key: str, *, policy: RetryPolicy | None = None,
                 session: requests.Session | None = None, allow_insecure_http: bool = False):
        self.base_url, self.session = braze_session(base_url, api_key, session)
        self._api_key = api_key
        self.policy = policy or RetryPolicy()
        self.allow_insecure_http = allow_insecure_http  # plain http:// export links to other hosts

    def _check_link(self, url: str) -> str:
        """The pre-signed link is a bearer secret: never fetched over plain http:// from another machine."""
        return require_tls(url, what="the Braze export download link",
                           allow_insecure_http=self.allow_insecure_http)

    def start_segment_export(self, segment_id: str, fields_to_export: list[str], output_format: str = "zip",
                             callback_endpoint: str | None = None) -> ExportJob:
        """Ask Braze to export a segment; returns where the file will appear.

        `callback_endpoint`: a URL Braze POSTs to once the export is ready (it carries a secret
        token: it is sent in the JSON body only, never logged).
        """
        what = f"starting the export of segment {segment_id}"
        payload = {"segment_id": segment_id, "fields_to_export": list(fields_to_export), "output_format": output_format}
        if callback_endpoint:
            payload["callback_endpoint"] = callback_endpoint
        resp = retry_call(lambda: request(
            self.session, "POST", f"{self.base_url}/users/export/segment", service="Braze", what=what,
            auth_hint=_AUTH_HINT, json=payload,
        ), self.policy, what=what)
        try:
            body = resp.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            kind = resp.headers.get("Content-Type", "no content type")
            raise PermanentError(
                f"{what}: Braze answered {resp.status_code} ({kind}) with a body that is not a JSON object, "
                f"starting {resp.text[:60]!r}. Check that the host of the Braze connection is your instance's "
                f"REST endpoint (e.g. https://rest.iad-01.braze.com), not the dashboard or a proxy page."
            )
        url, prefix = body.get("url"), body.get("object_prefix")
        if not url and not prefix:
            raise PermanentError(f"{what}: Braze answered without a download url or an object_prefix: {body!r:.200}. "
                                 f"Check that the host of the Braze connection is your instance's REST endpoint")
        if (url and (not isinstance(url, str) or not url.startswith(("https://", "http://")))) \
                or (prefix and not isinstance(prefix, str)):
            raise PermanentError(
                f"{what}: Braze answered with a download url that is not an http(s) link or an object_prefix that "
                f"is not a string ({type(url).__name__} url, {type(prefix).__name__} object_prefix): not the "
                f"documented answer. Check that the host of the Braze connection is your instance's REST endpoint, "
                f"not a proxy; then clear the segment's task group")
        return ExportJob(url=url or None, object_prefix=prefix or "")

    def export_ready(self, url: str) -> bool:
        """True once the export file can be downloaded; False while Braze is still writing it.

        The link is pre-signed for GET only (HEAD is refused), so readiness is probed with a GET of
        the first byte; no auth header is sent to it. An expired link raises `ExportLinkExpired`.
        """
        self._check_link(url)

        def probe() -> str:
            resp = request(requests.Session(), "GET", url, service="Braze export storage",
                           what="checking the export file", auth_hint=_EXPIRED_ADVICE, stream=True,
                           headers={"Range": "bytes=0-0"}, ok=lambda r: r.status_code in (403, 404),
                           secret_path=True)
            with resp:
                return _link_answer(resp, url)

        return retry_call(probe, self.policy, what="checking the export file") == "ready"

    def download(self, url: str, dest: Path) -> int:
        """Stream the export file to `dest` (bounded memory); returns its size in bytes."""
        self._check_link(url)
        tmp = dest.with_name(dest.name + ".part")

        def attempt() -> int:
            resp = request(
                requests.Session(), "GET", url, service="Braze export storage", what="downloading the export",
                auth_hint=_EXPIRED_ADVICE, stream=True, secret_path=True, ok=lambda r: r.status_code in (403, 404),
            )
            if _link_answer(resp, url) != "ready":
                resp.close()
                raise TransientError(f"the Braze export at {redact_url(url, keep_path=False)} is not there (any more)")
            if resp.headers.get("Content-Type", "").startswith("text/html"):
                resp.close()
                raise PermanentError(f"the Braze export link {redact_url(url, keep_path=False)} answered an HTML "
                                     f"page, not the export file. Clear the segment's task group to re-export.")
            size = 0
            length = resp.headers.get("Content-Length")
            progress = Progress(log, "Downloading the Braze export", total=int(length) if length and length.isdigit()
                                else None, unit="bytes")
            try:
                with resp, open_private(tmp, "wb") as out:
                    for chunk in resp.iter_content(_CHUNK):
                        out.write(chunk)
                        size += len(chunk)
                        progress.advance(len(chunk))
            except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as exc:
                raise TransientError(f"download of {redact_url(url, keep_path=False)} broke off after {size} bytes: {type(exc).__name__}") from None
            progress.done()
            expected = resp.headers.get("Content-Length")
            if expected is not None and int(expected) != size:
                raise TransientError(f"download of {redact_url(url, keep_path=False)} got {size} of {expected} bytes")
            return size

        try:
            size = retry_call(attempt, self.policy, what="downloading the Braze export")
            if size == 0:
                # Even a segment without users exports as a valid (non-empty) zip or gzip file.
                raise PermanentError(f"the Braze export at {redact_url(url, keep_path=False)} is empty (0 bytes), "
                                     f"which Braze never sends: clear the segment's task group to re-export.")
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        os.replace(tmp, dest)
        log.info("Downloaded the export from %s: %d bytes", redact_url(url, keep_path=False), size)
        return size

    # --- the export link is a secret: seal it before it leaves the task ---------------------------

    def seal(self, url: str) -> str:
        """Encrypt the export link with a key derived from the API key (for XCom)."""
        return self._fernet().encrypt(url.encode()).decode()

    def unseal(self, token: str) -> str:
        from cryptography.fernet import InvalidToken

        try:
            return self._fernet().decrypt(token.encode()).decode()
        except InvalidToken:
            raise PermanentError(
                "The sealed export link cannot be opened with the current Braze API key (was the key "
                "rotated?). Clear the segment's whole task group to start a new export."
            ) from None

    def _fernet(self):
        from cryptography.fernet import Fernet

        digest = hashlib.sha256(b"braze-lytics export link:" + self._api_key.encode()).digest()
        return Fernet(base64.urlsafe_b64encode(digest))
