"""Encrypt and decrypt files with PGP (gpg through python-gnupg), one throwaway keyring per call.

Every call imports the key it was given into a fresh GNUPGHOME and deletes it afterwards, so no
key outlives the call and no call sees another's keys. Files stream through gpg (python-gnupg's
``output=`` makes gpg write the result to disk), so memory stays flat for multi-GB files. Output
goes to a hidden ``.partial`` file beside ``dst`` and is renamed into place only on success: a
failed or killed call never leaves a half-written ``dst``.

Error messages name the file, the key (fingerprint / key IDs) and the fix; they never contain the
passphrase or key material. Plain Python: no Airflow import (the hooks pass in key text).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from include.clients.pgp.keyring import (
    CryptResult,
    PgpError,
    as_latin1,
    import_key,
    remove_quietly,
    run_to_file,
    stderr_tail,
    throwaway_keyring,
)

log = logging.getLogger(__name__)

ENCRYPTED_SUFFIXES = (".pgp", ".gpg", ".asc")


@dataclass(frozen=True)
class PgpKey:
    """Key material from a Connection; `source` names it in messages (never the key itself)."""

    key: str
    passphrase: str | None = field(default=None, repr=False)
    source: str = "the configured key"

_GPG_ERR_BAD_PASSPHRASE = 11  # libgpg-error code, low 16 bits of "ERROR pkdecrypt_failed <code>"
_HIDDEN_KEY_ID = "0000000000000000"  # ENC_TO for a recipient hidden with --throw-keyids


def _key_name(kind: str, key_source: str) -> str:
    """How messages name the key: "the PGP public key in connection 'lytics_pgp'" for a location,
    the phrase itself for a ready-made name such as the default "the configured public key"."""
    return key_source if key_source.startswith("the ") else f"the PGP {kind} key in {key_source}"


def is_encrypted_name(name: str) -> bool:
    """True for file names with a PGP suffix (.pgp, .gpg, .asc), case-insensitively."""
    return name.lower().endswith(ENCRYPTED_SUFFIXES)


# ----------------------------------------------------------------------------------------------
# Encrypt
# ----------------------------------------------------------------------------------------------


def encrypt_file(
    src: Path,
    dst: Path,
    public_key: str,
    *,
    compress: bool = True,
    key_source: str = "the configured public key",
) -> str:
    """Encrypt ``src`` into ``dst`` (binary OpenPGP, not armored) for ``public_key``; return its fingerprint.

    ``public_key`` is the ASCII-armored key block (a private key block works too: gpg imports its
    public part). It must hold exactly one key, able to encrypt. ``compress=False`` turns gpg's
    compression off — several times faster, and pointless when ``src`` is already gzip/zip.
    ``key_source`` says where the key comes from, for error messages: ``"connection 'lytics_pgp'"``
    reads "the PGP public key in connection 'lytics_pgp'" (a phrase starting with "the " is used
    as is). Raises :class:`PgpError`; on failure ``dst`` does not exist afterwards.

    Example::

        fpr = encrypt_file(Path("users.csv"), Path("users.csv.pgp"), conn.extra_dejson["public_key"],
                           key_source="connection 'lytics_pgp'")
    """
    src, dst = Path(src), Path(dst)
    key_source = _key_name("public", key_source)
    try:
        _require_input(src, "encrypt")
        with throwaway_keyring() as gpg:
            keys = import_key(gpg, public_key, key_source, "encrypt", src, secret=False)
            if len(keys) != 1:
                fprs = ", ".join(k["fingerprint"] for k in keys)
                raise PgpError(
                    f"cannot encrypt {src.name}: {key_source} holds {len(keys)} keys ({fprs}); "
                    "configure exactly one recipient key"
                )
            key = keys[0]
            fpr = key["fingerprint"]
            _require_encryption_capable(key, key_source, src)
            extra = [] if compress else ["--compress-algo", "none", "-z", "0"]
            result = run_to_file(
                gpg,
                src,
                dst,
                lambda fh, out: gpg.encrypt_file(
                    fh, [fpr], armor=False, output=out, always_trust=True, extra_args=extra
                ),
            )
            if not (result.ok and result.returncode == 0):
                raise PgpError(
                    f"PGP encryption of {src.name} for key {fpr} ({key_source}) failed: "
                    f"gpg status {result.status or 'none'!r}, exit code {result.returncode}; "
                    f"gpg said: {stderr_tail(result)}"
                )
        return fpr
    except BaseException:
        remove_quietly(dst)  # never leave an older file that could pass for this run's output
        raise


def _require_encryption_capable(key: dict, key_source: str, src: Path) -> None:
    """gpg would only say "Unusable public key"; say which of the usual reasons it is."""
    if "E" in (key.get("cap") or ""):  # upper case: the key as a whole can encrypt right now
        return
    fpr = key["fingerprint"]
    if key.get("trust") == "e" or _all_encryption_subkeys(key, "e"):
        why = "it has expired; ask the recipient for a current public key (or an extended expiry date)"
    elif key.get("trust") == "r" or _all_encryption_subkeys(key, "r"):
        why = "it has been revoked; ask the recipient for their new public key"
    elif not any("e" in (sub.get("cap") or "") for sub in key.get("subkey_info", {}).values()):
        why = "it has no encryption subkey (a signing-only key); ask the recipient for their encryption key"
    else:
        why = "gpg considers none of its encryption subkeys usable (expired or revoked)"
    raise PgpError(f"cannot encrypt {src.name} for key {fpr} ({key_source}): {why}")


def _all_encryption_subkeys(key: dict, trust: str) -> bool:
    subs = [s for s in key.get("subkey_info", {}).values() if "e" in (s.get("cap") or "")]
    return bool(subs) and all(s.get("trust") == trust for s in subs)


# ----------------------------------------------------------------------------------------------
# Decrypt
# ----------------------------------------------------------------------------------------------


def decrypt_file(
    src: Path,
    dst: Path,
    private_key: str,
    passphrase: str | None,
    *,
    key_source: str = "the configured private key",
) -> None:
    """Decrypt ``src`` (binary or ASCII-armored OpenPGP) into ``dst`` with ``private_key``.

    ``private_key`` is the ASCII-armored private key block; ``passphrase`` unlocks it (None or ""
    for an unprotected key). Signatures on the message are not checked (the signer's key is not
    configured). ``key_source`` says where the key comes from, as for :func:`encrypt_file`
    (``"connection 'braze_drop_pgp'"``). Raises :class:`PgpError` saying whether the key could not be
    imported, the file is for another key, the passphrase is wrong or missing, or the file is not
    PGP at all; on failure ``dst`` does not exist afterwards.
    """
    src, dst = Path(src), Path(dst)
    key_source = _key_name("private", key_source)
    try:
        if passphrase is not None and any(c in passphrase for c in "\r\n\0"):
            # gpg reads the passphrase as one line from its stdin, in front of the data; anything after
            # a line break would be taken as data (python-gnupg refuses it for the same reason).
            raise PgpError(
                f"the passphrase for {key_source} contains a line break or NUL character, which gpg cannot "
                "take; store it without the trailing newline"
            )
        # python-gnupg adds --passphrase-fd 0 for "" but writes nothing, so gpg would eat the first line
        # of the ciphertext as the passphrase; "" means "no passphrase" anyway.
        passphrase = passphrase or None
        _require_input(src, "decrypt")
        with throwaway_keyring() as gpg:
            keys = import_key(gpg, private_key, key_source, "decrypt", src, secret=True)
            result = run_to_file(
                gpg,
                src,
                dst,
                # --skip-verify: a signed message from a signer whose key we do not hold decrypts fine
                # but makes gpg exit 2; verifying the sender is not this function's job.
                lambda fh, out: gpg.decrypt_file(
                    fh, passphrase=as_latin1(passphrase), output=out, extra_args=["--skip-verify"]
                ),
            )
            if not (result.ok and result.returncode == 0 and "BADMDC" not in result.status_keys):
                raise PgpError(
                    _decrypt_failure_message(result, src, keys, key_source, passphrase is not None)
                )
    except BaseException:
        remove_quietly(dst)  # never leave an older file that could pass for this run's output
        raise


def _decrypt_failure_message(
    result: CryptResult, src: Path, keys: list[dict], key_source: str, have_passphrase: bool
) -> str:
    """Turn gpg's status lines into the one sentence the on-call person needs."""
    name = src.name
    mine = _describe_keys(keys)
    fprs = " or ".join(k["fingerprint"] for k in keys)
    enc_to = result.values("ENC_TO")
    recipients = [v.split()[0] for v in enc_to]
    no_seckey = result.values("NO_SECKEY")
    pk_errors = [v.split() for v in result.values("ERROR") if v.startswith("pkdecrypt_failed")]
    if not recipients and "NEED_PASSPHRASE_SYM" in result.status_keys:
        return (
            f"{name} was encrypted with a password (symmetric encryption), not for a public key; ask the "
            f"sender to encrypt it for {fprs} ({key_source})"
        )
    if not recipients and "BEGIN_DECRYPTION" not in result.status_keys:
        if "PLAINTEXT" in result.status_keys:
            return f"{name} is a PGP message but not encrypted (only signed or packed); expected an encrypted file"
        return (
            f"{name} is not a PGP file: gpg found no OpenPGP data in it (plain CSV/zip, or damaged in "
            f"transfer?); expected a file encrypted for {fprs}"
        )
    if "NEED_PASSPHRASE" in result.status_keys and not have_passphrase:
        return (
            f"{key_source}, {mine}, is protected by a passphrase but none is configured; add the "
            f"passphrase to decrypt {name}"
        )
    if any(
        len(e) > 1 and e[1].isdigit() and int(e[1]) & 0xFFFF == _GPG_ERR_BAD_PASSPHRASE for e in pk_errors
    ):
        if not have_passphrase:
            return (
                f"{key_source}, {mine}, needs a passphrase but none is configured; add it to decrypt {name}"
            )
        return f"bad passphrase for {key_source}, {mine}: gpg could not unlock it to decrypt {name}"
    if (
        recipients
        and (no_seckey or "DECRYPTION_FAILED" in result.status_keys)
        and _none_is_mine(recipients, keys)
    ):
        if all(r == _HIDDEN_KEY_ID for r in recipients):
            return (
                f"{name} hides its recipients' key IDs and {key_source}, {mine}, cannot decrypt it; ask the "
                f"sender to encrypt for {fprs} or configure the matching private key"
            )
        return (
            f"{name} is encrypted for key ID(s) {', '.join(recipients)}, but {key_source} is {mine} — ask the "
            f"sender to encrypt for {fprs} or configure the matching private key"
        )
    if "BADMDC" in result.status_keys:
        return f"{name} failed its integrity check (truncated, modified or damaged in transfer); ask the sender to send it again"
    return (
        f"PGP decryption of {name} with {key_source}, {mine}, failed — the file looks truncated or damaged "
        f"(gpg status {result.status or 'none'!r}, exit code {result.returncode}); gpg said: {stderr_tail(result)}. "
        f"Ask the sender to send it again"
    )


def _none_is_mine(recipients: list[str], keys: list[dict]) -> bool:
    mine = {kid for k in keys for kid in _key_ids(k)}
    return not any(r in mine for r in recipients)


def _key_ids(key: dict) -> list[str]:
    return [key["keyid"], *key.get("subkey_info", {}).keys()]


def _describe_keys(keys: list[dict]) -> str:
    """'key A495… (key IDs 1186…, FD32…)' — fingerprints plus the IDs gpg prints in ENC_TO."""
    return "; ".join(f"key {k['fingerprint']} (key IDs {', '.join(_key_ids(k))})" for k in keys)


def _require_input(src: Path, verb: str) -> None:
    if not src.is_file():
        raise PgpError(f"cannot {verb} {src}: no such file")
