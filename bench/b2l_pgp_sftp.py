"""Steps 3 and 4 of the Braze -> Lytics benchmark: PGP encryption and SFTP upload of the shaped CSV.

3. ``include.clients.pgp.files.encrypt_file`` (throwaway keyring + key import included, as in
   production) vs ``gpg --encrypt`` with the key imported beforehand (untimed).
4. ``include.clients.sftp.deliver`` (paramiko: pinned host key, key auth, temp name, size check,
   atomic rename) vs the OpenSSH ``sftp`` CLI ``put``, both against a real OpenSSH sshd
   (``tests.sshd_server.OpenSshServer``) on loopback.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from bench.b2l_report import Report, Row
from bench.measure import MB, StepFailed, best, measure, run_worker, tool_version

REPEATS = 3


def gpg_version() -> str:
    return "gpg " + tool_version(["gpg", "--version"], lambda out: out.splitlines()[0].split()[-1])


def ssh_version() -> str:
    return tool_version(["ssh", "-V"], lambda out: out.split(",")[0].split("_", 1)[-1].strip())


def step_pgp(shaped: Path, work: Path, report: Report) -> Path:
    from tests.pgp_keys import make_keypair

    kp = make_keypair("B2L Bench Recipient", passphrase=None)
    key_file = work / "recipient.asc"
    key_file.write_text(kp.public_key)
    home = tempfile.mkdtemp(prefix="bg", dir="/tmp")  # short: gpg-agent socket path limit
    ours_out = work / "ours.csv.pgp"
    cli_out = work / "cli.csv.pgp"
    try:
        env = dict(os.environ, GNUPGHOME=home)
        subprocess.run(["gpg", "--batch", "--import", str(key_file)], env=env, check=True, capture_output=True)
        cli_cmd = ["gpg", "--batch", "--yes", "--trust-model", "always", "--recipient", kp.fingerprint,
                   "--output", str(cli_out), "--encrypt", str(shaped)]
        ours_runs, cli_runs = [], []
        for rep in range(REPEATS):
            order = ("ours", "cli") if rep % 2 == 0 else ("cli", "ours")
            for side in order:
                if side == "ours":
                    ours_out.unlink(missing_ok=True)
                    ours_runs.append(run_worker({"task": "encrypt", "src": str(shaped), "dst": str(ours_out),
                                                 "key_file": str(key_file)}))
                else:
                    cli_out.unlink(missing_ok=True)
                    cli_runs.append(measure(cli_cmd, env=env))
            print(f"  pgp repeat {rep + 1}/{REPEATS}: ours {ours_runs[-1].seconds:.2f}s, "
                  f"gpg CLI {cli_runs[-1].seconds:.2f}s", flush=True)
        report.detail("encrypt_file (ours)", ours_runs)
        report.detail("gpg CLI", cli_runs)
        report.facts.append(f"Encrypted file: ours {ours_out.stat().st_size / MB:.1f} MB, gpg CLI "
                            f"{cli_out.stat().st_size / MB:.1f} MB (both gpg's default compression); gpg CLI "
                            f"peak RSS {best(cli_runs).rss / MB:.0f} MB.")
        report.rows.append(Row("3. PGP encrypt", best(ours_runs),
                               f"{gpg_version()} CLI --encrypt (key pre-imported)", best(cli_runs), "≤ 1.2×",
                               limit_ratio=1.2))
    finally:
        subprocess.run(["gpgconf", "--homedir", home, "--kill", "gpg-agent"], capture_output=True, check=False)
        shutil.rmtree(home, ignore_errors=True)
        cli_out.unlink(missing_ok=True)
    return ours_out


def step_sftp(encrypted: Path, work: Path, report: Report) -> None:
    from tests.sshd_server import OpenSshServer

    size = encrypted.stat().st_size
    with OpenSshServer() as srv:
        key_file = work / "id_ed25519"
        key_file.write_text(srv.private_key_pem)
        os.chmod(key_file, 0o600)
        known_hosts = work / "known_hosts"
        known_hosts.write_text(f"[{srv.host}]:{srv.port} {srv.host_key_line}\n")
        batch = work / "sftp_batch"
        batch.write_text(f"put {encrypted} /upload/y.pgp\n")
        cli_cmd = ["sftp", "-b", str(batch), "-i", str(key_file), "-P", str(srv.port),
                   "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={known_hosts}",
                   f"{srv.key_user}@{srv.host}"]
        settings = {"host": srv.host, "port": srv.port, "username": srv.key_user,
                    "private_key": srv.private_key_pem, "host_key": srv.host_key_line, "name": "bench"}
        ours_runs, cli_runs = [], []
        for rep in range(REPEATS):
            order = ("ours", "cli") if rep % 2 == 0 else ("cli", "ours")
            for side in order:
                srv.empty_shared_dirs()
                if side == "ours":
                    ours_runs.append(run_worker({"task": "deliver", "settings": settings, "local": str(encrypted),
                                                 "remote": "/upload/x.pgp"}))
                    landed = srv.chroot / "upload" / "x.pgp"
                else:
                    cli_runs.append(measure(cli_cmd))
                    landed = srv.chroot / "upload" / "y.pgp"
                if landed.stat().st_size != size:
                    raise StepFailed(f"{landed.name} landed with {landed.stat().st_size} bytes, expected {size}")
            print(f"  sftp repeat {rep + 1}/{REPEATS}: ours {ours_runs[-1].seconds:.2f}s, "
                  f"sftp CLI {cli_runs[-1].seconds:.2f}s", flush=True)
        srv.empty_shared_dirs()
    report.detail("deliver (ours, paramiko)", ours_runs)
    report.detail("OpenSSH sftp CLI", cli_runs)
    report.facts.append(f"SFTP: {size / MB:.1f} MB over loopback to OpenSSH {ssh_version()} (chrooted "
                        f"internal-sftp, ed25519 key auth); sftp CLI peak RSS {best(cli_runs).rss / MB:.0f} MB; "
                        f"both sizes verified on the server.")
    report.rows.append(Row("4. SFTP upload", best(ours_runs), "OpenSSH sftp CLI `put`", best(cli_runs), "≤ 1.2×",
                           limit_ratio=1.2))
