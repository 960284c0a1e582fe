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
import os
import re
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import gnupg

from include.errors import PermanentError

log = logging.getLogger(__name__)

ENCRYPTED_SUFFIXES = (".pgp", ".gpg", ".asc")

# Throwaway homes live here: gpg-agent puts its sockets in GNUPGHOME and a Unix socket path is
# limited to ~108 bytes, so the prefix must stay short (not pytest's or Airflow's deep temp dirs).
_KEYRING_PARENT = "/tmp"

# gpg-agent re-protects an imported secret key on first use, with an S2K iteration count it
# calibrates at start-up; on these machines that costs ~1.5 s per call. The copy lives only in the
# throwaway home (deleted right after), so the minimum count is enough there.
_AGENT_CONF = "s2k-count 65536\n"

# Loopback pinentry always, not only when a passphrase is given: without it a protected key and
# no passphrase would make gpg-agent try to start a pinentry program on a worker without a tty.
_GPG_OPTIONS = ["--pinentry-mode", "loopback"]

_GPG_ERR_BAD_PASSPHRASE = 11  # libgpg-error code, low 16 bits of "ERROR pkdecrypt_failed <code>"
_HIDDEN_KEY_ID = "0000000000000000"  # ENC_TO for a recipient hidden with --throw-keyids


class PgpError(PermanentError):
    """PGP encryption/decryption failed in a way a retry cannot fix (wrong key, bad file, bad passphrase)."""


def _key_name(kind: str, key_source: str) -> str:
    """How messages name the key: "the PGP public key in connection 'lytics_pgp'" for a location,
    the phrase itself for a ready-made name such as the default "the configured public key"."""
    return key_source if key_source.startswith("the ") else f"the PGP {kind} key in {key_source}"


def is_encrypted_name(name: str) -> bool:
    """True for file names with a PGP suffix (.pgp, .gpg, .asc), case-insensitively."""
    return name.lower().endswith(ENCRYPTED_SUFFIXES)


class _GnupgLogFilter(logging.Filter):
    """Drops two python-gnupg log records.

    "import_keys: …" (DEBUG) holds the first 256 characters of the key text — enough for the secret
    part of an unprotected ed25519 key. "Error sending data" (ERROR, with a BrokenPipeError
    traceback) only means gpg stopped reading early; the PgpError raised here says why.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.msg if isinstance(record.msg, str) else ""
        if msg.startswith("import_keys: "):
            return False
        exc = record.exc_info[1] if record.exc_info else None
        return not (msg == "Error sending data" and isinstance(exc, BrokenPipeError))


logging.getLogger("gnupg").addFilter(_GnupgLogFilter())


@contextmanager
def throwaway_keyring() -> Iterator[gnupg.GPG]:
    """A ``gnupg.GPG`` on a fresh, empty GNUPGHOME (short path, mode 0700), deleted on exit.

    The home's gpg-agent (started by gpg on first secret-key use) is stopped before deletion, also
    when the body raises.
    """
    home = tempfile.mkdtemp(prefix="gpg", dir=_KEYRING_PARENT)  # mkdtemp creates it 0700
    try:
        Path(home, "gpg-agent.conf").write_text(_AGENT_CONF)
        try:
            # latin-1 (python-gnupg's default) on purpose, not utf-8: python-gnupg decodes gpg's stderr
            # strictly in this encoding, and gpg echoes raw bytes from the file there (the embedded
            # file name in PLAINTEXT, e.g. a cp1252 "Müller.csv"). Under utf-8 the reader thread dies
            # on such a byte and every later status line — DECRYPTION_OKAY included — is lost.
            # Passphrases are passed through _as_latin1() so gpg still receives UTF-8 bytes.
            gpg = gnupg.GPG(gnupghome=home, encoding="latin-1", options=list(_GPG_OPTIONS))
        except (OSError, ValueError) as e:
            raise PgpError(f"cannot run gpg (is GnuPG 2.1+ installed on this worker?): {e}") from e
        yield gpg
    finally:
        _remove_home(home)


def _remove_home(home: str) -> None:
    """Stop the home's gpg-agent, then delete the home; cleanup errors are logged, never raised."""
    for args in (["--kill", "gpg-agent"], ["--remove-socketdir"]):  # socketdir: only under /run/user
        try:
            subprocess.run(
                ["gpgconf", "--homedir", home, *args], capture_output=True, timeout=10, check=False
            )
        except (OSError, subprocess.SubprocessError) as e:
            log.debug("gpgconf %s for %s failed: %s", args[0], home, e)
    for _ in range(3):  # the exiting agent may still be unlinking its sockets
        shutil.rmtree(home, ignore_errors=True)
        if not os.path.exists(home):
            return
        time.sleep(0.05)
    log.warning("could not delete the throwaway GNUPGHOME %s", home)


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
            keys = _import_key(gpg, public_key, key_source, "encrypt", src, secret=False)
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
            result = _run_to_file(
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
                    f"gpg said: {_stderr_tail(result)}"
                )
        return fpr
    except BaseException:
        _remove(dst)  # never leave an older file that could pass for this run's output
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
            keys = _import_key(gpg, private_key, key_source, "decrypt", src, secret=True)
            result = _run_to_file(
                gpg,
                src,
                dst,
                # --skip-verify: a signed message from a signer whose key we do not hold decrypts fine
                # but makes gpg exit 2; verifying the sender is not this function's job.
                lambda fh, out: gpg.decrypt_file(
                    fh, passphrase=_as_latin1(passphrase), output=out, extra_args=["--skip-verify"]
                ),
            )
            if not (result.ok and result.returncode == 0 and "BADMDC" not in result.status_keys):
                raise PgpError(
                    _decrypt_failure_message(result, src, keys, key_source, passphrase is not None)
                )
    except BaseException:
        _remove(dst)  # never leave an older file that could pass for this run's output
        raise


def _decrypt_failure_message(
    result: _CryptResult, src: Path, keys: list[dict], key_source: str, have_passphrase: bool
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
        f"(gpg status {result.status or 'none'!r}, exit code {result.returncode}); gpg said: {_stderr_tail(result)}"
    )


def _none_is_mine(recipients: list[str], keys: list[dict]) -> bool:
    mine = {kid for k in keys for kid in _key_ids(k)}
    return not any(r in mine for r in recipients)


def _key_ids(key: dict) -> list[str]:
    return [key["keyid"], *key.get("subkey_info", {}).keys()]


def _describe_keys(keys: list[dict]) -> str:
    """'key A495… (key IDs 1186…, FD32…)' — fingerprints plus the IDs gpg prints in ENC_TO."""
    return "; ".join(f"key {k['fingerprint']} (key IDs {', '.join(_key_ids(k))})" for k in keys)


# ----------------------------------------------------------------------------------------------
# Shared plumbing
# ----------------------------------------------------------------------------------------------


class _CryptResult(gnupg.Crypt):
    """python-gnupg's Crypt result, also keeping every status line (ENC_TO, NO_SECKEY, ERROR …)."""

    def __init__(self, gpg: gnupg.GPG) -> None:
        super().__init__(gpg)
        self.statuses: list[tuple[str, str]] = []

    def handle_status(self, key: str, value: str) -> None:
        self.statuses.append((key, value))
        super().handle_status(key, value)

    @property
    def status_keys(self) -> set[str]:
        return {k for k, _ in self.statuses}

    def values(self, key: str) -> list[str]:
        return [v for k, v in self.statuses if k == key]


def _run_to_file(gpg: gnupg.GPG, src: Path, dst: Path, call: Callable[[object, str], object]) -> _CryptResult:
    """Run one gpg encrypt/decrypt from ``src`` into ``dst`` via a hidden partial file; return its result.

    When gpg stops early (wrong key, garbage input) python-gnupg's writer thread may hit a broken
    pipe, and python-gnupg then raises BrokenPipeError instead of returning the result — although
    gpg's status lines were already read. The result is therefore captured as python-gnupg creates
    it, and the exception swallowed, so the caller can still say *why* gpg stopped.
    """
    created: list[_CryptResult] = []

    def make_result(g: gnupg.GPG) -> _CryptResult:
        created.append(_CryptResult(g))
        return created[-1]

    gpg.result_map = {**gpg.result_map, "crypt": make_result}
    partial = dst.with_name(f".{dst.name}.{uuid.uuid4().hex[:8]}.partial")
    try:
        # Created 0600 before gpg writes to it (gpg keeps the mode): decrypted files hold personal data.
        os.close(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        try:
            with open(src, "rb") as fh:
                call(fh, str(partial))
        except BrokenPipeError:
            if not created:
                raise
        result = created[-1]
        if result.ok and result.returncode == 0:
            os.replace(partial, dst)
        return result
    finally:
        _remove(partial)


def _import_key(
    gpg: gnupg.GPG, key_text: str, key_source: str, verb: str, src: Path, *, secret: bool
) -> list[dict]:
    """Import ``key_text``; return the primary keys now in the keyring (secret ones if ``secret``)."""
    kind = "private" if secret else "public"
    block = f"-----BEGIN PGP {kind.upper()} KEY BLOCK-----"
    if not isinstance(key_text, str | bytes) or not key_text.strip():
        raise PgpError(
            f"cannot {verb} {src.name}: {key_source} is empty; paste the ASCII-armored key ({block} …)"
        )
    result = gpg.import_keys(key_text)
    keys = gpg.list_keys(secret=secret)
    if keys:
        return keys
    if secret and result.fingerprints:
        raise PgpError(
            f"cannot {verb} {src.name}: {key_source} holds only a public key ({result.fingerprints[0]}); "
            f"decryption needs the private key block ({block} …)"
        )
    problems = "; ".join(sorted({r.get("text", "").strip() for r in result.results if r.get("text")}))
    raise PgpError(
        f"cannot {verb} {src.name}: {key_source} could not be imported: "
        f"{problems or 'gpg found no OpenPGP key in it'} (gpg said: {_stderr_tail(result)}); "
        f"it must be the ASCII-armored key, starting with {block}"
    )


def _as_latin1(passphrase: str | None) -> str | None:
    """The passphrase as python-gnupg must get it so gpg reads its UTF-8 bytes (what the gpg CLI and
    other OpenPGP tools use): python-gnupg writes it to gpg's stdin encoded as latin-1."""
    return passphrase.encode("utf-8").decode("latin-1") if passphrase else None


def _require_input(src: Path, verb: str) -> None:
    if not src.is_file():
        raise PgpError(f"cannot {verb} {src}: no such file")


def _remove(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


# Runs of base64 long enough to be key material (a broken armor line can end up in gpg's messages);
# pure hex (fingerprints, key IDs) is kept. Armor lines are 64 characters.
_BASE64_RUN = re.compile(r"[A-Za-z0-9+/=]{32,}")
# gpg's chatter about setting up the fresh home: true every time, useless in an error message.
_NOISE = ("keybox '", "trustdb created", "directory '")


def _stderr_tail(result: object, lines: int = 4) -> str:
    """The last human-readable lines gpg wrote (status lines dropped), with base64 runs redacted."""
    text = getattr(result, "stderr", "") or ""
    # python-gnupg decoded it as latin-1 (see throwaway_keyring); gpg writes UTF-8
    text = text.encode("latin-1", "replace").decode("utf-8", "replace")
    human = [
        ln.strip().removeprefix("gpg: ")
        for ln in text.splitlines()
        if ln.strip() and not ln.startswith("[GNUPG:]") and not any(n in ln for n in _NOISE)
    ]
    tail = " | ".join(human[-lines:]) or "nothing"
    return _BASE64_RUN.sub(
        lambda m: m.group(0) if re.fullmatch(r"[0-9A-F]+", m.group(0)) else "[redacted]", tail
    )
