"""Files holding customer data are created 0600, in 0700 directories, whatever the umask.

After (and during) real `dag.test()` runs of both DAGs, `os.stat` of: quarantine CSVs, scratch files
(the download, the decrypted drop, the shaping processes' part files, the plain CSV, the packaged and
the encrypted file), the gpg home, and everything in a local state store (snapshots, plans, chunks,
progress, planned payloads, dead letters, commit markers). For an object-store state store (S3: no
POSIX modes there, see docs/security.md) the local staging file is checked instead.

Scratch files live only while a transfer runs, so they are looked at from inside the run: spies
wrap the transfer's steps and record the mode of every file and directory under the work dir at
that moment.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from include.common.scratch import open_private, private_dirs, private_file
from sandbox.braze_users import SegmentSpec
from tests.pgp_keys import make_keypair
from tests.security.world import COLUMNS, dashboard_zip, distinct, states


def real_run(test):
    """Marks of a test doing full dag.test() runs against the sandboxes and sshd."""
    for mark in (pytest.mark.airflow, pytest.mark.sandbox, pytest.mark.sshd, pytest.mark.slow):
        test = mark(test)
    return test


def modes(root: Path) -> dict[str, tuple[str, int]]:
    """relative path -> ("d" | "f", permission bits) for everything under `root` (root itself as ".")."""
    found = {".": ("d", stat.S_IMODE(os.lstat(root).st_mode))}
    for path in root.rglob("*"):
        info = os.lstat(path)
        kind = "d" if stat.S_ISDIR(info.st_mode) else "f"
        found[str(path.relative_to(root))] = (kind, stat.S_IMODE(info.st_mode))
    return found


def not_private(found: dict[str, tuple[str, int]]) -> dict[str, str]:
    return {p: f"{k} {m:04o}" for p, (k, m) in found.items() if m != (0o700 if k == "d" else 0o600)}


@pytest.fixture
def permissive_umask():
    """A umask that would make everything world-readable: the modes must not depend on the umask."""
    old = os.umask(0o002)
    yield
    os.umask(old)


# ------------------------------------------------------------------------------------------------
# The helpers
# ------------------------------------------------------------------------------------------------
def test_private_helpers_ignore_the_umask_and_reset_existing_files(tmp_path):
    old = os.umask(0)
    try:
        deep = private_dirs(tmp_path / "a" / "b" / "c")
        assert [stat.S_IMODE((tmp_path / p).stat().st_mode) for p in ("a", "a/b", "a/b/c")] == [0o700] * 3
        existing = tmp_path / "shared"
        existing.mkdir(mode=0o755)
        os.chmod(existing, 0o755)
        private_dirs(existing)
        assert stat.S_IMODE(existing.stat().st_mode) == 0o755  # not ours to change: documented
        loose = deep / "loose.csv"
        loose.write_text("old")
        os.chmod(loose, 0o644)
        with open_private(loose, "w") as fh:
            fh.write("new")
        assert stat.S_IMODE(loose.stat().st_mode) == 0o600 and loose.read_text() == "new"
        with open_private(loose, "a") as fh:
            fh.write("+")
        assert loose.read_text() == "new+"
        os.chmod(loose, 0o666)
        assert private_file(loose).stat().st_size == 0 and stat.S_IMODE(loose.stat().st_mode) == 0o600
        with pytest.raises(ValueError):
            open_private(loose, "r")
    finally:
        os.umask(old)


# ------------------------------------------------------------------------------------------------
# braze_segments_to_lytics
# ------------------------------------------------------------------------------------------------
@real_run
def test_segment_run_writes_only_private_files(pipeline, monkeypatch, permissive_umask):
    import include.clients.pgp.files as pgp_files
    import include.segments_to_lytics.csv_shape as csv_shape
    import include.segments_to_lytics.transfer as transfer
    from include.clients.pgp.files import encrypt_file

    braze_pgp = make_keypair("modes-braze", passphrase=distinct("pgp"))
    lytics_pgp = make_keypair("modes-lytics", passphrase=None)
    pipeline.setenv_conn("braze_pgp", {"conn_type": "generic", "password": braze_pgp.passphrase,
                                       "extra": {"private_key": braze_pgp.private_key}})
    pipeline.setenv_conn("lytics_pgp", {"conn_type": "generic", "extra": {"public_key": lytics_pgp.public_key}})
    pipeline.braze.add_segment(SegmentSpec("seg_modes_api", 1_200, missing_id_every=50, duplicate_every=300))
    folder = pipeline.landing / "seg_modes_drop" / "2026-11-23"
    folder.mkdir(parents=True)
    dashboard_zip(pipeline.tmp / "users-m.zip", SegmentSpec("seg_modes_drop", 300))
    encrypt_file(pipeline.tmp / "users-m.zip", folder / "users-m.zip.pgp", braze_pgp.public_key)
    pipeline.set_segments([
        {"name": "modes_api", "segment_id": "seg_modes_api", "compression": "gzip", "max_rejected_share": 0.5,
         "pgp": {"encrypt_conn_id": "lytics_pgp"}, "columns": COLUMNS},
        {"name": "modes_drop", "segment_id": "seg_modes_drop", "source": "drop", "compression": "zip",
         "drop": {"path": str(pipeline.landing / "{segment_id}" / "{ds}"), "pattern": "users-*"},
         "pgp": {"decrypt_conn_id": "braze_pgp"}, "columns": {"user_id": "user_id", "email": "email"}},
    ])

    seen: list[tuple[str, dict]] = []  # (moment, modes under the work dir then)
    homes: list[dict] = []

    def look(moment: str) -> None:
        seen.append((moment, modes(pipeline.work_dir)))

    def spy(module, name, before=False):
        real = getattr(module, name)

        def wrapper(*args, **kwargs):
            if before:
                look(f"{name} (entry)")
            result = real(*args, **kwargs)
            if not before:
                look(f"{name} (return)")
            return result

        monkeypatch.setattr(module, name, wrapper)

    spy(transfer, "decrypt_file")  # the decrypted drop
    spy(csv_shape, "find_duplicates", before=True)  # the shaping processes' part files
    spy(transfer, "shape_export")  # the download / decrypted file and the plain CSV
    spy(transfer, "encrypt_file", before=True)  # the packaged (gzip) file
    spy(transfer, "deliver", before=True)  # what is delivered: encrypted / zip

    real_run_to_file = pgp_files.run_to_file

    def run_to_file(gpg, src, dst, call):
        result = real_run_to_file(gpg, src, dst, call)
        homes.append(modes(Path(gpg.gnupghome)))
        return result

    monkeypatch.setattr(pgp_files, "run_to_file", run_to_file)

    dag_run = pipeline.run_segments()

    assert dag_run.state == "success", states(dag_run)
    # Every file that existed at any of those moments was 0600, every directory 0700.
    assert seen and all(not_private(found) == {} for _, found in seen), \
        [(moment, not_private(found)) for moment, found in seen if not_private(found)]
    names = {Path(p).name for _, found in seen for p, (k, _) in found.items() if k == "f"}
    for expected in ("export.zip", "decrypted-users-m.zip", "modes_api_20261123.csv", "modes_api_20261123.csv.gz",
                     "modes_api_20261123.csv.gz.pgp", "modes_drop_20261123.csv.zip"):
        assert expected in names, sorted(names)
    assert any(n.endswith(".rows") for n in names) and any(n.endswith(".rejects") for n in names)
    # gpg homes: 0700 (gpg keeps the secret key in private-keys-v1.d, 0700 too)
    assert homes and all(found["."] == ("d", 0o700) for found in homes)
    assert all(found.get("private-keys-v1.d", ("d", 0o700))[1] == 0o700 for found in homes)

    # After the run: the scratch is gone; the work dir and the quarantine tree are private.
    assert modes(pipeline.work_dir) == {".": ("d", 0o700)}
    quarantine = modes(pipeline.quarantine_dir)
    assert "modes_api/modes_api_20261123.quarantine.csv" in quarantine
    assert not_private(quarantine) == {}
    assert stat.S_IMODE(pipeline.quarantine_dir.parent.stat().st_mode) == 0o700  # created by the run too


# ------------------------------------------------------------------------------------------------
# lytics_audiences_to_braze
# ------------------------------------------------------------------------------------------------
@real_run
def test_audience_runs_write_only_private_state_files(pipeline, monkeypatch, permissive_umask):
    import include.audiences_to_braze.delivery as delivery
    from sandbox.lytics_members import braze_id

    during: list[dict] = []
    real = delivery.deliver_chunk

    def deliver_chunk(store, *args, **kwargs):
        during.append(modes(pipeline.state_dir))  # the chunks exist only between plan and commit
        return real(store, *args, **kwargs)

    monkeypatch.setattr(delivery, "deliver_chunk", deliver_chunk)
    members = sorted(pipeline.lytics.store.members("s1"))
    pipeline.braze.invalid_external_ids = {braze_id(i) for i in members[:4]}  # dead letters

    dry = pipeline.run_audiences(1, dry_run=True)
    assert dry.state == "success", states(dry)
    real_run = pipeline.run_audiences(2)
    assert real_run.state == "success", states(real_run)

    assert during and all(not_private(found) == {} for found in during), [not_private(f) for f in during]
    assert any(p.endswith(".parquet") and "/chunks/" in p for found in during for p in found)
    after = modes(pipeline.state_dir)
    assert not_private(after) == {}
    files = [p for p, (k, _) in after.items() if k == "f"]
    for wanted in ("/snapshots/", "committed.json", "plan.json", "planned_payloads.jsonl", "dead_letter/pending/",
                   "/progress/", "/scans/"):
        assert any(wanted in f or f.endswith(wanted) for f in files), (wanted, files)
    assert stat.S_IMODE(pipeline.state_dir.parent.stat().st_mode) == 0o700  # created by the run too


# ------------------------------------------------------------------------------------------------
# Object store (S3): no POSIX modes there; what touches the local disk is private
# ------------------------------------------------------------------------------------------------
@pytest.mark.sandbox
def test_object_store_writes_stage_privately_and_bucket_exports_land_privately(s3_bucket, monkeypatch, tmp_path,
                                                                               permissive_umask):
    import fsspec
    import fsspec.config

    from include.clients.state_store import StateStore
    from include.segments_to_lytics.bucket_export import BucketObject, fetch_export_objects

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_bucket.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_bucket.secret_key)
    monkeypatch.setenv("AWS_DEFAULT_REGION", s3_bucket.region)
    monkeypatch.setitem(fsspec.config.conf, "s3", {"endpoint_url": s3_bucket.endpoint_url})
    work = tmp_path / "work"
    monkeypatch.setenv("BRAZE_LYTICS_WORK_DIR", str(work))
    store = StateStore(f"s3://{s3_bucket.name}/state")
    staged = []
    real_put = store.fs.put_file

    def put_file(lpath, rpath, *args, **kwargs):
        staged.append((Path(lpath).name, stat.S_IMODE(os.stat(lpath).st_mode), stat.S_IMODE(work.stat().st_mode)))
        return real_put(lpath, rpath, *args, **kwargs)

    monkeypatch.setattr(store.fs, "put_file", put_file)
    store.write_json("runs/r1/plan.json", {"users": ["u1"]})
    name, file_mode, dir_mode = staged[0]
    assert (file_mode, dir_mode) == (0o600, 0o700)
    assert name.startswith("state-store-") and list(work.iterdir()) == []  # staged, put, removed
    assert store.read_json("runs/r1/plan.json") == {"users": ["u1"]}

    # A bucket export is copied into the scratch directory 0600.
    s3_bucket.client().put_object(Bucket=s3_bucket.name, Key="segment-export/s/1.json.gz", Body=b"x")
    fs = fsspec.filesystem("s3")
    from datetime import UTC, datetime

    objects = [BucketObject(path=f"{s3_bucket.name}/segment-export/s/1.json.gz", size=1, modified=datetime.now(UTC))]
    scratch = private_dirs(tmp_path / "scratch")
    (local,) = fetch_export_objects(fs, objects, scratch)
    assert stat.S_IMODE(local.stat().st_mode) == 0o600 and local.read_bytes() == b"x"
