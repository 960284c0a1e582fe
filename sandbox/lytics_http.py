"""HTTP plumbing of the Lytics sandbox: the response type, JSON helpers, request handler, server.

The handler reads any body (``Content-Length`` only: chunked bodies get a 411, oversized ones a
413), hands method, path, query, headers and body to ``LyticsSandbox._handle`` (only the collect
endpoints look at the body) and writes back the :class:`Response` it returns -- or, for
``reset``, aborts the connection with a TCP RST. A sandbox bug still gets an HTTP answer (500), protocol-level errors answer JSON too,
and the request log never shows the query string (it may carry ``?key=<token>``).
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import orjson

if TYPE_CHECKING:
    from sandbox.lytics_server import LyticsSandbox

__all__ = ["LyticsHandler", "LyticsHttpServer", "Response", "error_response", "json_response"]

MAX_BODY = 1 << 20


@dataclass
class Response:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    reset: bool = False  # drop the connection instead of answering


def json_response(status: int, payload: dict | None = None, **headers: str) -> Response:
    body = {"status": status}
    body.update(payload or {})
    return Response(status, orjson.dumps(body), dict(headers))


def error_response(status: int, message: str) -> Response:
    return json_response(status, {"message": message})


class LyticsHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "LyticsSandbox/1.0"
    timeout = 60  # idle keep-alive connections
    disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms delayed-ACK stall
    server: LyticsHttpServer

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - stdlib signature
        if self.server.sandbox.verbose:
            super().log_message(format, *args)

    def log_error(self, format: str, *args) -> None:  # noqa: A002 - stdlib signature
        super().log_message(format, *args)  # always, even when quiet

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        # The stdlib logs the raw request line, which may carry ?key=<token>: log the path only.
        path = urlsplit(self.path).path if hasattr(self, "path") else "-"
        self.log_message('"%s %s" %s %s', getattr(self, "command", "-"), path, code, size)

    def _dispatch(self) -> None:
        sandbox = self.server.sandbox
        split = urlsplit(self.path)
        path = split.path
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            resp = error_response(411, "Content-Length required")
        else:
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                length = -1
            if length < 0 or length > MAX_BODY:
                self.close_connection = True
                resp = error_response(400 if length < 0 else 413, "invalid request body")
            else:
                body = self.rfile.read(length) if length else b""
                try:
                    resp = sandbox._handle(self.command, path, split.query, self.headers, body)
                except Exception as e:  # a sandbox bug must still produce an HTTP answer
                    self.log_error("internal error: %r", e)
                    resp = error_response(500, f"internal sandbox error: {type(e).__name__}")
        if resp.reset:
            sandbox._record(self.command, path, 0)
            self._reset()
            return
        sandbox._record(self.command, path, resp.status)
        self._send(resp)

    def _reset(self) -> None:
        """Abort the connection with a TCP RST (SO_LINGER 0), sending no response at all."""
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()  # really closed (-> RST) once rfile/wfile are closed in finish()
        except OSError:
            pass

    def _send(self, resp: Response) -> None:
        self.send_response(resp.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(resp.body)))
        for k, v in resp.headers.items():
            self.send_header(k, v)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command == "HEAD":
            return
        try:
            self.wfile.write(resp.body)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Protocol-level errors (bad request line, ...) also answer JSON."""
        self.close_connection = True
        self._send(error_response(code, message or self.responses.get(code, ("Error",))[0]))

    do_GET = do_POST = do_HEAD = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = _dispatch


class LyticsHttpServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    sandbox: LyticsSandbox
