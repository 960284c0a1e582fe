"""Local disks that cannot take a write: the scratch dir full, the state store read-only / full / not permitted,
the quarantine dir read-only / full. Real filesystems: small tmpfs mounts (`mount -t tmpfs -o size=...`, remounted
read-only mid-run), skipped where mounting is not permitted.

Each must fail with a clear, permanent error that names the setting pointing there (`BRAZE_LYTICS_WORK_DIR`,
`state_url` / `BRAZE_LYTICS_STATE_URL`, `BRAZE_LYTICS_QUARANTINE_DIR`), deliver nothing half-way (no file on the
SFTP server; no request to Braze before the state store proved writable) and commit nothing (the committed
snapshot pointer of the audience stays the earlier run's).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import subprocess
import tempfile
import zipfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pytest

from include.audiences_to_braze import run_files
from include.audiences_to_braze.commit import commit_run
from include.audiences_to_braze.config import AudienceRef
from include.audiences_to_braze.delivery import deliver_chunk
from include.audiences_to_braze.planning import PlanOptions, plan_changes, snapshot_audience
from include.audiences_to_braze.snapshot import committed
from include.clients.braze.track import BrazeTrackClient
from include.clients.lytics.scan import ScanResult
from include.clients.sftp import SftpSettings
from include.clients.state_store import StateStore
from include.common.errors import AuthError, PermanentError, StorageError
from include.common.rate_limit import RateLimiter
from include.common.scratch import ScratchSpaceError
from include.segments_to_lytics.config import parse_config
from include.segments_to_lytics.transfer import TransferJob, transfer_segment

SUITE = "disk_faults"
KEY = "disk-faults-key"
REF = AudienceRef(slug="disk_aud", id="aud_disk")


# -- real small filesystems ----------------------------------------------------------------------------------
def _mount(path: Path, options: str) -> None:
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, text=True,
                          check=False)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {(proc.stderr or proc.stdout).strip()}")


@contextlib.contextmanager
def tmpfs(path: Path, size: str = "1m", *, read_only: bool = False) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    _mount(path, f"size={size},mode=0755" + (",ro" if read_only else ""))
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True, check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def remount(path: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(path)], check=True, capture_output=True)


def fill(path: Path) -> None:
    """Take every free byte of the filesystem holding `path`."""
    with open(path / "filler", "wb", buffering=0) as fh:
        for block in (65536, 4096, 1):
            with contextlib.suppress(OSError):
                while True:
                    fh.write(b"\0" * block)


# -- the segments pipeline: scratch and quarantine -----------------------------------------------------------
def _segment():
    raw = {"segments": [{"name": "disk", "segment_id": "s", "columns": {"user_id": "external_id"},
                         "max_rejected_share": 0.5}]}
    return parse_config(raw, path="test.yaml").segments[0]


def _job(sshd, quarantine_dir: Path) -> TransferJob:
    sftp = SftpSettings(host=sshd.host, port=sshd.port, username=sshd.password_user, password=sshd.password,
                        host_key=sshd.host_key_line, name="lytics_sftp")
    return TransferJob(segment=_segment(), logical_date=datetime(2026, 11, 23, tzinfo=UTC), sftp=sftp,
                       quarantine_dir=quarantine_dir)


def _export(rows: int):
    """An export zip of `rows` users (and one row without an id, for the quarantine); it compresses ~20x."""
    def fetch(work: Path) -> Path:
        path = work / "export.zip"
        body = b"".join(b'{"external_id": "user-%08d"}\n' % i for i in range(rows)) + b'{"email": "no-id@x"}\n'
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("a/0.json", body)
        return path
    return fetch


def _download(size: int):
    def fetch(work: Path) -> Path:
        path = work / "export.zip"
        with open(path, "wb") as fh:
            fh.write(os.urandom(size))  # the download itself does not fit
        return path
    return fetch


SEGMENT_CASES = [
    # (id, what is injected, where: scratch/quarantine, fetch, expected error, setting named)
    ("scratch-full-downloading", "scratch tmpfs 256 KiB, a 400 KB download", "scratch", _download(400_000),
     ScratchSpaceError, "BRAZE_LYTICS_WORK_DIR"),
    ("scratch-full-shaping", "scratch tmpfs 256 KiB, an export that shapes to ~1.3 MB", "scratch", _export(40_000),
     ScratchSpaceError, "BRAZE_LYTICS_WORK_DIR"),
    ("quarantine-read-only", "quarantine dir on a read-only tmpfs", "quarantine-ro", _export(100),
     StorageError, "BRAZE_LYTICS_QUARANTINE_DIR"),
    ("quarantine-full", "quarantine dir on a full tmpfs", "quarantine-full", _export(100),
     StorageError, "BRAZE_LYTICS_QUARANTINE_DIR"),
]


@pytest.mark.sshd
@pytest.mark.parametrize(("case", "what", "where", "fetch", "error", "setting"), SEGMENT_CASES,
                         ids=[c[0] for c in SEGMENT_CASES])
def test_segment_transfer_on_a_full_or_read_only_disk(sftp_upload_dir, tmp_path, monkeypatch, figures,
                                                      case, what, where, fetch, error, setting):
    work, quarantine = tmp_path / "work", tmp_path / "quarantine"
    monkeypatch.setenv("BRAZE_LYTICS_WORK_DIR", str(work))
    monkeypatch.setenv("BRAZE_LYTICS_QUARANTINE_DIR", str(quarantine))
    mounted = work if where == "scratch" else quarantine
    with tmpfs(mounted, "256k" if where == "scratch" else "64k", read_only=where == "quarantine-ro"):
        if where == "quarantine-full":
            fill(mounted)
        with pytest.raises(PermanentError) as err:
            transfer_segment(_job(sftp_upload_dir, quarantine), fetch)
        leftovers = sorted(str(p.relative_to(mounted)) for p in mounted.rglob("*") if p.is_file() and p.name != "filler")
    assert type(err.value) is error, f"{type(err.value).__name__}: {err.value}"
    message = str(err.value)
    assert setting in message, message
    other = {"BRAZE_LYTICS_WORK_DIR", "BRAZE_LYTICS_QUARANTINE_DIR"} - {setting}
    assert not any(o in message for o in other), f"names the wrong setting: {message}"
    delivered = sorted(os.listdir(sftp_upload_dir.chroot / "upload"))
    assert delivered == [], f"delivered half-way: {delivered}"
    assert leftovers == [], f"left behind: {leftovers}"  # scratch removed, no partial quarantine file
    figures[SUITE].setdefault("segments pipeline", {})[case] = {
        "injected": what, "raised": type(err.value).__name__, "names": setting, "files delivered": 0,
        "message": message[:150] + "..."}


# -- the audiences pipeline: the state store -----------------------------------------------------------------
def _scan(members: list[str]):
    ids = pa.array(sorted(members), pa.large_string())
    return lambda _audience_id: ScanResult(ids=ids, members_seen=len(members), skipped_no_id=0, pages=1, retries=0,
                                           restarts=0, total_first=len(members), total_last=len(members))


RUN1 = [f"u{i:05d}" for i in range(3_000)]
RUN2 = [f"u{i:05d}" for i in range(200, 6_000)]  # 3,000 adds, 200 removes: 43 batches, a guard that passes


def _run1(store: StateStore) -> dict:
    scans = [snapshot_audience(store, "run1", REF, _scan(RUN1))]
    plan = plan_changes(store, "run1", scans, PlanOptions(existing_users=False))
    commit_run(store, "run1", plan, scans)
    return committed(store, REF.slug)


STATE_CASES = [
    # (id, what is injected, the step it breaks)
    ("read-only-before-scan", "state tmpfs remounted read-only before the run's scan", "snapshot"),
    ("read-only-before-delivery", "state tmpfs remounted read-only after planning", "deliver"),
    ("full-before-delivery", "state tmpfs filled after planning", "deliver-full"),
    ("read-only-before-commit", "state tmpfs remounted read-only after delivery", "commit"),
]


@pytest.mark.sandbox
@pytest.mark.parametrize(("case", "what", "step"), STATE_CASES, ids=[c[0] for c in STATE_CASES])
def test_audience_run_with_an_unwritable_state_store(tmp_path, figures, case, what, step):
    from sandbox.braze_server import BrazeSandbox

    with tmpfs(tmp_path / "state", "4m") as root, BrazeSandbox(KEY) as braze:
        store = StateStore(str(root))
        before = _run1(store)
        client = BrazeTrackClient(braze.url, KEY, limiter=RateLimiter(3000, 3.0))
        unwritable = "rw"

        def break_store() -> None:
            nonlocal unwritable
            if step == "deliver-full":
                fill(root)
                unwritable = "full"
            else:
                remount(root, "ro")
                unwritable = "ro"

        try:
            if step == "snapshot":
                break_store()
            with pytest.raises(PermanentError) as err:
                scans = [snapshot_audience(store, "run2", REF, _scan(RUN2))]
                plan = plan_changes(store, "run2", scans, PlanOptions())
                assert plan["chunks"] == 1 and not plan["guard"]["tripped"]
                if step.startswith("deliver"):
                    break_store()
                deliver_chunk(store, "run2", 0, client.track, PlanOptions())
                if step == "commit":
                    break_store()
                commit_run(store, "run2", plan, scans)
            sent = braze.stats["requests"]
            assert committed(store, REF.slug) == before, "committed although the store failed"
        finally:
            if unwritable == "ro":
                remount(root, "rw")
            (root / "filler").unlink(missing_ok=True)
        message = str(err.value)
        assert isinstance(err.value, StorageError), f"{type(err.value).__name__}: {message}"
        assert "state_url" in message and "BRAZE_LYTICS_STATE_URL" in message, message
        assert str(root) in message and ("read-only" in message or "disk is full" in message), message
        if step != "commit":
            assert sent == 0, f"{sent} requests went to Braze before the state store failed"
        else:  # delivered in full, not committed: the next run re-sends (set operations: harmless)
            assert sent == braze.stats["accepted"] == 43
        # The task retry once the disk is fixed: the run completes from where it stopped.
        if step == "commit":
            commit_run(store, "run2", store.read_json(run_files.plan_key("run2")),
                       [store.read_json(run_files.scan_marker("run2", REF.slug))])
            assert committed(store, REF.slug)["run_key"] == "run2"
            assert braze.stats["accepted"] == 43  # nothing re-sent: the chunk was checkpointed as done
    figures[SUITE].setdefault("state store", {})[case] = {
        "injected": what, "raised": type(err.value).__name__, "requests to Braze before the failure": sent,
        "committed": "unchanged (the earlier run's)", "message": message[:150] + "..."}


def test_state_store_directory_not_permitted(figures):
    """chmod 0500 stops only non-root users: the write runs in a child process as `nobody`."""
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user 'nobody' here")
    if os.geteuid() != 0:
        pytest.skip("needs root to switch to another user")
    base = Path(tempfile.mkdtemp(prefix="bl-faults-"))
    try:
        os.chmod(base, 0o755)
        state = base / "state"
        state.mkdir(mode=0o500)
        os.chown(state, nobody.pw_uid, nobody.pw_gid)
        os.chmod(state, 0o500)
        store = StateStore(str(state))
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            try:
                os.setgid(nobody.pw_gid)
                os.setuid(nobody.pw_uid)
                store.write_json(run_files.plan_key("run2"), {"chunks": 0})
                outcome = "no error"
            except BaseException as exc:
                outcome = f"{type(exc).__name__}: {exc}"
            os.write(write, outcome.encode()[:4000])
            os._exit(0)
        os.close(write)
        outcome = os.read(read, 4000).decode()
        os.close(read)
        os.waitpid(pid, 0)
    finally:
        subprocess.run(["rm", "-rf", str(base)], check=False)
    assert outcome.startswith(AuthError.__name__ + ":"), outcome
    assert "state_url" in outcome and "BRAZE_LYTICS_STATE_URL" in outcome and "Permission denied" in outcome
    figures[SUITE].setdefault("state store", {})["not-permitted"] = {
        "injected": "state dir chmod 0500, written as user nobody", "raised": "AuthError",
        "message": outcome.split(": ", 1)[1][:150] + "..."}
