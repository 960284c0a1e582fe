"""A small thread-based TCP forwarder on loopback that cuts connections on purpose.

    with CuttingProxy(upstream_host, upstream_port) as proxy:
        proxy.plan([Cut(up=120_000)])       # the next connection is dropped after 120,000 client bytes
        client.connect(proxy.host, proxy.port)

Each accepted connection takes the next :class:`Cut` of the plan (later ones pass through
untouched). A cut forwards exactly ``up`` bytes client -> server (or ``down`` bytes server ->
client), then drops *both* sides at once, with a TCP RST (``SO_LINGER 0``) as a dying middlebox or
a killed process would: the client sees a reset or EOF in the middle of whatever it was doing. A cut
may instead call ``action()`` at that point (and keep forwarding), e.g. to SIGKILL the server's
session process once an upload is half-way. :meth:`cut_now` drops every open connection at once (for
cuts triggered by an event rather than a byte count).

Byte counters per connection (``up``/``down``) let a test measure where the phases of a protocol
begin (calibration), and choose cut points inside them.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Cut:
    """What happens to one connection: dropped (or ``action`` run) after ``up`` bytes client -> server
    or ``down`` bytes server -> client (whichever is given; neither: passed through)."""

    up: int | None = None
    down: int | None = None
    action: Callable[[], None] | None = None  # run instead of dropping (once)
    label: str = ""


@dataclass
class Link:
    """One proxied connection: bytes forwarded each way, and whether (and how) it was cut."""

    number: int
    cut: Cut
    client: socket.socket
    server: socket.socket | None = None
    up: int = 0
    down: int = 0
    cut_done: bool = False
    closed: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)


def _rst_close(sock: socket.socket | None) -> None:
    if sock is None:
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()


class CuttingProxy:
    """Forward 127.0.0.1:<port> to ``upstream``; cut connections per :meth:`plan`."""

    host = "127.0.0.1"

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self._listener = socket.create_server((self.host, 0))
        self.port = self._listener.getsockname()[1]
        self._plan: list[Cut] = []
        self._lock = threading.Lock()
        self.links: list[Link] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    # -- control ---------------------------------------------------------------------------------
    def plan(self, cuts: list[Cut]) -> None:
        """The cuts for the next connections, in order (replaces what is left of an earlier plan)."""
        with self._lock:
            self._plan = list(cuts)

    @property
    def connections(self) -> int:
        with self._lock:
            return len(self.links)

    def cuts_done(self) -> int:
        with self._lock:
            return sum(1 for link in self.links if link.cut_done)

    def cut_now(self) -> int:
        """Drop every open connection now (RST both sides); how many were open."""
        with self._lock:
            links = [link for link in self.links if not link.closed]
        for link in links:
            self._drop(link)
        return len(links)

    # -- lifecycle -------------------------------------------------------------------------------
    def __enter__(self) -> CuttingProxy:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> CuttingProxy:
        thread = threading.Thread(target=self._accept_loop, name="cutting-proxy", daemon=True)
        thread.start()
        self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        self.cut_now()

    # -- forwarding ------------------------------------------------------------------------------
    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                cut = self._plan.pop(0) if self._plan else Cut()
                link = Link(number=len(self.links) + 1, cut=cut, client=client)
                self.links.append(link)
            threading.Thread(target=self._serve, args=(link,), name=f"proxy-{link.number}", daemon=True).start()

    def _serve(self, link: Link) -> None:
        try:
            link.server = socket.create_connection(self.upstream, timeout=10)
            link.server.settimeout(None)
        except OSError:
            self._drop(link)
            return
        for sock in (link.client, link.server):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if link.cut.up == 0 and link.cut.action is None:  # cut before a single byte passes
            link.cut_done = True
            self._drop(link)
            return
        threading.Thread(target=self._pump, args=(link, "down"), daemon=True).start()
        self._pump(link, "up")

    def _pump(self, link: Link, direction: str) -> None:
        src, dst = (link.client, link.server) if direction == "up" else (link.server, link.client)
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                data = b""
            if not data:
                self._drop(link)
                return
            with link.lock:
                done = getattr(link, direction)
                limit = getattr(link.cut, direction)
                fire = limit is not None and not link.cut_done and done + len(data) >= limit
                if fire:
                    link.cut_done = True
                    if link.cut.action is None:
                        data = data[: max(0, limit - done)]
                setattr(link, direction, done + len(data))
            try:
                if data:
                    dst.sendall(data)
            except OSError:
                self._drop(link)
                return
            if fire:
                if link.cut.action is not None:
                    link.cut.action()
                else:
                    self._drop(link)
                    return

    def _drop(self, link: Link) -> None:
        with link.lock:
            if link.closed:
                return
            link.closed = True
        _rst_close(link.client)
        _rst_close(link.server)
