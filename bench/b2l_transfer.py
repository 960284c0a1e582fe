"""Step 6 of the Braze -> Lytics benchmark: the whole transfer, ours vs a chain of reference tools.

Both sides start from the same export link of the Braze sandbox (``sandbox.braze_server.
BrazeSandbox`` on loopback, in this process; the export POSTed and its file generated before any
measurement) and end with the encrypted, gzipped CSV on a real OpenSSH sshd
(``tests.sshd_server.OpenSshServer``, chrooted internal-sftp, ed25519 key auth):

* ours -- ``include.segments_to_lytics.transfer.transfer_segment`` in a fresh worker process,
  as the DAG's ``transfer`` task runs it: ``fetch`` = ``BrazeExportClient.download`` (GET over
  HTTP, streamed to the scratch dir) -> ``shape_export`` (workers=2) -> gzip (python, level 6)
  -> ``encrypt_file`` (gpg through python-gnupg, throwaway keyring + key import, no second
  compression) -> ``deliver`` (paramiko, temp name, size check, atomic rename; no manifest) ->
  scratch dir removed. One stage after the other.
* the chain -- one ``bash`` script, spawn to exit: ``curl`` -> ``unzip`` -> DuckDB doing the same
  job (``python -m bench.b2l_duckdb``, interpreter start and ``import duckdb`` included) writing
  CSV to stdout ``| gzip -6 -n | gpg --encrypt`` (CLI, key imported beforehand, no second
  compression) -> OpenSSH ``sftp -b`` (``put`` to a temp name, ``rename``) -> ``rm`` its files.
  DuckDB, gzip and gpg overlap (a pipeline).

Checked once, untimed: both remote files are decrypted (gpg), gunzipped and compared with the
ground truth (rows, id set, first occurrence kept).
"""

from __future__ import annotations

import gzip
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.b2l_data import FIELDS, SEGMENT_ID, Truth, check_csv, spec
from bench.b2l_report import Report, Row
from bench.b2l_shaping import pair
from bench.measure import MB, REPO, Run, StepFailed, best, measure, package_version, run_worker, worker_env

REPEATS = 3
API_KEY = "bench-b2l-transfer-key"
OURS_REMOTE = "/upload/bench_users_20261123.csv.gz.pgp"
CHAIN_REMOTE = "/upload/chain_20261123.csv.gz.pgp"


def _start_export(sandbox) -> str:
    """POST the export, wait until the link answers, and have the sandbox write the file (untimed)."""
    import time

    import requests

    resp = requests.post(f"{sandbox.url}/users/export/segment", timeout=30,
                         headers={"Authorization": f"Bearer {API_KEY}"},
                         json={"segment_id": SEGMENT_ID, "fields_to_export": FIELDS, "output_format": "zip"})
    resp.raise_for_status()
    url = resp.json()["url"]
    deadline = time.monotonic() + 600
    while True:  # a Range GET makes the sandbox generate the file once; later GETs stream it from disk
        r = requests.get(url, headers={"Range": "bytes=0-0"}, timeout=600)
        if r.status_code == 206:
            return url
        if time.monotonic() > deadline:
            raise StepFailed(f"the sandbox's export link answered {r.status_code}")
        time.sleep(0.2)


CHAIN_GZIP_LEVELS = (6, 1)
CHAIN = """set -euo pipefail
cd {work}
t0=$EPOCHREALTIME
curl -sS --fail -o export.zip {url}
t1=$EPOCHREALTIME
unzip -q export.zip -d x
t2=$EPOCHREALTIME
(cd {repo} && exec {python} -m bench.b2l_duckdb --variant {variant} {work}/'x/**/*.json' /dev/stdout) \\
  | gzip -{level} -n \\
  | gpg --batch --yes --trust-model always --recipient {fpr} --compress-algo none -z 0 --output out.csv.gz.pgp --encrypt
t3=$EPOCHREALTIME
sftp -q -b {batch} -i {key} -P {port} -o StrictHostKeyChecking=yes -o UserKnownHostsFile={known_hosts} {user}@{host}
t4=$EPOCHREALTIME
size=$(stat -c %s out.csv.gz.pgp)
rm -rf x export.zip out.csv.gz.pgp
echo "$t0 $t1 $t2 $t3 $t4 $EPOCHREALTIME $size" > {times}
"""

def step_transfer(users: int, truth: Truth, work: Path, report: Report, variant: str) -> None:
    from sandbox.braze_server import BrazeSandbox
    from tests.pgp_keys import make_keypair
    from tests.sshd_server import OpenSshServer

    missing = [tool for tool in ("curl", "unzip", "gzip", "gpg", "sftp", "bash") if shutil.which(tool) is None]
    if missing:
        raise StepFailed(f"the reference chain needs {', '.join(missing)} on the PATH (e.g. apt-get install "
                         f"{' '.join(missing)})")
    kp = make_keypair("B2L Bench Recipient", passphrase=None)
    key_file = work / "transfer_recipient.asc"
    key_file.write_text(kp.public_key)
    home = tempfile.mkdtemp(prefix="bt", dir="/tmp")  # short: gpg-agent socket path limit
    gpg_env = dict(os.environ, GNUPGHOME=home)
    chain_dir, scratch = work / "chain", work / "scratch"
    chain_dir.mkdir()
    scratch.mkdir()
    print(f"  Braze sandbox: generating the {users:,}-user export behind the link (untimed) ...", flush=True)
    try:
        subprocess.run(["gpg", "--batch", "--import", str(key_file)], env=gpg_env, check=True, capture_output=True)
        with BrazeSandbox(API_KEY, [spec(users)], export_delay=0.0, data_dir=work / "sandbox") as sandbox, \
                OpenSshServer() as srv:
            url = _start_export(sandbox)
            ssh_key = work / "transfer_id_ed25519"
            ssh_key.write_text(srv.private_key_pem)
            os.chmod(ssh_key, 0o600)
            known_hosts = work / "transfer_known_hosts"
            known_hosts.write_text(f"[{srv.host}]:{srv.port} {srv.host_key_line}\n")
            batch = work / "transfer_sftp_batch"
            partial = CHAIN_REMOTE.replace("/upload/", "/upload/.") + ".partial"
            batch.write_text(f"put out.csv.gz.pgp {partial}\nrename {partial} {CHAIN_REMOTE}\n")
            scripts = {}
            for level in CHAIN_GZIP_LEVELS:  # -6: the baseline (gzip's default); -1: its fastest (context)
                scripts[level] = work / f"chain_gzip{level}.sh"
                scripts[level].write_text(CHAIN.format(
                    work=shlex.quote(str(chain_dir)), repo=shlex.quote(str(REPO)), url=shlex.quote(url),
                    python=shlex.quote(sys.executable), variant=variant, fpr=kp.fingerprint, level=level,
                    batch=shlex.quote(str(batch)), key=shlex.quote(str(ssh_key)), port=srv.port,
                    known_hosts=shlex.quote(str(known_hosts)), user=srv.key_user, host=srv.host,
                    times=shlex.quote(str(work / 'chain_times'))))
            settings = {"host": srv.host, "port": srv.port, "username": srv.key_user,
                        "private_key": srv.private_key_pem, "host_key": srv.host_key_line, "name": "bench"}
            task = {"task": "transfer", "segment_id": SEGMENT_ID, "fields": FIELDS, "settings": settings,
                    "quarantine_dir": str(work / "transfer_quarantine"), "key_file": str(key_file), "workers": 2,
                    "base_url": sandbox.url, "api_key": API_KEY, "url": url}
            ours_env = worker_env({"BRAZE_LYTICS_WORK_DIR": str(scratch)})
            chain_env = worker_env({"GNUPGHOME": home})
            runs: dict[str, list[Run]] = {"ours": [], **{f"chain{level}": [] for level in CHAIN_GZIP_LEVELS}}

            def ours() -> None:
                runs["ours"].append(run_worker(task, ours_env))
                _landed(srv, OURS_REMOTE, runs["ours"][-1].info["bytes"])

            def chain() -> None:
                for level in CHAIN_GZIP_LEVELS:
                    run = measure(["bash", str(scripts[level])], env=chain_env, cwd=chain_dir)
                    *t, size = (float(x) for x in (work / "chain_times").read_text().split())
                    run.info["stages"] = dict(zip(("curl", "unzip", "DuckDB | gzip | gpg", "sftp", "rm"),
                                                  (b - a for a, b in zip(t, t[1:], strict=False)), strict=True))
                    run.info["bytes"] = int(size)
                    runs[f"chain{level}"].append(run)
                    _landed(srv, CHAIN_REMOTE, None)

            srv.empty_shared_dirs()
            for rep in range(REPEATS):
                pair(rep, ours, chain)
                if rep == 0:
                    _verify(srv, kp, work, truth, report, runs["ours"][-1].info)
                srv.empty_shared_dirs()
                print(f"  transfer repeat {rep + 1}/{REPEATS}: ours {runs['ours'][-1].seconds:.2f}s "
                      f"(spawn to exit {runs['ours'][-1].wall:.2f}s), chain gzip -6 {runs['chain6'][-1].seconds:.2f}s, "
                      f"chain gzip -1 {runs['chain1'][-1].seconds:.2f}s", flush=True)
    finally:
        subprocess.run(["gpgconf", "--homedir", home, "--kill", "gpg-agent"], capture_output=True, check=False)
        shutil.rmtree(home, ignore_errors=True)
        shutil.rmtree(chain_dir, ignore_errors=True)
        shutil.rmtree(work / "sandbox", ignore_errors=True)
    report.detail("whole transfer, ours (transfer_segment, workers=2; time without start-up, see wall)", runs["ours"])
    for level in CHAIN_GZIP_LEVELS:
        report.detail(f"whole transfer, chain with gzip -{level} (bash: curl, unzip, DuckDB | gzip | gpg, sftp)",
                      runs[f"chain{level}"])
    # Spawn to exit on both sides: the chain pays its processes' start-up (python + import duckdb,
    # curl, gpg, ...), so ours is timed with its interpreter start-up and imports too.
    walls = [Run(seconds=r.wall, rss=r.rss, cpu=r.cpu, wall=r.wall, info=r.info, load1=r.load1) for r in runs["ours"]]
    bo, bc, bc1 = best(walls), best(runs["chain6"]), best(runs["chain1"])
    report.fact(f"Whole transfer: export zip {bo.info['export_bytes'] / MB:.1f} MB downloaded, "
                f"{bo.info['rows_written']:,} rows shaped, {bo.info['bytes'] / MB:.1f} MB delivered (ours: gzip by "
                f"ISA-L level 3; the chain: {bc.info['bytes'] / MB:.1f} MB with gzip -6, {bc1.info['bytes'] / MB:.1f} MB "
                f"with gzip -1). "
                f"Both sides timed spawn to exit; ours without interpreter start-up and imports (requests, gnupg, "
                f"paramiko, the project: paid once per Airflow task process): best "
                f"{best(runs['ours']).seconds:.2f} s. The chain's peak RSS (best run, every process of the "
                f"pipeline summed): {bc.rss / MB:.0f} MB.")
    report.fact("Whole transfer, where the time goes (best runs): ours " + _stages(bo.info["stages"], bo.seconds)
                + " (interpreter start-up, imports, job set-up, scratch clean-up), one stage after the other; "
                "the chain " + _stages(bc.info["stages"], bc.seconds) + ".")
    name = (f"chain: curl + unzip + DuckDB {package_version('duckdb')} same job `{variant}` | gzip -6 | gpg CLI, "
            f"then sftp CLI")
    report.rows.append(Row("6. whole transfer (download → shape → gzip → PGP → SFTP)", bo, name, bc,
                           "≤ 1.0×, ≤ 300 MB", limit_ratio=1.0, limit_rss_mb=300))
    report.rows.append(Row("6. whole transfer (vs the chain with gzip -1)", bo, name.replace("gzip -6", "gzip -1"),
                           bc1, "(context)"))


def _stages(stages: dict[str, float], total: float) -> str:
    names = {"download": "download", "shape_export": "shape", "compress": "gzip", "encrypt_file": "PGP",
             "deliver": "SFTP"}
    parts = [f"{names.get(k, k)} {v:.2f} s" for k, v in stages.items()]
    return ", ".join(parts) + f", rest {total - sum(stages.values()):.2f} s"


def _landed(srv, remote: str, size: int | None) -> None:
    path = srv.chroot / remote.lstrip("/")
    if not path.exists():
        raise StepFailed(f"{remote} did not land on the server")
    if size is not None and path.stat().st_size != size:
        raise StepFailed(f"{remote} landed with {path.stat().st_size} bytes, expected {size}")


def _verify(srv, kp, work: Path, truth: Truth, report: Report, info: dict) -> None:
    """Decrypt and gunzip both remote files; check the CSVs against the ground truth."""
    home = tempfile.mkdtemp(prefix="bv", dir="/tmp")
    env = dict(os.environ, GNUPGHOME=home)
    try:
        subprocess.run(["gpg", "--batch", "--import"], input=kp.private_key.encode(), env=env, check=True,
                       capture_output=True)
        for label, remote in (("ours", OURS_REMOTE), ("chain", CHAIN_REMOTE)):
            gz, plain = work / f"verify_{label}.csv.gz", work / f"verify_{label}.csv"
            subprocess.run(["gpg", "--batch", "--yes", "--output", str(gz), "--decrypt",
                            str(srv.chroot / remote.lstrip("/"))], env=env, check=True, capture_output=True)
            with gzip.open(gz, "rb") as src, open(plain, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            c = check_csv(plain, truth)
            report.fact(f"Whole transfer, {label}: {remote} decrypted and gunzipped: {c.describe(truth)} -> "
                        f"{'OK' if c.ok else 'MISMATCH'}")
            gz.unlink()
            plain.unlink()
            if not c.ok:
                raise StepFailed(f"the {label} side delivered a wrong CSV")
    finally:
        subprocess.run(["gpgconf", "--homedir", home, "--kill", "gpg-agent"], capture_output=True, check=False)
        shutil.rmtree(home, ignore_errors=True)
    if info.get("rows_written") != truth.kept:
        raise StepFailed(f"transfer_segment wrote {info.get('rows_written')} rows, expected {truth.kept}")
