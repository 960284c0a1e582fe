"""A tiny HTTP server that records the POSTs it gets: the other end of Braze's export callback."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import orjson


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - stdlib signature
        pass

    def do_POST(self) -> None:  # noqa: N802 - stdlib name
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        with self.server.lock:
            self.server.calls.append((self.path, dict(self.headers), body))
        self.send_response(self.server.status)
        self.send_header("Content-Length", "0")
        self.end_headers()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    calls: list
    lock: threading.Lock
    status: int


class CallbackReceiver:
    """``with CallbackReceiver() as cb:`` ... ``cb.url``, ``cb.wait(1)`` -> the JSON bodies."""

    def __init__(self, status: int = 200) -> None:
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.calls, self._server.lock, self._server.status = [], threading.Lock(), status
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/braze/export-done"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def __enter__(self) -> CallbackReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    @property
    def calls(self) -> list[tuple[str, dict, bytes]]:
        with self._server.lock:
            return list(self._server.calls)

    def wait(self, n: int = 1, timeout: float = 20.0) -> list[dict]:
        """The JSON bodies of the first ``n`` calls, once they have arrived."""
        deadline = time.monotonic() + timeout
        while len(self.calls) < n:
            assert time.monotonic() < deadline, f"expected {n} callback(s), got {len(self.calls)}"
            time.sleep(0.02)
        return [orjson.loads(body) for _, _, body in self.calls[:n]]
