"""Case table: what an SFTP server (the real OpenSSH sshd of tests/conftest.py) can answer.

`settings(server, ctx)` makes the connection settings (a wrong password, another host key...),
`target` prepares the remote directory ("missing", "root-owned", "tmpfs-ro", "tmpfs-full", "file",
"dir-at-final-name" or None for /upload), `via` is the call: `deliver` (the final upload) or
`check_target` (the fail-fast check before Braze is asked for anything).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from include.clients.sftp import RemoteStorageFullError, RemoteWriteDeniedError, SftpSettings
from include.common.errors import AuthError, ConfigError, NotFoundError, PermanentError, TransientError

CONN = r"connection 'lytics_sftp'"


@dataclass(frozen=True)
class SftpCase:
    id: str
    settings: Callable[[Any, Any], SftpSettings]
    error: type[Exception]
    says: tuple[str, ...]
    target: str | None = None
    via: str = "deliver"


def password(server, _ctx=None) -> SftpSettings:
    return SftpSettings(host=server.host, port=server.port, username=server.password_user, password=server.password,
                        host_key=server.host_key_line, name="lytics_sftp", timeout=5)


def key(server, _ctx=None) -> SftpSettings:
    return SftpSettings(host=server.host, port=server.port, username=server.key_user, private_key=server.private_key_pem,
                        host_key=server.host_key_line, name="lytics_sftp", timeout=5)


def other_ed25519_pem(passphrase: bytes | None = None) -> str:
    encryption = serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption()
    return Ed25519PrivateKey.generate().private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                                      encryption).decode()


def other_host_key_line() -> str:
    public = Ed25519PrivateKey.generate().public_key()
    return public.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()


def ecdsa_host_key_line() -> str:
    public = ec.generate_private_key(ec.SECP256R1()).public_key()
    return public.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()


def with_(**changes) -> Callable[[Any, Any], SftpSettings]:
    return lambda server, ctx: replace(password(server), **{k: v(server, ctx) if callable(v) else v
                                                            for k, v in changes.items()})


def with_key(**changes) -> Callable[[Any, Any], SftpSettings]:
    return lambda server, ctx: replace(key(server), **{k: v(server, ctx) if callable(v) else v
                                                       for k, v in changes.items()})


CASES: list[SftpCase] = [
    # --- who we are --------------------------------------------------------------------------------------
    SftpCase("sftp-wrong-password", with_(password="not-the-password"), AuthError,
             (CONN, r"bltest_pw@127\.0\.0\.1", r"refused our credentials", r"check the login and password")),
    SftpCase("sftp-wrong-password-at-target-check", with_(password="not-the-password"), AuthError,
             (CONN, r"refused our credentials"), via="check_target"),
    SftpCase("sftp-unknown-user", with_(username="nobody_here"), AuthError,
             (CONN, r"nobody_here@", r"refused our credentials")),
    SftpCase("sftp-wrong-private-key", with_key(private_key=lambda s, c: other_ed25519_pem()), AuthError,
             (CONN, r"bltest_key@", r"refused our credentials", r"private key")),
    SftpCase("sftp-private-key-garbage", with_key(private_key="-----BEGIN OPENSSH PRIVATE KEY-----\nnope\n"), ConfigError,
             (CONN, r"private key could not be read", r"paste the whole key including the BEGIN/END lines")),
    SftpCase("sftp-private-key-needs-passphrase", with_key(private_key=lambda s, c: other_ed25519_pem(b"pw")),
             ConfigError, (CONN, r"private key is encrypted", r"private_key_passphrase")),
    # --- who they are ------------------------------------------------------------------------------------
    SftpCase("sftp-host-key-changed", with_(host_key=lambda s, c: other_host_key_line()), AuthError,
             (CONN, r"host key of 127\.0\.0\.1:\d+ CHANGED", r"SHA256:", r"Do not deliver until you know why",
              r"update the extra 'host_key'")),
    SftpCase("sftp-host-key-changed-at-target-check", with_(host_key=lambda s, c: other_host_key_line()), AuthError,
             (CONN, r"CHANGED"), via="check_target"),
    SftpCase("sftp-host-key-of-another-type", with_(host_key=lambda s, c: ecdsa_host_key_line()), AuthError,
             (CONN, r"CHANGED: it presents SHA256:.* but SHA256:.* is pinned", r"update the extra 'host_key'")),
    SftpCase("sftp-host-key-garbage", with_(host_key="ssh-ed25519 not*base64"), ConfigError,
             (CONN, r"extra 'host_key' must be a public key like 'ssh-ed25519 AAAA", r"ssh-keyscan -p \d+ 127\.0\.0\.1")),
    SftpCase("sftp-no-host-key-pinned", with_(host_key=None), AuthError,
             (CONN, r"no host key is pinned", r"Add extra 'host_key'", r"no_host_key_check")),
    # --- where they are ----------------------------------------------------------------------------------
    SftpCase("sftp-port-closed", with_(port=1, timeout=2), TransientError,
             (CONN, r"cannot reach 127\.0\.0\.1:1", r"may pass on its own.*retried later")),
    SftpCase("sftp-not-an-ssh-server", with_(port=lambda s, c: c.odd_http.port, timeout=2), TransientError,
             (CONN, r"SSH to 127\.0\.0\.1:\d+ failed", r"retried later")),
    # --- where the file goes -----------------------------------------------------------------------------
    SftpCase("sftp-remote-dir-missing", password, NotFoundError,
             (CONN, r"remote directory '/missing' does not exist", r"fix remote_dir .* or create the directory"),
             target="missing"),
    SftpCase("sftp-remote-dir-missing-at-target-check", password, NotFoundError,
             (CONN, r"'/missing' does not exist"), target="missing", via="check_target"),
    SftpCase("sftp-remote-dir-is-a-file", password, PermanentError,
             (CONN, r"'/upload/notadir' .* exists but is not a directory", r"fix remote_dir"), target="file"),
    SftpCase("sftp-permission-denied", password, RemoteWriteDeniedError,
             (CONN, r"bltest_pw may not write to '/locked/", r"permission denied", r"Fix the directory's permissions",
              r"Nothing was delivered"), target="root-owned"),
    SftpCase("sftp-permission-denied-at-target-check", password, RemoteWriteDeniedError,
             (CONN, r"may not write", r"test write before the export starts; nothing was delivered"),
             target="root-owned", via="check_target"),
    SftpCase("sftp-read-only-filesystem", password, RemoteWriteDeniedError,
             (CONN, r"'/ro' is on a read-only filesystem", r"make it writable, or change remote_dir"),
             target="tmpfs-ro"),
    SftpCase("sftp-disk-full", password, RemoteStorageFullError,
             (CONN, r"could not store '/full/vip_20261123\.csv' \(262,144 bytes\)", r"disk or the account's quota is full",
              r"Free space on the server", r"final name was not touched"), target="tmpfs-full"),
    SftpCase("sftp-final-name-is-a-directory", password, PermanentError,
             (CONN, r"refused renaming into place '/upload/vip_20261123\.csv'", r"Check the server"),
             target="dir-at-final-name"),
]
