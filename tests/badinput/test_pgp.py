"""PGP data and keys through the whole transfer with real gpg: every bad key or message ends in a
typed error naming the file and the connection, nothing reaches the SFTP server, no secret is shown."""

from __future__ import annotations

import subprocess
import tempfile
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest

from include.clients.pgp.files import PgpKey, encrypt_file
from include.segments_to_lytics.transfer import transfer_segment
from tests.badinput.cases_exports import GOOD, zipped
from tests.badinput.cases_pgp import CASES, PgpCase
from tests.badinput.conftest import check_error
from tests.badinput.test_exports import fetcher, job, segment, upload_dir
from tests.pgp_keys import make_keypair

pytestmark = pytest.mark.sshd


@pytest.fixture(scope="module")
def keys():
    """Real key pairs (gpg CLI), the plain export, and it encrypted for alice, binary and with a password."""
    alice = make_keypair("Alice Badinput", "alice-pass")
    plain = zipped({"seg-0.json": GOOD})
    with tempfile.TemporaryDirectory() as tmp:
        src, dst, sym = Path(tmp) / "users.zip", Path(tmp) / "users.zip.pgp", Path(tmp) / "sym.pgp"
        src.write_bytes(plain)
        encrypt_file(src, dst, alice.public_key)
        home = Path(tmp) / "gh"
        home.mkdir(mode=0o700)
        subprocess.run(["gpg", "--homedir", str(home), "--batch", "--pinentry-mode", "loopback", "--passphrase",
                        "shared-secret", "--symmetric", "-o", str(sym), str(src)], check=True, capture_output=True)
        subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"], capture_output=True, check=False)
        return SimpleNamespace(alice=alice, bob=make_keypair("Bob Badinput", "bob-pass"),
                               signonly=make_keypair("Signer Badinput", None, sign_only=True),
                               expired=make_keypair("Expired Badinput", None, expired=True),
                               plain=plain, encrypted=dst.read_bytes(), symmetric=sym.read_bytes())


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_pgp_input_is_refused_and_nothing_is_delivered(case: PgpCase, keys, sftp_upload_dir, tmp_path):
    name, data, decrypt_key, encrypt_key = case.make(keys, keys.encrypted)
    seg = segment(pgp={"decrypt_conn_id": "braze_pgp", "encrypt_conn_id": "lytics_pgp"})
    the_job = replace(job(sftp_upload_dir, tmp_path, seg), decrypt_key=decrypt_key, encrypt_key=encrypt_key)
    with pytest.raises(Exception) as err:
        transfer_segment(the_job, fetcher(name, data))
    key_material = [ln for k in (decrypt_key, encrypt_key) if k and k.key
                    for ln in k.key.splitlines()[3:5] if len(ln) > 40]
    check_error(err.value, case.error, case.says, secrets=(*case.secrets, *key_material))
    assert upload_dir(sftp_upload_dir) == [], "something reached the SFTP server"


def test_a_private_key_block_where_the_public_key_is_expected_still_encrypts(keys, sftp_upload_dir, tmp_path):
    """Pinned (documented in encrypt_file): gpg imports the public part of a private key block."""
    seg = segment(pgp={"encrypt_conn_id": "lytics_pgp"})
    the_job = replace(job(sftp_upload_dir, tmp_path, seg), encrypt_key=PgpKey(key=keys.alice.private_key, source="x"))
    report = transfer_segment(the_job, fetcher("export.zip", keys.plain))
    assert report["encrypted"] and upload_dir(sftp_upload_dir) == ["vip_20261123.csv.pgp", "vip_20261123.csv.pgp.sha256"]
