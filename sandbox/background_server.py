"""Lifecycle shared by the sandbox HTTP servers: serve in a daemon thread, stop cleanly.

Subclasses set `_server_class`, `_handler_class` and `_thread_name`, and may extend
`_before_start` / `_after_stop` (e.g. to create and remove a data directory).
"""

from __future__ import annotations

import threading
from typing import Any


class BackgroundHttpServer:
    _server_class: Any
    _handler_class: Any
    _thread_name = "sandbox"

    host: str
    port: int

    def _init_background(self) -> None:
        self._server = None
        self._thread: threading.Thread | None = None

    def _before_start(self) -> None:
        """Hook: runs before the socket is bound."""

    def _after_stop(self) -> None:
        """Hook: runs after the server thread has ended."""

    def start(self):
        if self._server is not None:
            return self
        self._before_start()
        server = self._server_class((self.host, self.port), self._handler_class)
        server.sandbox = self
        self._server = server
        self.port = server.server_address[1]
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name=self._thread_name, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        self._after_stop()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError(f"{type(self).__name__} is not started")
        return f"http://{self.host}:{self.port}"
