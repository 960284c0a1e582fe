"""Case table: PGP data and keys (include/clients/pgp), met on the way in (an encrypted drop is decrypted
with the key of `pgp.decrypt_conn_id`) and on the way out (the CSV is encrypted for `pgp.encrypt_conn_id`).

A case builds, from the session's real gpg key pairs, the fetched file and the keys the transfer gets.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from include.clients.pgp.files import PgpKey
from include.clients.pgp.keyring import PgpError
from include.common.errors import ConfigError

IN = "connection 'braze_pgp'"  # where the decryption key comes from, as messages name it
OUT = "connection 'lytics_pgp'"


@dataclass(frozen=True)
class PgpCase:
    id: str
    # (keys, encrypted export bytes) -> (fetched file name, its bytes, decrypt key, encrypt key)
    make: Callable[[Any, bytes], tuple[str, bytes, PgpKey | None, PgpKey | None]]
    error: type[Exception]
    says: tuple[str, ...]
    secrets: tuple[str, ...] = ()


def private(k, passphrase: str | None = "<own>", key: str | None = None) -> PgpKey:
    return PgpKey(key=k.private_key if key is None else key,
                  passphrase=k.passphrase if passphrase == "<own>" else passphrase, source=IN)


def public(text: str) -> PgpKey:
    return PgpKey(key=text, source=OUT)


def _flip_near_end(data: bytes) -> bytes:
    b = bytearray(data)
    b[-5] ^= 0xFF
    return bytes(b)


def _corrupt_key(armored: str) -> str:
    lines = armored.splitlines()
    middle = len(lines) // 2
    lines[middle] = lines[middle][::-1]  # one base64 line reversed: the CRC no longer matches
    return "\n".join(lines)


CASES: list[PgpCase] = [
    # --- decrypting an encrypted drop ---------------------------------------------------------------
    PgpCase("pgp-wrong-private-key", lambda k, enc: ("users.zip.pgp", enc, private(k.bob), None), PgpError,
            (r"users\.zip\.pgp is encrypted for key ID", IN, r"ask the sender to encrypt for",
             r"or configure the matching private key")),
    PgpCase("pgp-wrong-passphrase", lambda k, enc: ("users.zip.pgp", enc, private(k.alice, "not-the-pass"), None),
            PgpError, (r"bad passphrase", IN, r"could not unlock it to decrypt users\.zip\.pgp"),
            secrets=("not-the-pass",)),
    PgpCase("pgp-missing-passphrase", lambda k, enc: ("users.zip.pgp", enc, private(k.alice, None), None), PgpError,
            (IN, r"protected by a passphrase but none is configured", r"add the passphrase")),
    PgpCase("pgp-passphrase-with-newline",
            lambda k, enc: ("users.zip.pgp", enc, private(k.alice, k.alice.passphrase + "\n"), None), PgpError,
            (r"passphrase", IN, r"line break", r"store it without the trailing newline"), secrets=("alice-pass",)),
    PgpCase("pgp-public-key-instead-of-private",
            lambda k, enc: ("users.zip.pgp", enc, private(k.alice, key=k.alice.public_key), None), PgpError,
            (r"users\.zip\.pgp", IN, r"holds only a public key", r"needs the private key block")),
    PgpCase("pgp-corrupt-private-key",
            lambda k, enc: ("users.zip.pgp", enc, private(k.alice, key=_corrupt_key(k.alice.private_key)), None),
            PgpError, (IN, r"could not be imported", r"must be the ASCII-armored key")),
    PgpCase("pgp-private-key-not-a-key",
            lambda k, enc: ("users.zip.pgp", enc, private(k.alice, key="my key is on the USB stick"), None), PgpError,
            (IN, r"could not be imported", r"BEGIN PGP PRIVATE KEY BLOCK")),
    PgpCase("pgp-private-key-empty", lambda k, enc: ("users.zip.pgp", enc, private(k.alice, key="  \n"), None),
            PgpError, (IN, r"is empty", r"paste the ASCII-armored key")),
    PgpCase("pgp-message-truncated", lambda k, enc: ("users.zip.pgp", enc[: len(enc) // 2], private(k.alice), None),
            PgpError, (r"users\.zip\.pgp", r"truncated or damaged|damaged in transfer",
                       r"ask the sender to send it again|expected a file encrypted for")),
    PgpCase("pgp-message-modified", lambda k, enc: ("users.zip.pgp", _flip_near_end(enc), private(k.alice), None),
            PgpError, (r"users\.zip\.pgp", r"integrity check", r"ask the sender to send it again")),
    PgpCase("pgp-name-but-plain-csv", lambda k, enc: ("users.csv.pgp", b"user_id,email\r\nu1,a\r\n", private(k.alice),
                                                      None), PgpError,
            (r"users\.csv\.pgp is not a PGP file", r"expected a file encrypted for")),
    PgpCase("pgp-empty-file", lambda k, enc: ("users.zip.pgp", b"", private(k.alice), None), PgpError,
            (r"users\.zip\.pgp is not a PGP file",)),
    PgpCase("pgp-password-encrypted", lambda k, enc: ("users.zip.pgp", k.symmetric, private(k.alice), None), PgpError,
            (r"users\.zip\.pgp was encrypted with a password", r"ask the sender to encrypt it for")),
    PgpCase("pgp-garbage-armor",
            lambda k, enc: ("users.zip.asc", b"-----BEGIN PGP MESSAGE-----\n\nhQEMA*garbage*\n-----END PGP MESSAGE-----\n",
                            private(k.alice), None), PgpError,
            (r"users\.zip\.asc", IN, r"truncated or damaged", r"ask the sender to send it again")),
    PgpCase("pgp-encrypted-without-a-decryption-key", lambda k, enc: ("users.zip.pgp", enc, None, None), ConfigError,
            (r"segment 'vip'", r"users\.zip\.pgp", r"PGP-encrypted", r"add the connection holding the private key")),
    # --- encrypting the delivery for Lytics ---------------------------------------------------------
    PgpCase("pgp-encrypt-signing-only-key", lambda k, enc: ("export.zip", k.plain, None, public(k.signonly.public_key)),
            PgpError, (r"cannot encrypt", OUT, r"no encryption subkey", r"ask the recipient for their encryption key")),
    PgpCase("pgp-encrypt-expired-key", lambda k, enc: ("export.zip", k.plain, None, public(k.expired.public_key)),
            PgpError, (r"cannot encrypt", OUT, r"has expired", r"ask the recipient for a current public key")),
    PgpCase("pgp-encrypt-two-keys",
            lambda k, enc: ("export.zip", k.plain, None, public(k.alice.public_key + k.bob.public_key)), PgpError,
            (r"cannot encrypt", OUT, r"holds 2 keys", r"configure exactly one recipient key")),
    PgpCase("pgp-encrypt-corrupt-key",
            lambda k, enc: ("export.zip", k.plain, None, public(_corrupt_key(k.alice.public_key))), PgpError,
            (r"cannot encrypt", OUT, r"could not be imported", r"BEGIN PGP PUBLIC KEY BLOCK")),
    PgpCase("pgp-encrypt-not-a-key", lambda k, enc: ("export.zip", k.plain, None, public("ssh-ed25519 AAAAC3Nza")),
            PgpError, (r"cannot encrypt", OUT, r"could not be imported", r"ASCII-armored key")),
    PgpCase("pgp-encrypt-empty-key", lambda k, enc: ("export.zip", k.plain, None, public("")), PgpError,
            (r"cannot encrypt", OUT, r"is empty", r"paste the ASCII-armored key")),
]
