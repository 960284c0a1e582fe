"""include/clients/pgp/files.py against the real gpg binary — no mocks; the gpg CLI is the reference."""

from __future__ import annotations

import gzip
import io
import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from include.clients.pgp import keyring as pgp_keyring
from include.clients.pgp.files import (
    PgpError,
    decrypt_file,
    encrypt_file,
    is_encrypted_name,
    throwaway_keyring,
)
from include.common.errors import PermanentError
from tests.pgp_keys import KeyPair, make_keypair

ROW = "42,zoë.müller@example.com,Zoë,Müller,東京,🎉 fan,2026-11-23T00:00:00Z\n"


@pytest.fixture(scope="module")
def alice() -> KeyPair:
    return make_keypair("Alice")


@pytest.fixture(scope="module")
def bob() -> KeyPair:
    return make_keypair("Bob")


@pytest.fixture(scope="module")
def plain_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """~3 MB of CSV with non-ASCII text (and a row number so it does not compress to nothing)."""
    path = tmp_path_factory.mktemp("pgp") / "users_20261123.csv"
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("id,email,first_name,last_name,city,note,updated_at\n")
        for i in range(40_000):
            fh.write(f"{i},{ROW}")
    assert path.stat().st_size > 3_000_000
    return path


@pytest.fixture(scope="module")
def for_bob(plain_csv: Path, bob: KeyPair, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """plain_csv encrypted for Bob by the code under test."""
    dst = tmp_path_factory.mktemp("pgp") / "users_20261123.csv.pgp"
    encrypt_file(plain_csv, dst, bob.public_key)
    return dst


def gpg_cli(home: str, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess:
    """The plain gpg CLI on `home`; passphrase (if any) on stdin, like a human script would do it."""
    cmd = ["gpg", "--homedir", home, "--batch", "--yes", "--pinentry-mode", "loopback", *args]
    done = subprocess.run(cmd, input=stdin, capture_output=True, check=False)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    return done


def cli_encrypt(src: Path, dst: Path, key: KeyPair, *extra: str) -> None:
    with throwaway_keyring() as gpg:
        gpg_cli(gpg.gnupghome, "--import", stdin=key.public_key.encode())
        gpg_cli(
            gpg.gnupghome, "--trust-model", "always", "-r", key.fingerprint, *extra,
            "--encrypt", "-o", str(dst), str(src),
        )  # fmt: skip


def secret_fragments(key: KeyPair) -> list[str]:
    """Lines of the armored private key: none of them may ever show up in a message."""
    return [ln for ln in key.private_key.splitlines() if len(ln) > 20 and not ln.startswith("-----")]


def assert_clean(message: str, key: KeyPair, *passphrases: str | None) -> None:
    for pw in (key.passphrase, *passphrases):
        if pw:
            assert pw not in message
    assert not any(fragment in message for fragment in secret_fragments(key))


# ------------------------------------------------------------------------------------------------
# Happy paths
# ------------------------------------------------------------------------------------------------


def test_encrypted_names() -> None:
    assert is_encrypted_name("users.csv.pgp")
    assert is_encrypted_name("USERS.CSV.GPG")
    assert is_encrypted_name("users.csv.asc")
    assert not is_encrypted_name("users.csv")
    assert not is_encrypted_name("users.pgp.csv")
    assert issubclass(PgpError, PermanentError)


def test_round_trip_binary(plain_csv: Path, for_bob: Path, bob: KeyPair, tmp_path: Path) -> None:
    head = for_bob.read_bytes()[:64]
    assert not head.startswith(b"-----BEGIN PGP")
    assert head[0] & 0x80, "first byte must be a binary OpenPGP packet tag"
    assert for_bob.stat().st_size < plain_csv.stat().st_size / 3  # gpg compressed it

    out = tmp_path / "users.csv"
    decrypt_file(for_bob, out, bob.private_key, bob.passphrase)
    assert out.read_bytes() == plain_csv.read_bytes()
    assert out.stat().st_mode & 0o077 == 0, "decrypted personal data must not be group/world readable"
    assert [p.name for p in tmp_path.iterdir()] == ["users.csv"], "no .partial file left beside it"


def test_returns_recipient_fingerprint_and_overwrites_dst(
    plain_csv: Path, bob: KeyPair, tmp_path: Path
) -> None:
    dst = tmp_path / "out.pgp"
    dst.write_text("an older file")
    assert encrypt_file(plain_csv, dst, bob.public_key) == bob.fingerprint
    out = tmp_path / "out.csv"
    decrypt_file(dst, out, bob.private_key, bob.passphrase)
    assert out.read_bytes() == plain_csv.read_bytes()


def test_without_compression(plain_csv: Path, bob: KeyPair, tmp_path: Path) -> None:
    dst = tmp_path / "out.pgp"
    encrypt_file(plain_csv, dst, bob.public_key, compress=False)
    assert dst.stat().st_size >= plain_csv.stat().st_size  # not compressed
    out = tmp_path / "out.csv"
    decrypt_file(dst, out, bob.private_key, bob.passphrase)
    assert out.read_bytes() == plain_csv.read_bytes()


def test_gpg_cli_decrypts_our_output(plain_csv: Path, for_bob: Path, bob: KeyPair, tmp_path: Path) -> None:
    out = tmp_path / "cli.csv"
    with throwaway_keyring() as gpg:
        gpg_cli(gpg.gnupghome, "--import", stdin=bob.private_key.encode())
        gpg_cli(
            gpg.gnupghome, "--passphrase-fd", "0", "--decrypt", "-o", str(out), str(for_bob),
            stdin=f"{bob.passphrase}\n".encode(),
        )  # fmt: skip
    assert out.read_bytes() == plain_csv.read_bytes()


def test_decrypts_ascii_armored_file_from_gpg_cli(plain_csv: Path, bob: KeyPair, tmp_path: Path) -> None:
    armored = tmp_path / "users.csv.asc"
    cli_encrypt(plain_csv, armored, bob, "--armor")
    assert armored.read_bytes().startswith(b"-----BEGIN PGP MESSAGE-----")
    out = tmp_path / "users.csv"
    decrypt_file(armored, out, bob.private_key, bob.passphrase)
    assert out.read_bytes() == plain_csv.read_bytes()


def test_private_key_accepted_as_public_key(plain_csv: Path, bob: KeyPair, tmp_path: Path) -> None:
    dst = tmp_path / "out.pgp"
    assert encrypt_file(plain_csv, dst, bob.private_key) == bob.fingerprint
    out = tmp_path / "out.csv"
    decrypt_file(dst, out, bob.private_key, bob.passphrase)
    assert out.read_bytes() == plain_csv.read_bytes()


@pytest.mark.parametrize("passphrase", [None, ""])
def test_unprotected_key_needs_no_passphrase(plain_csv: Path, tmp_path: Path, passphrase: str | None) -> None:
    carol = make_keypair("Carol", passphrase=None)
    dst = tmp_path / "out.pgp"
    encrypt_file(plain_csv, dst, carol.public_key)
    out = tmp_path / "out.csv"
    decrypt_file(dst, out, carol.private_key, passphrase)
    assert out.read_bytes() == plain_csv.read_bytes()


def test_non_ascii_passphrase_matches_gpg_cli(plain_csv: Path, tmp_path: Path) -> None:
    """The key was protected by the gpg CLI (UTF-8 bytes); python-gnupg as-is would send latin-1 bytes."""
    dora = make_keypair("Dora", passphrase="pässwörd € ünïcode")
    dst = tmp_path / "out.pgp"
    encrypt_file(plain_csv, dst, dora.public_key)
    out = tmp_path / "out.csv"
    decrypt_file(dst, out, dora.private_key, dora.passphrase)
    assert out.read_bytes() == plain_csv.read_bytes()


@pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")
def test_non_utf8_embedded_file_name(bob: KeyPair, tmp_path: Path) -> None:
    """gpg echoes the file name stored in the message as raw bytes in its status output (PLAINTEXT);
    a cp1252 name must not kill python-gnupg's status reader (it would lose DECRYPTION_OKAY)."""
    plain = tmp_path / "plain.csv"
    plain.write_text("id\n1\n")
    src = tmp_path / "from_windows.pgp"
    cli_encrypt(plain, src, bob, "--set-filename", "M\udcfcller.csv")  # surrogateescape -> byte 0xFC
    out = tmp_path / "out.csv"
    decrypt_file(src, out, bob.private_key, bob.passphrase)
    assert out.read_bytes() == plain.read_bytes()


def test_signed_and_encrypted_file_decrypts(
    plain_csv: Path, alice: KeyPair, bob: KeyPair, tmp_path: Path
) -> None:
    """Alice signs and encrypts for Bob; Bob's keyring lacks Alice's key, which must not fail decryption."""
    signed = tmp_path / "signed.pgp"
    with throwaway_keyring() as gpg:
        gpg_cli(gpg.gnupghome, "--import", stdin=alice.private_key.encode() + bob.public_key.encode())
        gpg_cli(
            gpg.gnupghome, "--passphrase-fd", "0", "--trust-model", "always", "-u", alice.fingerprint,
            "-r", bob.fingerprint, "--sign", "--encrypt", "-o", str(signed), str(plain_csv),
            stdin=f"{alice.passphrase}\n".encode(),
        )  # fmt: skip
    out = tmp_path / "out.csv"
    decrypt_file(signed, out, bob.private_key, bob.passphrase)
    assert out.read_bytes() == plain_csv.read_bytes()


def test_hidden_recipient_decrypts(plain_csv: Path, bob: KeyPair, alice: KeyPair, tmp_path: Path) -> None:
    hidden = tmp_path / "hidden.pgp"
    cli_encrypt(plain_csv, hidden, bob, "--throw-keyids")
    out = tmp_path / "out.csv"
    decrypt_file(hidden, out, bob.private_key, bob.passphrase)
    assert out.read_bytes() == plain_csv.read_bytes()

    with pytest.raises(PgpError) as e:
        decrypt_file(hidden, out, alice.private_key, alice.passphrase)
    assert "hides its recipients" in str(e.value)
    assert not out.exists()


# ------------------------------------------------------------------------------------------------
# Decryption failures: each says which of the usual causes it is, and leaves no dst behind
# ------------------------------------------------------------------------------------------------


def test_file_for_another_key(for_bob: Path, alice: KeyPair, bob: KeyPair, tmp_path: Path) -> None:
    out = tmp_path / "out.csv"
    out.write_text("from an earlier run")
    with pytest.raises(PgpError) as e:
        decrypt_file(for_bob, out, alice.private_key, alice.passphrase, key_source="connection 'drop_pgp'")
    msg = str(e.value)
    assert f"encrypted for key ID(s) {bob.encryption_key_id}" in msg
    assert alice.fingerprint in msg and alice.encryption_key_id in msg
    assert "but the PGP private key in connection 'drop_pgp' is key" in msg
    assert "ask the sender to encrypt for" in msg
    assert_clean(msg, alice)
    assert not out.exists()


def test_wrong_passphrase(for_bob: Path, bob: KeyPair, tmp_path: Path) -> None:
    out = tmp_path / "out.csv"
    with pytest.raises(PgpError) as e:
        decrypt_file(for_bob, out, bob.private_key, "not-the-passphrase-123")
    msg = str(e.value)
    assert msg.startswith(f"bad passphrase for the configured private key, key {bob.fingerprint} (key IDs ")
    assert_clean(msg, bob, "not-the-passphrase-123")
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("size", ["small", "large"])
def test_missing_passphrase(bob: KeyPair, plain_csv: Path, for_bob: Path, tmp_path: Path, size: str) -> None:
    """gpg stops before reading the input; on a large input python-gnupg then hits a broken pipe."""
    src = for_bob
    if size == "small":
        small = tmp_path / "small.csv"
        small.write_text("id\n1\n")
        src = tmp_path / "small.csv.pgp"
        encrypt_file(small, src, bob.public_key)
    out = tmp_path / "out.csv"
    with pytest.raises(PgpError) as e:
        decrypt_file(src, out, bob.private_key, None)
    msg = str(e.value)
    assert "protected by a passphrase but none is configured" in msg
    assert_clean(msg, bob)
    assert not out.exists()


def _zip_bytes() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("users.csv", "id,email\n1,a@example.com\n" * 1000)
    return buf.getvalue()


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b"id,email\n1,a@example.com\n" * 5000, id="csv"),
        pytest.param(gzip.compress(b"id,email\n1,a@example.com\n" * 5000), id="gzip"),
        pytest.param(_zip_bytes(), id="zip"),
        pytest.param(b"", id="empty"),
    ],
)
def test_not_a_pgp_file(bob: KeyPair, tmp_path: Path, content: bytes) -> None:
    src = tmp_path / "users.csv.pgp"
    src.write_bytes(content)
    out = tmp_path / "out.csv"
    with pytest.raises(PgpError) as e:
        decrypt_file(src, out, bob.private_key, bob.passphrase)
    assert "users.csv.pgp is not a PGP file" in str(e.value)
    assert_clean(str(e.value), bob)
    assert not out.exists()


@pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")
def test_random_bytes(bob: KeyPair, tmp_path: Path) -> None:
    """Random bytes may parse as some packet header (gpg then says various things); still a clean failure."""
    for i in range(10):
        src = tmp_path / f"noise{i}.pgp"
        src.write_bytes(os.urandom(200_000))
        out = tmp_path / f"out{i}.csv"
        with pytest.raises(PgpError) as e:
            decrypt_file(src, out, bob.private_key, bob.passphrase)
        assert_clean(str(e.value), bob)
        assert not out.exists()


def test_truncated_file(for_bob: Path, bob: KeyPair, tmp_path: Path) -> None:
    src = tmp_path / "cut.pgp"
    src.write_bytes(for_bob.read_bytes()[: for_bob.stat().st_size // 2])
    out = tmp_path / "out.csv"
    with pytest.raises(PgpError) as e:
        decrypt_file(src, out, bob.private_key, bob.passphrase)
    assert "truncated" in str(e.value)
    assert_clean(str(e.value), bob)
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.pgp"]


def test_tampered_file(for_bob: Path, bob: KeyPair, tmp_path: Path) -> None:
    data = bytearray(for_bob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    src = tmp_path / "tampered.pgp"
    src.write_bytes(bytes(data))
    out = tmp_path / "out.csv"
    with pytest.raises(PgpError):
        decrypt_file(src, out, bob.private_key, bob.passphrase)
    assert not out.exists()


def test_symmetric_file(plain_csv: Path, bob: KeyPair, tmp_path: Path) -> None:
    src = tmp_path / "sym.pgp"
    with throwaway_keyring() as gpg:
        gpg_cli(
            gpg.gnupghome,
            "--passphrase-fd",
            "0",
            "--symmetric",
            "-o",
            str(src),
            str(plain_csv),
            stdin=b"pw\n",
        )
    with pytest.raises(PgpError) as e:
        decrypt_file(src, tmp_path / "out.csv", bob.private_key, None)
    assert "symmetric" in str(e.value)


@pytest.mark.parametrize("passphrase", ["test-pass\n", "a\r\nb", "x\0"])
def test_passphrase_with_line_break_refused(
    for_bob: Path, bob: KeyPair, tmp_path: Path, passphrase: str
) -> None:
    out = tmp_path / "out.csv"
    out.write_text("older")
    with pytest.raises(PgpError) as e:
        decrypt_file(for_bob, out, bob.private_key, passphrase, key_source="connection 'drop_pgp'")
    assert "the passphrase for the PGP private key in connection 'drop_pgp' contains a line break" in str(
        e.value
    )
    assert passphrase not in str(e.value)
    assert not out.exists()


def test_public_key_given_for_decryption(for_bob: Path, bob: KeyPair, tmp_path: Path) -> None:
    with pytest.raises(PgpError) as e:
        decrypt_file(for_bob, tmp_path / "out.csv", bob.public_key, bob.passphrase)
    assert "holds only a public key" in str(e.value)
    assert "BEGIN PGP PRIVATE KEY BLOCK" in str(e.value)


@pytest.mark.parametrize(
    "key_text",
    [
        "",
        "   \n",
        "not a key",
        "-----BEGIN PGP PRIVATE KEY BLOCK-----\n\nAAAA\n-----END PGP PRIVATE KEY BLOCK-----\n",
    ],
)
def test_unusable_private_key_text(for_bob: Path, tmp_path: Path, key_text: str) -> None:
    with pytest.raises(PgpError) as e:
        decrypt_file(for_bob, tmp_path / "out.csv", key_text, "pw", key_source="connection 'drop_pgp'")
    msg = str(e.value)
    assert "the PGP private key in connection 'drop_pgp'" in msg
    assert "could not be imported" in msg or "is empty" in msg


def test_missing_input_file(bob: KeyPair, tmp_path: Path) -> None:
    with pytest.raises(PgpError, match="no such file"):
        decrypt_file(tmp_path / "nope.pgp", tmp_path / "out.csv", bob.private_key, bob.passphrase)
    with pytest.raises(PgpError, match="no such file"):
        encrypt_file(tmp_path / "nope.csv", tmp_path / "out.pgp", bob.public_key)


# ------------------------------------------------------------------------------------------------
# Encryption failures
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("key_text", ["", "garbage", "-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nAAAA\n"])
def test_unusable_public_key_text(plain_csv: Path, tmp_path: Path, key_text: str) -> None:
    dst = tmp_path / "out.pgp"
    with pytest.raises(PgpError) as e:
        encrypt_file(plain_csv, dst, key_text, key_source="connection 'lytics_pgp'")
    msg = str(e.value)
    assert "the PGP public key in connection 'lytics_pgp'" in msg
    assert "could not be imported" in msg or "is empty" in msg
    assert "BEGIN PGP PUBLIC KEY BLOCK" in msg
    assert not dst.exists()


def test_expired_public_key(plain_csv: Path, tmp_path: Path) -> None:
    old = make_keypair("Old", expired=True)
    dst = tmp_path / "out.pgp"
    dst.write_text("older")
    with pytest.raises(PgpError) as e:
        encrypt_file(plain_csv, dst, old.public_key)
    assert "expired" in str(e.value) and old.fingerprint in str(e.value)
    assert not dst.exists()


def test_sign_only_public_key(plain_csv: Path, tmp_path: Path) -> None:
    signer = make_keypair("Signer", sign_only=True)
    with pytest.raises(PgpError) as e:
        encrypt_file(plain_csv, tmp_path / "out.pgp", signer.public_key)
    assert "no encryption subkey" in str(e.value)


def test_two_public_keys_refused(plain_csv: Path, alice: KeyPair, bob: KeyPair, tmp_path: Path) -> None:
    with pytest.raises(PgpError) as e:
        encrypt_file(plain_csv, tmp_path / "out.pgp", alice.public_key + bob.public_key)
    assert "holds 2 keys" in str(e.value)


# ------------------------------------------------------------------------------------------------
# Keyring lifecycle
# ------------------------------------------------------------------------------------------------


@pytest.fixture
def keyring_parent(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Throwaway homes go to a private (short) dir, so counting them is not disturbed by parallel runs."""
    parent = Path(tempfile.mkdtemp(prefix="pgpt", dir="/tmp"))
    monkeypatch.setattr(pgp_keyring, "_KEYRING_PARENT", str(parent))
    yield parent
    parent.rmdir()  # fails if anything was left behind


def _agents_for(parent: Path) -> list[str]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "gpg-agent" in cmdline and str(parent) in cmdline:
            found.append(cmdline)
    return found


def test_no_keyrings_or_agents_left_behind(
    keyring_parent: Path, plain_csv: Path, for_bob: Path, alice: KeyPair, bob: KeyPair, tmp_path: Path
) -> None:
    before = len(list(keyring_parent.glob("gpg*")))
    encrypt_file(plain_csv, tmp_path / "a.pgp", bob.public_key)
    decrypt_file(for_bob, tmp_path / "a.csv", bob.private_key, bob.passphrase)  # starts a gpg-agent
    with pytest.raises(PgpError):
        decrypt_file(for_bob, tmp_path / "b.csv", alice.private_key, alice.passphrase)
    with pytest.raises(PgpError):
        decrypt_file(for_bob, tmp_path / "c.csv", bob.private_key, "wrong")
    with pytest.raises(PgpError):
        encrypt_file(plain_csv, tmp_path / "d.pgp", "garbage")
    assert before == 0
    assert list(keyring_parent.glob("gpg*")) == []
    assert _agents_for(keyring_parent) == []


def test_throwaway_keyring_is_private_and_removed_on_error(keyring_parent: Path) -> None:
    with pytest.raises(RuntimeError), throwaway_keyring() as gpg:
        home = Path(gpg.gnupghome)
        assert home.parent == keyring_parent
        assert home.stat().st_mode & 0o777 == 0o700
        assert len(str(home / "S.gpg-agent.extra")) < 100  # gpg-agent's socket path limit is ~108
        gpg.list_keys(secret=True)
        raise RuntimeError("boom")
    assert not home.exists()


def test_debug_log_holds_no_key_material_and_no_broken_pipe_noise(
    for_bob: Path, alice: KeyPair, plain_csv: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    carol = make_keypair("Carol", passphrase=None)  # unprotected: its armored text holds the raw secret
    caplog.set_level(logging.DEBUG)
    encrypt_file(plain_csv, tmp_path / "c.pgp", carol.public_key)
    decrypt_file(tmp_path / "c.pgp", tmp_path / "c.csv", carol.private_key, None)
    with pytest.raises(PgpError):  # gpg stops early: python-gnupg's writer hits a broken pipe
        decrypt_file(for_bob, tmp_path / "a.csv", alice.private_key, alice.passphrase)
    assert "import_keys result" in caplog.text  # python-gnupg did log at DEBUG
    assert not any(fragment in caplog.text for fragment in secret_fragments(carol) + secret_fragments(alice))
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


def test_no_airflow_import() -> None:
    code = "import sys, include.clients.pgp.files; print([m for m in sys.modules if m.split('.')[0] == 'airflow'])"
    root = Path(__file__).resolve().parents[3]
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root)
    assert done.stdout.strip() == "[]"
