"""The bad-input suite: every input the project reads, broken in every way we could think of.

Each module is a case table (``cases_*.py``) and a driver (``test_*.py``). Every case asserts three
things (``check_error``):

* the **exact** error class: one of the project's typed errors (``include/common/errors.py`` and its
  subclasses), never a raw library exception (``EOFError``, ``BadZipFile``, ``JSONDecodeError``,
  ``OSError: Failure``, ``KeyError``, ``requests.InvalidURL`` ...);
* that the message says **what** failed, **where** (file, member, line, segment, key path, connection,
  URL) and **how to fix it** (each case lists the fragments it needs, as regular expressions);
* that **nothing was delivered or committed** for that input: no file under the final remote name on
  the real sshd, no committed pointer in the state store, no profile changed in the Braze sandbox
  (each driver checks what applies).

Servers are shared (session scope) and reset per case: the Braze and Lytics sandboxes over real HTTP,
a tiny "odd" HTTP server for answers the sandboxes cannot give, the real OpenSSH sshd of
``tests/conftest.py`` and real gpg keys (``tests/pgp_keys.py``).
"""

from __future__ import annotations

import re
import socket
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from include.common.errors import BrazeLyticsError
from include.common.retry import RetryPolicy

# Two tries, millisecond waits: retry exhaustion is part of many cases and must not cost seconds.
# (Also caps a server's Retry-After: RetryPolicy.delay takes min(Retry-After, max_delay).)
FAST = RetryPolicy(attempts=2, base_delay=0.01, max_delay=0.05)
ONE_TRY = RetryPolicy(attempts=1)

BRAZE_KEY = "badinput-braze-key-5f2c"
LYTICS_TOKEN = "badinput-lytics-token-9a1e"


def check_error(exc: BaseException, error: type[BaseException], says: tuple[str, ...] | list[str],
                secrets: tuple[str, ...] = ()) -> str:
    """The one assertion of the suite: exactly `error`, a project error, saying every fragment of `says`.

    `says` are regular expressions searched case-insensitively (the what / where / how-to-fix parts).
    `secrets` must not appear in the message (API keys, passphrases). Returns the message.
    """
    text = str(exc)
    assert type(exc) is error, (
        f"expected exactly {error.__module__}.{error.__name__}, got {type(exc).__module__}.{type(exc).__name__}: "
        f"{text[:500]}")
    assert isinstance(exc, BrazeLyticsError), f"{type(exc).__name__} is not one of the project's typed errors"
    missing = [s for s in says if not re.search(s, text, re.IGNORECASE | re.DOTALL)]
    assert not missing, f"the message lacks {missing}:\n{text}"
    for secret in secrets:
        assert secret not in text, f"the message shows a secret: {text}"
    return text


# ==================================================================================================
# A tiny HTTP server for answers the sandboxes cannot produce (empty bodies, truncated JSON, odd shapes)
# ==================================================================================================


@dataclass
class Answer:
    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict = field(default_factory=dict)
    declared_length: int | None = None  # Content-Length to announce (more than the body: a cut-off answer)
    reset: bool = False  # close the connection without answering


class OddHttp:
    """Answers every request (any method, any path) with the `Answer` set last; records what it got."""

    def __init__(self) -> None:
        self.answer = Answer()
        self.requests: list[tuple[str, str]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                server.requests.append((self.command, self.path))
                a = server.answer
                if a.reset:
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST
                    self.close_connection = True
                    return
                self.send_response(a.status)
                self.send_header("Content-Type", a.content_type)
                for k, v in a.headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(a.declared_length if a.declared_length is not None
                                                       else len(a.body)))
                if a.declared_length is not None:
                    self.send_header("Connection", "close")
                    self.close_connection = True
                self.end_headers()
                self.wfile.write(a.body)
                self.wfile.flush()

            do_GET = do_POST = do_PUT = do_HEAD = _any

            def log_message(self, *args) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True, name="badinput-odd-http")
        self._thread.start()

    def set(self, **kwargs) -> None:
        self.answer = Answer(**kwargs)
        self.requests.clear()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture(scope="session")
def odd_http() -> Iterator[OddHttp]:
    server = OddHttp()
    yield server
    server.stop()


# ==================================================================================================
# The vendors' sandboxes, shared by the session and reset before each case
# ==================================================================================================


@pytest.fixture(scope="session")
def braze_server():
    from sandbox.braze_server import BrazeSandbox
    from sandbox.braze_users import SegmentSpec

    with BrazeSandbox(BRAZE_KEY, [SegmentSpec("seg_bad", 30)], export_delay=0.0, fault_sleep=0.3) as sandbox:
        yield sandbox


@pytest.fixture
def braze(braze_server):
    """The session's Braze sandbox with no fault armed and the default link lifetime."""
    braze_server.faults.arm(0, 500)
    braze_server.exports.link_ttl = 3600.0
    braze_server.exports.download_faults._armed.clear()
    yield braze_server
    braze_server.faults.arm(0, 500)


@pytest.fixture(scope="session")
def lytics_server():
    from sandbox.lytics_server import Audience, LyticsSandbox

    with LyticsSandbox(LYTICS_TOKEN, [Audience("aud_bad", "bad_input", "Bad input", 250)]) as sandbox:
        yield sandbox


@pytest.fixture
def lytics(lytics_server):
    """The session's Lytics sandbox with every knob off."""
    def reset() -> None:
        lytics_server.fail_next(0)
        lytics_server.empty_pages(0)
        lytics_server.end_scans_after(None)
        lytics_server.total_offset(0)

    reset()
    yield lytics_server
    reset()
