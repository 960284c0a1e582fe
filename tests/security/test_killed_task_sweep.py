"""A transfer killed with SIGKILL cannot clean up: its scratch directory (plaintext) and its gpg home (with a
running gpg-agent holding the unlocked key) stay. The next transfer start sweeps what processes that are
gone left behind, and stops their agents; what live processes (or other hosts) own is never touched.

The killed transfer is real: a subprocess runs `include.segments_to_lytics.transfer.transfer_segment` for
an export downloaded from the Braze sandbox (encrypted, as a PGP drop is, so that decrypting it starts a
gpg-agent), and is SIGKILLed right after gpg decrypted it. The next transfer delivers to a real sshd.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from include.clients.pgp import keyring
from include.common.scratch import process_stamp, sweep_dead_scratch
from sandbox.braze_server import BrazeSandbox
from sandbox.braze_users import SegmentSpec
from tests.pgp_keys import make_keypair

pytestmark = [pytest.mark.sandbox, pytest.mark.sshd, pytest.mark.slow]

API_KEY = "killed-task-sweep-key"
REPO = Path(__file__).resolve().parents[2]

# Runs in the subprocess: the transfer, stopped for good right after gpg decrypted the export.
CHILD = textwrap.dedent("""
    import json, sys, time
    from datetime import datetime, UTC
    from pathlib import Path

    import include.clients.pgp.files as pgp_files
    from include.clients.braze.export import BrazeExportClient
    from include.clients.pgp.files import PgpKey, encrypt_file
    from include.clients.sftp import SftpSettings
    from include.segments_to_lytics.config import parse_config
    from include.segments_to_lytics.transfer import TransferJob, transfer_segment

    cfg = json.loads(Path(sys.argv[1]).read_text())
    client = BrazeExportClient(cfg["braze_url"], cfg["api_key"])

    def fetch(work):
        job = client.start_segment_export(cfg["segment_id"], ["external_id", "email"])
        while not client.export_ready(job.url):
            time.sleep(0.2)
        plain = work / "export.zip"
        client.download(job.url, plain)
        encrypt_file(plain, work / "export.zip.pgp", cfg["public_key"])  # as a PGP drop arrives
        plain.unlink()
        return work / "export.zip.pgp"

    real = pgp_files.run_to_file

    def run_to_file(gpg, src, dst, call):
        result = real(gpg, src, dst, call)
        if dst.name.startswith("decrypted-"):
            tmp = Path(cfg["marker"] + ".tmp")
            tmp.write_text(json.dumps({"home": gpg.gnupghome, "plain": str(dst)}))
            tmp.replace(cfg["marker"])  # whole, or not there
            time.sleep(3600)  # killed here: plaintext in scratch, the key unlocked in a live gpg-agent
        return result

    pgp_files.run_to_file = run_to_file
    segment = parse_config({"segments": [{"name": "killed", "segment_id": cfg["segment_id"],
                                          "columns": {"user_id": "external_id", "email": "email"}}]},
                           path="killed.yaml").segments[0]
    job = TransferJob(segment=segment, logical_date=datetime(2026, 11, 23, tzinfo=UTC),
                      sftp=SftpSettings(host="127.0.0.1", port=1, username="nobody", password="x"),
                      quarantine_dir=Path(cfg["quarantine"]),
                      decrypt_key=PgpKey(key=cfg["private_key"], passphrase=cfg["passphrase"], source="test key"))
    transfer_segment(job, fetch)
""")


def agent_pids(home: str) -> list[int]:
    """gpg-agent processes started for `home` (what `pgrep -f "gpg-agent.*<home>"` finds)."""
    done = subprocess.run(["pgrep", "-f", f"gpg-agent.*--homedir {home}"], capture_output=True, text=True)
    return [int(p) for p in done.stdout.split()]


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def killed_transfer(tmp_path, monkeypatch):
    """A transfer subprocess SIGKILLed mid-run; (work dir, its scratch dir, its gpg home, its pid)."""
    work = tmp_path / "work"
    monkeypatch.setenv("BRAZE_LYTICS_WORK_DIR", str(work))
    keys = make_keypair("killed-transfer", passphrase="killed-transfer-passphrase")
    with BrazeSandbox(API_KEY, [SegmentSpec("seg_killed", 800)], export_delay=0.5) as braze:
        marker = tmp_path / "decrypted.json"
        config = tmp_path / "child.json"
        config.write_text(json.dumps({
            "braze_url": braze.url, "api_key": API_KEY, "segment_id": "seg_killed", "marker": str(marker),
            "public_key": keys.public_key, "private_key": keys.private_key, "passphrase": keys.passphrase,
            "quarantine": str(tmp_path / "quarantine")}))
        script = tmp_path / "child.py"
        script.write_text(CHILD)
        env = {**os.environ, "BRAZE_LYTICS_WORK_DIR": str(work)}
        child = subprocess.Popen([sys.executable, str(script), str(config)], cwd=REPO, env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            wait_for(lambda: marker.exists() or child.poll() is not None, 120, "the child to decrypt")
            assert child.poll() is None, child.stdout.read().decode(errors="replace")
            state = json.loads(marker.read_text())
            child.send_signal(signal.SIGKILL)
        finally:
            child.kill()
            child.wait(30)  # reaped: a zombie still counts as running for kill(pid, 0)
    scratch = Path(state["plain"]).parent
    yield work, scratch, state["home"], child.pid
    for pid in agent_pids(state["home"]):  # if the test failed half-way
        os.kill(pid, signal.SIGKILL)


def test_next_transfer_sweeps_what_a_killed_transfer_left(killed_transfer, sftp_upload_dir, tmp_path):
    from include.clients.sftp import SftpSettings
    from include.segments_to_lytics.config import parse_config
    from include.segments_to_lytics.transfer import TransferJob, transfer_segment

    work, scratch, home, pid = killed_transfer
    # What SIGKILL left: the decrypted export (plaintext) in a scratch dir named after the dead process,
    # the gpg home with the imported private key, and its gpg-agent, still running.
    assert scratch.parent == work and f".{pid}." in scratch.name
    plain = scratch / "decrypted-export.zip"
    assert plain.read_bytes()[:2] == b"PK"  # plaintext customer data
    assert Path(home).is_dir() and f".{pid}." in Path(home).name
    agents = agent_pids(home)
    assert agents, "decrypting should have left a gpg-agent for the killed transfer's home"

    # A live process's scratch and gpg home, another host's, and names we did not make: never touched.
    sleeper = subprocess.Popen(["sleep", "60"])
    live = work / f"braze-lytics-{process_stamp(sleeper.pid)}-live-abcdefgh"
    other_host = work / f"braze-lytics-00000000.{pid}.1-otherhost-abcdefgh"
    unrelated = work / "someone-elses-dir"
    live_home = Path(keyring._KEYRING_PARENT) / f"gpg-{process_stamp(sleeper.pid)}-abcdefgh"
    try:
        for d in (live, other_host, unrelated):
            d.mkdir()
        live_home.mkdir(mode=0o700)

        # The next transfer (a real one: Braze sandbox export -> sshd) starts: it sweeps.
        segment = parse_config({"segments": [{"name": "next", "segment_id": "seg_next",
                                              "columns": {"user_id": "external_id"}}]}, path="t.yaml").segments[0]
        sshd = sftp_upload_dir
        settings = SftpSettings(host=sshd.host, port=sshd.port, username=sshd.password_user, password=sshd.password,
                                host_key=sshd.host_key_line)
        job = TransferJob(segment=segment, logical_date=datetime(2026, 11, 23, tzinfo=UTC), sftp=settings,
                          quarantine_dir=tmp_path / "quarantine")
        with BrazeSandbox(API_KEY, [SegmentSpec("seg_next", 50)], export_delay=0.0) as braze:
            from include.clients.braze.export import BrazeExportClient

            client = BrazeExportClient(braze.url, API_KEY)
            url = client.start_segment_export("seg_next", ["external_id"]).url

            def fetch(w):
                wait_for(lambda: client.export_ready(url), 30, "the export")
                client.download(url, w / "export.zip")
                return w / "export.zip"

            report = transfer_segment(job, fetch)
        assert report["rows_written"] == 50

        assert not scratch.exists() and not plain.exists()  # the plaintext is gone
        assert not Path(home).exists()
        wait_for(lambda: not agent_pids(home), 10, "the orphaned gpg-agent to stop")
        assert all(not Path(f"/proc/{a}").exists() or _zombie(a) for a in agents)
        assert live.exists() and other_host.exists() and unrelated.exists() and live_home.exists()
        assert sorted(p.name for p in work.iterdir()) == sorted([live.name, other_host.name, unrelated.name])
    finally:
        sleeper.kill()
        sleeper.wait()
        if live_home.exists():
            live_home.rmdir()


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return True


def test_a_dead_process_is_recognised_also_when_its_pid_was_reused(tmp_path):
    """A stamp carries the process start time: the same pid, started at another time, is another process."""
    me = process_stamp()
    host, pid, start = me.split(".")
    reused = tmp_path / f"braze-lytics-{host}.{pid}.{int(start) + 1}-seg-abcdefgh"  # "my" pid, another start
    mine = tmp_path / f"braze-lytics-{me}-seg-abcdefgh"
    staging = tmp_path / f"state-store-{host}.{pid}.{int(start) + 1}-xyz"
    reused.mkdir()
    mine.mkdir()
    staging.write_bytes(b"ids")
    swept = sweep_dead_scratch(tmp_path)
    assert sorted(swept) == sorted([reused.name, staging.name])
    assert mine.exists() and not reused.exists() and not staging.exists()


def test_scratch_and_gpg_homes_are_stamped_with_their_process():
    from include.common.scratch import scratch_dir

    with scratch_dir("stamp") as work, keyring.throwaway_keyring() as gpg:
        assert work.name.startswith(f"braze-lytics-{process_stamp()}-stamp-")
        assert Path(gpg.gnupghome).name.startswith(f"gpg-{process_stamp()}-")
        assert len(str(Path(gpg.gnupghome) / "S.gpg-agent.browser")) < 100  # gpg-agent's socket path limit
