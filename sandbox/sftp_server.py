"""A small pure-Python SFTP server (asyncssh) for the local demo, where no root/sshd is available.

- password authentication only, one user;
- SFTP only (no shell, exec, SCP or port forwarding);
- every path is confined to ``root`` (asyncssh's virtual chroot: remote ``/upload/x.csv`` is
  ``root/upload/x.csv``);
- an ed25519 host key generated on start (kept in memory), or loaded from / saved to ``host_key_file``
  so the key an Airflow connection pins survives restarts;
- supports what paramiko's ``putfo(confirm=True)``, ``stat``, ``listdir``, ``remove``, ``mkdir`` and
  ``posix_rename`` (OpenSSH's ``posix-rename@openssh.com`` extension, which asyncssh's server advertises and
  implements with ``os.replace``) need.

In a program or test::

    srv = DemoSftpServer(Path("var/sftp"), password="secret").start()
    ...  # srv.port, srv.host_key_line
    srv.stop()

In the foreground::

    python -m sandbox.sftp_server --root var/sftp --port 2222 --password secret

Deliberately self-contained: imports nothing from ``include/`` or ``plugins/``.
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import logging
import os
import secrets
import signal
import sys
import threading
from pathlib import Path

import asyncssh

log = logging.getLogger(__name__)


class _AuthServer(asyncssh.SSHServer):
    """One user, password only; tracks its connections so ``stop()`` can close them."""

    def __init__(self, owner: DemoSftpServer) -> None:
        self._owner = owner
        self._conn: asyncssh.SSHServerConnection | None = None

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self._conn = conn
        self._owner._connections.add(conn)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._conn is not None:
            self._owner._connections.discard(self._conn)

    def begin_auth(self, username: str) -> bool:
        return True  # always require authentication

    def password_auth_supported(self) -> bool:
        return True

    def public_key_auth_supported(self) -> bool:
        return False

    def host_based_auth_supported(self) -> bool:
        return False

    def validate_password(self, username: str, password: str) -> bool:
        user_ok = hmac.compare_digest(username.encode(), self._owner.username.encode())
        password_ok = hmac.compare_digest(password.encode(), self._owner.password.encode())
        return user_ok and password_ok


class DemoSftpServer:
    """An asyncssh SFTP server running its event loop in a background thread."""

    def __init__(
        self,
        root: Path | str,
        host: str = "127.0.0.1",
        port: int = 0,
        username: str = "lytics",
        password: str | None = None,
        *,
        host_key_file: Path | str | None = None,
    ) -> None:
        self.root = Path(root)
        self.host = host
        self.requested_port = port
        self.port = 0
        self.username = username
        # No password given: a random one (read it back from `.password`).
        self.password = password if password is not None else secrets.token_urlsafe(18)
        if not self.password:
            raise ValueError("an empty password is not allowed")
        self.host_key_file = Path(host_key_file) if host_key_file is not None else None
        self.host_key_line = ""
        self._host_key: asyncssh.SSHKey | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._acceptor: asyncssh.SSHAcceptor | None = None
        self._connections: set[asyncssh.SSHServerConnection] = set()

    def __enter__(self) -> DemoSftpServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- host key ------------------------------------------------------------------------------
    def _load_or_create_host_key(self) -> asyncssh.SSHKey:
        if self.host_key_file is not None and self.host_key_file.exists():
            return asyncssh.read_private_key(str(self.host_key_file))
        key = asyncssh.generate_private_key("ssh-ed25519")
        if self.host_key_file is not None:
            self.host_key_file.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.host_key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(key.export_private_key("openssh"))
        return key

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self, timeout: float = 10.0) -> DemoSftpServer:
        if self._thread is not None:
            raise RuntimeError("DemoSftpServer already started")
        self.root.mkdir(parents=True, exist_ok=True)
        self._host_key = self._load_or_create_host_key()
        # "ssh-ed25519 AAAA..." without comment: what an Airflow SFTP connection's `host_key` extra takes.
        self.host_key_line = " ".join(self._host_key.export_public_key("openssh").decode().split()[:2])

        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, name="demo-sftp-server", daemon=True)
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self._listen(), loop).result(timeout)
        except BaseException:
            self.stop()
            raise
        log.info("SFTP server for %s listening on %s:%d", self.root, self.host, self.port)
        return self

    async def _listen(self) -> None:
        root = str(self.root.resolve())
        self._acceptor = await asyncssh.listen(
            self.host,
            self.requested_port,
            server_host_keys=[self._host_key],
            server_factory=lambda: _AuthServer(self),
            sftp_factory=lambda chan: asyncssh.SFTPServer(chan, chroot=root),
            allow_scp=False,
            # No session_factory/process_factory: shell and exec requests are refused.
            agent_forwarding=False,
            x11_forwarding=False,
            allow_pty=False,
            login_timeout=30,
        )
        self.port = self._acceptor.get_port()

    async def _shutdown(self) -> None:
        if self._acceptor is not None:
            self._acceptor.close()
            await self._acceptor.wait_closed()
            self._acceptor = None
        conns = list(self._connections)
        for conn in conns:
            conn.close()
        for conn in conns:
            await conn.wait_closed()

    def stop(self, timeout: float = 10.0) -> None:
        """Close the listener and every open connection, then end the loop thread. Idempotent."""
        loop, thread = self._loop, self._thread
        self._loop = self._thread = None
        if loop is None:
            return
        if thread is not None and thread.is_alive():
            try:
                asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(timeout)
            except Exception:  # shutting down regardless
                log.exception("error while closing the SFTP server")
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout)
        if not loop.is_running():
            loop.close()
        self._connections.clear()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", required=True, type=Path, help="directory served as the SFTP root")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=2222, help="0 picks a free port")
    parser.add_argument("--username", default="lytics")
    parser.add_argument(
        "--password",
        default=os.environ.get("DEMO_SFTP_PASSWORD"),
        help="default: $DEMO_SFTP_PASSWORD, else a random one (printed)",
    )
    parser.add_argument(
        "--host-key-file",
        type=Path,
        help="persist the ed25519 host key here (created if missing) so it stays the same across restarts",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("asyncssh").setLevel(logging.WARNING)

    server = DemoSftpServer(
        args.root, args.host, args.port, args.username, args.password, host_key_file=args.host_key_file
    )
    server.start()
    print(f"SFTP server listening on {server.host}:{server.port}, root {server.root.resolve()}", flush=True)
    print(f"user: {server.username}", flush=True)
    if args.password is None:
        print(f"password: {server.password}", flush=True)
    print(f"host_key: {server.host_key_line}", flush=True)

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        stop.wait()
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
