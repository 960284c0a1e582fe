"""HTTP plumbing of the Braze sandbox: the response type, JSON helpers, request handler, server.

The handler reads the body (``Content-Length`` only: chunked bodies get a 411, oversized ones a
413, the per-path cap coming from ``BrazeSandbox._body_limit``), hands method, path, headers,
body and query to ``BrazeSandbox._handle`` and writes back the :class:`Response` it returns --
JSON, XML or HTML, a file (or one byte range of it) streamed from disk, a body cut short after
``truncate_at`` bytes with the connection closed (a truncated transfer: ``Content-Length`` still
announces the whole body), or (``reset``) no answer at all. ``Content-Length`` is always the size
of the body announced; a ``HEAD`` answer sends the headers only. A sandbox bug still gets an HTTP
answer (500), and protocol-level errors answer JSON too.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import orjson

if TYPE_CHECKING:
    from sandbox.braze_server import BrazeSandbox

__all__ = ["MAX_BODY", "BrazeHandler", "BrazeHttpServer", "Response", "json_object", "json_response"]

MAX_BODY = 1 << 20  # request bodies on every path but /users/track
STREAM_CHUNK = 256 * 1024


@dataclass
class Response:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    file: Path | None = None  # streamed instead of body
    content_type: str = "application/json"
    reset: bool = False  # close the connection without answering at all
    file_range: tuple[int, int] | None = None  # first and last byte (inclusive) of `file` to send
    truncate_at: int | None = None  # send this many body bytes, then close the connection


def json_response(status: int, payload: dict, **headers: str) -> Response:
    return Response(status, orjson.dumps(payload), dict(headers))


def json_object(headers, body: bytes) -> tuple[dict, str | None]:
    """The request's JSON object, or the 400 message saying what is wrong with it."""
    ctype = (headers.get("Content-Type") or "").split(";", 1)[0].strip().lower()
    if ctype != "application/json":
        return {}, "Content-Type must be application/json"
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        return {}, f"Invalid JSON in request body: {e}"
    if not isinstance(payload, dict):
        return {}, "Request body must be a JSON object"
    return payload, None


class BrazeHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "BrazeSandbox/1.0"
    timeout = 60  # idle keep-alive connections
    disable_nagle_algorithm = True  # headers and body go out in separate writes; no 40 ms stalls
    server: BrazeHttpServer

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - stdlib signature
        if self.server.sandbox.verbose:
            super().log_message(format, *args)

    def log_error(self, format: str, *args) -> None:  # noqa: A002 - stdlib signature
        super().log_message(format, *args)  # always, even when quiet

    def _dispatch(self) -> None:
        sandbox = self.server.sandbox
        split = urlsplit(self.path)
        path = split.path
        max_body = sandbox._body_limit(path)
        body = b""
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            resp = json_response(411, {"message": "Content-Length required"})
        else:
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                length = -1
            if length < 0:
                self.close_connection = True
                resp = json_response(400, {"message": "Invalid Content-Length"})
            elif length > max_body:
                self.close_connection = True
                resp = json_response(413, {"message": "Request body too large"})
            else:
                body = self.rfile.read(length) if length else b""
                try:
                    resp = sandbox._handle(self.command, path, self.headers, body, query=split.query)
                except Exception as e:  # a sandbox bug must still produce an HTTP answer
                    self.log_error("internal error: %r", e)
                    resp = json_response(500, {"message": f"Internal sandbox error: {type(e).__name__}"})
        sandbox._record(self.command, path, resp.status)
        if resp.reset:
            self._reset()
        else:
            self._send(resp)

    def _reset(self) -> None:
        """Drop the connection without a response; SO_LINGER 0 makes the final close send a RST."""
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass

    def _send(self, resp: Response) -> None:
        start = 0
        if resp.file is None:
            size = len(resp.body)
        elif resp.file_range is not None:
            start, last = resp.file_range
            size = last - start + 1
        else:
            size = resp.file.stat().st_size
        self.send_response(resp.status)
        self.send_header("Content-Type", resp.content_type)
        self.send_header("Content-Length", str(size))
        for k, v in resp.headers.items():
            self.send_header(k, v)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command == "HEAD":
            return
        left = size if resp.truncate_at is None else min(size, resp.truncate_at)
        try:
            if resp.file is None:
                self.wfile.write(resp.body[:left])
            else:
                with open(resp.file, "rb") as f:
                    f.seek(start)
                    while left > 0 and (chunk := f.read(min(STREAM_CHUNK, left))):
                        self.wfile.write(chunk)
                        left -= len(chunk)
            if resp.truncate_at is not None:
                self.close_connection = True  # not announced: the transfer just stops
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_WR)  # the client sees EOF before Content-Length
        except OSError:  # the client went away (broken pipe, reset, not connected)
            self.close_connection = True

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Protocol-level errors (bad request line, ...) also answer JSON."""
        self.close_connection = True
        self._send(json_response(code, {"message": message or self.responses.get(code, ("Error",))[0]}))

    do_GET = do_POST = do_HEAD = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = _dispatch


class BrazeHttpServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # a real API front end accepts bursts of connections (16 in flight x 4 tasks)
    allow_reuse_address = True
    sandbox: BrazeSandbox
