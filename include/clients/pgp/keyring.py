"""Throwaway gpg keyrings and the plumbing around python-gnupg (see `files.py` for encrypt/decrypt).

Every call imports the key it was given into a fresh GNUPGHOME and deletes it afterwards, so no
key outlives the call and no call sees another's keys. python-gnupg quirks handled here (each
commented where it is handled): gpg's stderr decoded as latin-1, passphrases re-encoded so gpg
gets UTF-8, BrokenPipeError when gpg stops reading early, key text in DEBUG logs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import signal
import stat
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import gnupg

from include.common.errors import PermanentError
from include.common.scratch import process_stamp, stamp_is_dead

log = logging.getLogger(__name__)

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

class PgpError(PermanentError):
    """PGP encryption/decryption failed in a way a retry cannot fix (wrong key, bad file, bad passphrase)."""


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
    # mkdtemp creates it 0700; the name carries this process's stamp so that a later
    # sweep_dead_keyrings() can remove it (and stop its agent) if this process is killed.
    home = tempfile.mkdtemp(prefix=f"gpg-{process_stamp()}-", dir=_KEYRING_PARENT)
    try:
        Path(home, "gpg-agent.conf").write_text(_AGENT_CONF)
        try:
            # latin-1 (python-gnupg's default) on purpose, not utf-8: python-gnupg decodes gpg's stderr
            # strictly in this encoding, and gpg echoes raw bytes from the file there (the embedded
            # file name in PLAINTEXT, e.g. a cp1252 "Müller.csv"). Under utf-8 the reader thread dies
            # on such a byte and every later status line — DECRYPTION_OKAY included — is lost.
            # Passphrases are passed through as_latin1() so gpg still receives UTF-8 bytes.
            gpg = gnupg.GPG(gnupghome=home, encoding="latin-1", options=list(_GPG_OPTIONS))
        except (OSError, ValueError) as e:
            raise PgpError(f"cannot run gpg (is GnuPG 2.1+ installed on this worker?): {e}") from e
        yield gpg
    finally:
        _remove_home(home)


_HOME_NAME = re.compile(r"^gpg-(?P<host>[0-9a-f]{8})\.(?P<pid>\d+)\.(?P<start>\d+)-")


def sweep_dead_keyrings(parent: str | None = None) -> list[str]:
    """Stop the gpg-agents of, and delete, the throwaway homes whose process is gone (killed before its
    cleanup ran); the homes deleted. Homes of live processes, other users and other hosts are left alone."""
    parent = parent or _KEYRING_PARENT
    swept = []
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return swept
    for entry in entries:
        match = _HOME_NAME.match(entry.name)
        if match is None or not stamp_is_dead(match):
            continue
        try:
            info = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if info.st_uid != os.getuid() or not stat.S_ISDIR(info.st_mode):
            continue
        _remove_home(entry.path)
        swept.append(entry.path)
    if swept:
        log.info("Removed %d gpg home(s) left by killed tasks (their gpg-agents stopped): %s", len(swept), swept)
    return swept


def _agent_pids(home: str) -> list[int]:
    """This user's gpg-agent processes started for `home` (`gpg-agent --homedir <home> ...`), from /proc."""
    pids = []
    try:
        names = os.listdir("/proc")
    except OSError:
        return pids
    for name in filter(str.isdigit, names):
        try:
            if os.stat(f"/proc/{name}").st_uid != os.getuid():
                continue
            argv = Path(f"/proc/{name}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and os.path.basename(argv[0]) == b"gpg-agent" and home.encode() in argv:
            pids.append(int(name))
    return pids


def _remove_home(home: str) -> None:
    """Stop the home's gpg-agent, then delete the home; cleanup errors are logged, never raised."""
    for args in (["--kill", "gpg-agent"], ["--remove-socketdir"]):  # socketdir: only under /run/user
        try:
            subprocess.run(
                ["gpgconf", "--homedir", home, *args], capture_output=True, timeout=10, check=False
            )
        except (OSError, subprocess.SubprocessError) as e:
            log.debug("gpgconf %s for %s failed: %s", args[0], home, e)
    for pid in _agent_pids(home):  # gpgconf could not reach it (socket gone): stop it directly
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM)
    for _ in range(3):  # the exiting agent may still be unlinking its sockets
        shutil.rmtree(home, ignore_errors=True)
        if not os.path.exists(home):
            return
        time.sleep(0.05)
    log.warning("could not delete the throwaway GNUPGHOME %s", home)


# ----------------------------------------------------------------------------------------------
# Shared plumbing
# ----------------------------------------------------------------------------------------------


class CryptResult(gnupg.Crypt):
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


def run_to_file(gpg: gnupg.GPG, src: Path, dst: Path, call: Callable[[object, str], object]) -> CryptResult:
    """Run one gpg encrypt/decrypt from ``src`` into ``dst`` via a hidden partial file; return its result.

    When gpg stops early (wrong key, garbage input) python-gnupg's writer thread may hit a broken
    pipe, and python-gnupg then raises BrokenPipeError instead of returning the result — although
    gpg's status lines were already read. The result is therefore captured as python-gnupg creates
    it, and the exception swallowed, so the caller can still say *why* gpg stopped.
    """
    created: list[CryptResult] = []

    def make_result(g: gnupg.GPG) -> CryptResult:
        created.append(CryptResult(g))
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
        remove_quietly(partial)


def import_key(
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
        f"{problems or 'gpg found no OpenPGP key in it'} (gpg said: {stderr_tail(result)}); "
        f"it must be the ASCII-armored key, starting with {block}"
    )


def as_latin1(passphrase: str | None) -> str | None:
    """The passphrase as python-gnupg must get it so gpg reads its UTF-8 bytes (what the gpg CLI and
    other OpenPGP tools use): python-gnupg writes it to gpg's stdin encoded as latin-1."""
    return passphrase.encode("utf-8").decode("latin-1") if passphrase else None


def remove_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


# Runs of base64 long enough to be key material (a broken armor line can end up in gpg's messages);
# pure hex (fingerprints, key IDs) is kept. Armor lines are 64 characters.
_BASE64_RUN = re.compile(r"[A-Za-z0-9+/=]{32,}")
# gpg's chatter about setting up the fresh home: true every time, useless in an error message.
_NOISE = ("keybox '", "trustdb created", "directory '")


def stderr_tail(result: object, lines: int = 4) -> str:
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
