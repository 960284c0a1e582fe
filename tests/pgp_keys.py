"""Throwaway PGP key pairs for tests, made with the real gpg CLI (ed25519 + cv25519: milliseconds).

Keys are generated with the plain ``gpg`` command, not python-gnupg, so the tests also prove that
what the code under test does (passphrase encoding, key import) matches the reference tool.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from functools import cache

from include.clients.pgp.files import throwaway_keyring

# A moment long ago, for keys that must already be expired (gpg's --faked-system-time, "!" = frozen).
_LONG_AGO = "20200101T000000!"


@dataclass(frozen=True)
class KeyPair:
    name: str
    public_key: str  # ASCII-armored public key block
    private_key: str  # ASCII-armored private key block (protected with `passphrase` if set)
    passphrase: str | None
    fingerprint: str  # primary key, 40 hex digits
    encryption_key_id: str  # long ID of the cv25519 subkey: what gpg reports as ENC_TO ("" if sign_only)


@cache  # functools.cache = lru_cache(maxsize=None)
def make_keypair(
    name: str, passphrase: str | None = "test-pass", *, expired: bool = False, sign_only: bool = False
) -> KeyPair:
    """A new key pair for user ID ``name`` (cached per arguments within the process).

    ``passphrase=None`` makes an unprotected key; ``expired=True`` one that expired in 2021;
    ``sign_only=True`` one without an encryption subkey.
    """
    with throwaway_keyring() as gpg:
        home = gpg.gnupghome

        def run(*args: str, faked_time: bool = False) -> str:
            cmd = ["gpg", "--homedir", home, "--batch", "--pinentry-mode", "loopback", "--passphrase-fd", "0"]
            if faked_time:
                cmd += ["--faked-system-time", _LONG_AGO]
            done = subprocess.run(
                [*cmd, *args], input=f"{passphrase or ''}\n".encode(), capture_output=True, check=False
            )
            if done.returncode != 0:
                raise RuntimeError(f"gpg {args[0]} failed: {done.stderr.decode(errors='replace')}")
            return done.stdout.decode()

        expiry = "1y" if expired else "never"
        uid = f"{name} <{name.lower().replace(' ', '.')}@example.invalid>"
        run("--quick-gen-key", uid, "ed25519", "sign", expiry, faked_time=expired)
        fingerprint = _first_field(run("--with-colons", "--list-keys", uid), "fpr", 9)
        encryption_key_id = ""
        if not sign_only:
            run("--quick-add-key", fingerprint, "cv25519", "encr", expiry, faked_time=expired)
            encryption_key_id = _first_field(run("--with-colons", "--list-keys", uid), "sub", 4)
        return KeyPair(
            name=name,
            public_key=run("--armor", "--export", fingerprint),
            private_key=run("--armor", "--export-secret-keys", fingerprint),
            passphrase=passphrase,
            fingerprint=fingerprint,
            encryption_key_id=encryption_key_id,
        )


def _first_field(colons: str, record: str, index: int) -> str:
    """Field ``index`` of the first ``record`` line in gpg's --with-colons output."""
    for line in colons.splitlines():
        fields = line.split(":")
        if fields[0] == record:
            return fields[index]
    raise RuntimeError(f"no {record!r} record in gpg output:\n{colons}")
