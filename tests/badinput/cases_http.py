"""Case tables: every HTTP status and body shape Braze and Lytics can answer.

A case says who answers - the vendor sandbox (`braze` / `lytics`) with a fault armed through its knobs
(`fault`), or the tiny odd server (`odd`, an `Answer`) for shapes no sandbox produces - and how the call
must end. `key` / `base` replace the credentials or the endpoint the client is built with.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from include.clients.braze.export import ExportLinkExpired
from include.clients.lytics.scan import InconsistentScanError
from include.common.errors import AuthError, ConfigError, NotFoundError, PermanentError, TransientError
from tests.badinput.conftest import Answer

RETRIED = r"still failing after 2 tries.*may pass on its own.*retried later"  # the advice of an exhausted retry
BRAZE_HOST = r"host of the Braze connection is your instance's REST endpoint"
BAD_CONNECTION = r"cannot be sent.*Check the connection: its host must be a URL"


@dataclass(frozen=True)
class HttpCase:
    id: str
    who: str  # "braze" | "lytics" | "odd"
    error: type[Exception]
    says: tuple[str, ...]
    fault: Any = None  # braze: (status-or-kind, path or None); lytics: status or "reset"; odd: an Answer
    key: str | None = None  # the API key / token to use instead of the right one
    base: str | None = None  # the endpoint to use instead of the server's
    knob: dict = field(default_factory=dict)  # lytics scan knobs: {"end_scans_after": 1} ...


def status_cases(prefix: str, path: str | None, *, auth: tuple[str, ...], who: str = "braze",
                 not_found: tuple[str, ...] = (r"answered 404", r"check the id"),
                 bad_request: tuple[str, ...] = (r"answered 400", r"needs fixing, not retrying")) -> list[HttpCase]:
    """The statuses a vendor can answer, armed on its sandbox (`path`: only requests to that endpoint)."""
    def fault(status):
        return (status, path) if who == "braze" else status

    return [
        HttpCase(f"{prefix}-400", who, PermanentError, bad_request, fault(400)),
        HttpCase(f"{prefix}-403", who, AuthError, (r"answered 403", *auth), fault(403)),
        HttpCase(f"{prefix}-404", who, NotFoundError, not_found, fault(404)),
        HttpCase(f"{prefix}-413", who, PermanentError, (r"answered 413", r"needs fixing"), fault(413)),
        HttpCase(f"{prefix}-429", who, TransientError, (r"429", RETRIED), fault(429)),
        HttpCase(f"{prefix}-500", who, TransientError, (r"answered 500", RETRIED), fault(500)),
        HttpCase(f"{prefix}-502", who, TransientError, (r"answered 502", RETRIED), fault(502)),
        HttpCase(f"{prefix}-503", who, TransientError, (r"answered 503", RETRIED), fault(503)),
        HttpCase(f"{prefix}-504", who, TransientError, (r"answered 504", RETRIED), fault(504)),
        HttpCase(f"{prefix}-connection-reset", who, TransientError, (r"ConnectionError", RETRIED), fault("reset")),
    ]


def odd(prefix: str, rows: list[tuple[str, type[Exception], tuple[str, ...], Answer]]) -> list[HttpCase]:
    return [HttpCase(f"{prefix}-{name}", "odd", error, says, answer) for name, error, says, answer in rows]


def json_answer(body: bytes, status: int = 200) -> Answer:
    return Answer(status=status, body=body)


HTML = Answer(status=200, body=b"<!DOCTYPE html><html><body>Sign in</body></html>", content_type="text/html")

# ---------------------------------------------------------------------- Braze POST /users/export/segment
EXPORT_AUTH = (r"REST API key", r"users\.export\.segment")
BRAZE_EXPORT_START: list[HttpCase] = [
    HttpCase("braze-export-401-wrong-key", "braze", AuthError, (r"answered 401", r"Invalid API key", *EXPORT_AUTH),
             key="not-the-key"),
    HttpCase("braze-export-400-unknown-segment", "braze", PermanentError,
             (r"segment seg_unknown", r"answered 400", r"Invalid segment_id", r"needs fixing")),
    *status_cases("braze-export", "/users/export/segment", auth=EXPORT_AUTH),
    HttpCase("braze-export-html-200", "braze", PermanentError,
             (r"segment seg_bad", r"answered 200 \(text/html", r"not a JSON object", BRAZE_HOST),
             ("html", "/users/export/segment")),
    *odd("braze-export", [
        ("empty-200", PermanentError, (r"answered 200", r"not a JSON object", BRAZE_HOST), json_answer(b"")),
        ("truncated-json", PermanentError, (r"not a JSON object", r"starting '\{\"message\"", BRAZE_HOST),
         json_answer(b'{"message": "success", "url": "http://x/', 201)),
        ("json-list", PermanentError, (r"not a JSON object", BRAZE_HOST), json_answer(b"[]", 201)),
        ("no-url-no-prefix", PermanentError, (r"without a download url or an object_prefix", BRAZE_HOST),
         json_answer(b'{"message": "success"}', 201)),
        ("url-not-a-string", PermanentError, (r"not an http\(s\) link", r"int url", BRAZE_HOST),
         json_answer(b'{"message": "success", "url": 5, "object_prefix": "p"}', 201)),
        ("url-not-http", PermanentError, (r"not an http\(s\) link", BRAZE_HOST),
         json_answer(b'{"message": "success", "url": "ftp://files/x.zip", "object_prefix": "p"}', 201)),
        ("prefix-not-a-string", PermanentError, (r"object_prefix that is not a string", BRAZE_HOST),
         json_answer(b'{"message": "success", "object_prefix": ["p"]}', 201)),
        ("400-html-body", PermanentError, (r"answered 400", r"needs fixing"),
         Answer(status=400, body=b"<html>Bad Request</html>", content_type="text/html")),
        ("204-no-content", PermanentError, (r"answered 204", r"not a JSON object", BRAZE_HOST), json_answer(b"", 204)),
    ]),
    HttpCase("braze-export-host-without-name", "braze", ConfigError, (r"starting the export", BAD_CONNECTION),
             base="https://"),
    HttpCase("braze-export-host-with-space", "braze", ConfigError, (r"Braze POST", BAD_CONNECTION),
             base="https://rest braze.com"),
    HttpCase("braze-export-port-out-of-range", "braze", ConfigError, (BAD_CONNECTION,), base="https://127.0.0.1:99999"),
    HttpCase("braze-export-key-with-newline", "braze", ConfigError, (r"InvalidHeader", r"one line of plain ASCII"),
             key="k-123\nX-Injected: 1"),
    HttpCase("braze-export-key-not-latin1", "braze", ConfigError, (r"one line of plain ASCII",), key="k-123€"),
    HttpCase("braze-export-empty-key", "braze", ConfigError, (r"API key is empty", r"password field"), key=""),
    HttpCase("braze-export-host-not-a-url", "braze", ConfigError, (r"is not a URL", r"rest\.iad-01\.braze\.com"),
             base="rest.iad-01.braze.com"),
]

# ---------------------------------------------------------------------- the export's pre-signed link (S3)
# fault: what happens to the link once the export was started ("expired", a download fault, or a status)
BRAZE_EXPORT_LINK: list[HttpCase] = [
    HttpCase("braze-link-expired-before-probe", "braze", ExportLinkExpired,
             (r"Braze export link", r"has expired", r"clear the segment's task group from start_export on"),
             ("expired", "probe")),
    HttpCase("braze-link-expired-before-download", "braze", ExportLinkExpired, (r"has expired", r"request a new export"),
             ("expired", "download")),
    HttpCase("braze-download-empty-body", "braze", PermanentError, (r"is empty \(0 bytes\)", r"clear the segment's "
                                                                    r"task group to re-export"), ("empty", "download")),
    HttpCase("braze-download-cut-off", "braze", TransientError, (r"download of .* got \d+ of \d+ bytes|broke off",
                                                                 RETRIED), ("truncated", "download")),
    HttpCase("braze-download-html-200", "braze", PermanentError, (r"answered an HTML page", r"re-export"),
             ("html", "download")),
    HttpCase("braze-download-503", "braze", TransientError, (r"answered 503", RETRIED), (503, "download")),
    HttpCase("braze-download-500", "braze", TransientError, (r"answered 500", RETRIED), (500, "download")),
    HttpCase("braze-probe-500", "braze", TransientError, (r"checking the export file", RETRIED), (500, "probe")),
    HttpCase("braze-link-signature-mismatch", "odd", PermanentError,
             (r"export link", r"SignatureDoesNotMatch", r"re-export"),
             Answer(status=403, content_type="application/xml",
                    body=b"<Error><Code>SignatureDoesNotMatch</Code><Message>The request signature we calculated "
                         b"does not match</Message></Error>")),
    HttpCase("braze-link-400", "odd", PermanentError, (r"downloading the export", r"answered 400", r"needs fixing"),
             Answer(status=400, content_type="application/xml", body=b"<Error><Code>InvalidArgument</Code></Error>")),
    HttpCase("braze-link-sealed-with-another-key", "braze", PermanentError,
             (r"sealed export link", r"API key", r"rotated", r"Clear the segment's whole task group"), ("sealed", None)),
]

# ---------------------------------------------------------------------- Braze POST /users/track
TRACK_AUTH = (r"users\.track", r"connection braze_default")
BRAZE_TRACK: list[HttpCase] = [
    HttpCase("braze-track-401-wrong-key", "braze", AuthError, (r"answered 401", *TRACK_AUTH), key="not-the-key"),
    *status_cases("braze-track", "/users/track", auth=TRACK_AUTH,
                  not_found=(r"answered 404", r"not this workspace's instance")),
    HttpCase("braze-track-timeout", "braze", TransientError, (r"ReadTimeout", RETRIED), ("timeout", "/users/track")),
    HttpCase("braze-track-html-200", "braze", PermanentError,
             (r"users/track answered 200", r"not a JSON object", r"cannot tell which objects failed", BRAZE_HOST),
             ("html", "/users/track")),
    *odd("braze-track", [
        ("empty-201", PermanentError, (r"answered 201", r"not a JSON object", BRAZE_HOST), json_answer(b"", 201)),
        ("truncated-json-201", PermanentError, (r"not a JSON object", BRAZE_HOST),
         json_answer(b'{"message": "success", "errors": [{"type": "x", "in', 201)),
        ("json-list-201", PermanentError, (r"not a JSON object", BRAZE_HOST), json_answer(b"[]", 201)),
        ("errors-not-a-list", PermanentError, (r"'errors' that are not a list", r"cannot tell which objects failed",
                                               r"REST endpoint"),
         json_answer(b'{"message": "success", "errors": "some failed"}', 201)),
        ("errors-entries-not-objects", PermanentError, (r"'errors' that are not a list of objects",),
         json_answer(b'{"message": "success", "errors": ["u1 is invalid"]}', 201)),
        ("error-index-outside-batch", PermanentError, (r"index 7 in a batch of 3", r"nothing is guessed",
                                                       r"report this answer to Braze support"),
         json_answer(b'{"message": "success", "errors": [{"type": "x", "input_array": "attributes", "index": 7}]}', 201)),
        ("error-index-not-a-number", PermanentError, (r"index '0' in a batch of 3", r"Braze support"),
         json_answer(b'{"message": "success", "errors": [{"type": "x", "input_array": "attributes", "index": "0"}]}',
                     201)),
        ("204-no-content", PermanentError, (r"answered 204", r"not a JSON object"), json_answer(b"", 204)),
        ("400-html-body", PermanentError, (r"answered 400", r"needs fixing"),
         Answer(status=400, body=b"<html>Bad Request</html>", content_type="text/html")),
    ]),
    HttpCase("braze-track-host-without-name", "braze", ConfigError, (r"POST /users/track", BAD_CONNECTION),
             base="https://"),
    HttpCase("braze-track-key-with-newline", "braze", ConfigError, (r"one line of plain ASCII",), key="k\r\nX: y"),
]

# ---------------------------------------------------------------------- Braze POST /users/export/ids (drift check)
EXPORT_IDS_HOST = r"Check that the host of the Braze connection is your instance's REST endpoint"
BRAZE_EXPORT_IDS: list[HttpCase] = [
    HttpCase("braze-export-ids-401-wrong-key", "braze", AuthError, (r"answered 401", r"users\.export\.ids"),
             key="not-the-key"),
    HttpCase("braze-export-ids-404", "braze", NotFoundError, (r"answered 404", r"not this workspace's instance"),
             (404, "/users/export/ids")),
    HttpCase("braze-export-ids-html-200", "braze", PermanentError, (r"not the documented", EXPORT_IDS_HOST),
             ("html", "/users/export/ids")),
    *odd("braze-export-ids", [
        ("users-not-a-list", PermanentError, (r"not the documented", EXPORT_IDS_HOST),
         json_answer(b'{"message": "success", "users": {"u1": {}}}')),
        ("message-not-success", PermanentError, (r"message 'queued' instead of 'success'", r"cannot be trusted"),
         json_answer(b'{"message": "queued", "users": []}')),
        ("user-not-asked-for", PermanentError, (r"not one of the ids asked for", r"never guess|not asked for"),
         json_answer(b'{"message": "success", "users": [{"external_id": "someone-else"}]}')),
        ("custom-attributes-not-an-object", PermanentError, (r"custom_attributes", r"not an object"),
         json_answer(b'{"message": "success", "users": [{"external_id": "u1", "custom_attributes": [1]}]}')),
        ("truncated-json", PermanentError, (r"not the documented", EXPORT_IDS_HOST),
         json_answer(b'{"message": "success", "users": [{"exte')),
    ]),
]

# ---------------------------------------------------------------------- Lytics GET /api/segment/{id}/scan
LYTICS_AUTH = (r"connection lytics_default", r"check that it is current")
LYTICS_HOST = r"host of the Lytics connection is the API \(https://api\.lytics\.io\)"
LYTICS_SCAN: list[HttpCase] = [
    HttpCase("lytics-scan-401-wrong-token", "lytics", AuthError, (r"answered 401", *LYTICS_AUTH), key="not-the-token"),
    HttpCase("lytics-scan-bearer-token", "lytics", ConfigError, (r"starts with 'Bearer '", r"store the token alone"),
             key="Bearer " + "x" * 20),
    HttpCase("lytics-scan-empty-token", "lytics", ConfigError, (r"token is empty", r"password of connection"), key=" "),
    HttpCase("lytics-scan-404-unknown-audience", "lytics", NotFoundError,
             (r"audience 'aud_missing' not found", r"check the audience id/slug in the configuration")),
    *[c for c in status_cases("lytics-scan", None, who="lytics", auth=LYTICS_AUTH,
                              not_found=(r"audience 'aud_bad' not found", r"check the audience id"),
                              bad_request=(r"answered 400", r"needs fixing"))],
    HttpCase("lytics-scan-stops-short", "lytics", InconsistentScanError,
             (r"audience 'aud_bad' does not add up", r"nothing was written", r"Scan again later",
              r"scan_total_tolerance"), knob={"end_scans_after": 1}),
    HttpCase("lytics-scan-total-disagrees", "lytics", InconsistentScanError,
             (r"does not add up", r"no member is removed because of it"), knob={"total_offset": 500}),
    HttpCase("lytics-scan-empty-pages-forever", "lytics", InconsistentScanError,
             (r"not progressing", r"26 pages in a row", r"report the audience to Lytics support"),
             knob={"empty_pages": 40}),
    *odd("lytics-scan", [
        ("html-200", PermanentError, (r"answered 200 with an HTML page", LYTICS_HOST), HTML),
        ("empty-200", TransientError, (r"not JSON \(cut off\?\)", RETRIED), json_answer(b"")),
        ("truncated-json", TransientError, (r"not JSON", RETRIED), json_answer(b'{"data": [{"braze_id": "u1"}], "_ne')),
        ("json-list", PermanentError, (r"a JSON list, not an object", LYTICS_HOST), json_answer(b"[]")),
        ("no-data", PermanentError, (r"without a 'data' list or '_next' token", LYTICS_HOST),
         json_answer(b'{"status": 200, "message": "success"}')),
        ("data-not-a-list", PermanentError, (r"without a 'data' list", r"Lytics support"),
         json_answer(b'{"data": {"braze_id": "u1"}, "_next": ""}')),
        ("next-not-a-string", PermanentError, (r"'_next' token", LYTICS_HOST),
         json_answer(b'{"data": [], "_next": 5}')),
        ("same-token-twice", PermanentError, (r"same scan token twice", r"Lytics support"),
         json_answer(b'{"data": [{"braze_id": "u1"}], "_next": "tok", "total": 1}')),
    ]),
    HttpCase("lytics-scan-host-without-name", "lytics", ConfigError, (r"scanning Lytics audience", BAD_CONNECTION),
             base="https://"),
    HttpCase("lytics-scan-token-with-newline", "lytics", ConfigError, (r"one line of plain ASCII",),
             key="tok\nen"),
]
