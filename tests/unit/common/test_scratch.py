"""Scratch directories: private (0700), always removed, and a full disk is a clear permanent error.

The full disk is real: a tiny tmpfs mounted as BRAZE_LYTICS_WORK_DIR (needs root, like the sshd tests;
skipped where mounting is not permitted).
"""

from __future__ import annotations

import errno
import os
import stat
import subprocess
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

from include.common.errors import PermanentError
from include.common.scratch import ScratchSpaceError, disk_errors, scratch_dir


@pytest.fixture
def work_dir(tmp_path, monkeypatch) -> Path:
    """An ordinary BRAZE_LYTICS_WORK_DIR (does not exist yet: scratch_dir creates it)."""
    work = tmp_path / "work"
    monkeypatch.setenv("BRAZE_LYTICS_WORK_DIR", str(work))
    return work


def _mount_tmpfs(path: Path, options: str) -> None:
    path.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({(proc.stderr or proc.stdout).strip()}); needs root")


@pytest.fixture
def tiny_disk(tmp_path, monkeypatch):
    """A 1 MiB tmpfs as BRAZE_LYTICS_WORK_DIR; `tiny_disk(options)` mounts it with other tmpfs options."""
    mounted = []

    def mount(options: str = "size=1m,mode=0700") -> Path:
        path = tmp_path / "tiny"
        _mount_tmpfs(path, options)
        mounted.append(path)
        monkeypatch.setenv("BRAZE_LYTICS_WORK_DIR", str(path))
        return path

    yield mount
    for path in mounted:
        if subprocess.run(["umount", str(path)], capture_output=True, check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def _write_2mib(path: Path) -> None:
    with open(path, "wb") as fh:
        for _ in range(32):
            fh.write(b"\0" * 65536)


def _children(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir())


# -- private and always removed ---------------------------------------------------------------------
def test_scratch_dir_is_0700_under_the_work_dir_and_removed_afterwards(work_dir):
    old_umask = os.umask(0)  # a permissive umask must not widen it
    try:
        with scratch_dir("Seg / One") as d:
            assert d.parent == work_dir and d.name.startswith("braze-lytics-")
            assert stat.S_IMODE(d.stat().st_mode) == 0o700
            assert stat.S_IMODE(work_dir.stat().st_mode) == 0o700  # created by us: private too
            (d / "users.csv").write_text("plaintext")
    finally:
        os.umask(old_umask)
    assert _children(work_dir) == []


def test_scratch_dir_is_removed_when_the_body_raises(work_dir):
    with pytest.raises(ValueError, match="boom"):
        with scratch_dir("seg") as d:
            (d / "sub").mkdir()
            (d / "sub" / "users.csv").write_text("plaintext")
            raise ValueError("boom")
    assert not d.exists() and _children(work_dir) == []


# -- a full scratch disk ----------------------------------------------------------------------------
def test_full_scratch_disk_names_the_step_the_directory_its_free_space_and_the_fix(tiny_disk):
    base = tiny_disk()
    with pytest.raises(ScratchSpaceError) as err:
        with scratch_dir("seg") as d, disk_errors("shaping the CSV"):
            _write_2mib(d / "users.csv")
    message = str(err.value)
    assert isinstance(err.value, PermanentError)  # fails the task at once: a retry hits the same disk
    assert message.startswith("shaping the CSV: ran out of disk space (no space left on the device). ")
    assert f"The scratch base directory {base} (BRAZE_LYTICS_WORK_DIR) has " in message
    assert "bytes (0.0 MiB) free of 1.0 MiB" in message  # measured while the files were still there
    assert "point BRAZE_LYTICS_WORK_DIR to a directory on a larger disk" in message
    assert "about 3x the largest export" in message and "clear the task" in message
    assert isinstance(err.value.__cause__, OSError) and err.value.__cause__.errno == errno.ENOSPC
    assert _children(base) == []  # the scratch directory went away too


def test_a_step_without_its_own_wrapper_still_gets_the_message_from_scratch_dir(tiny_disk):
    base = tiny_disk()
    with pytest.raises(ScratchSpaceError, match=rf"^writing scratch files for 'seg': ran out of disk space .*{base}"):
        with scratch_dir("seg") as d:
            _write_2mib(d / "export.zip")
    assert _children(base) == []


def test_creating_the_scratch_directory_on_a_full_disk(tiny_disk):
    base = tiny_disk("size=1m,nr_inodes=8,mode=0700")  # out of inodes is ENOSPC too
    filled = 0
    with pytest.raises(OSError) as full:
        while True:
            (base / f"f{filled}").touch()
            filled += 1
    assert full.value.errno == errno.ENOSPC
    with pytest.raises(ScratchSpaceError, match=r"^creating the scratch directory for 'seg': ran out of disk space"):
        with scratch_dir("seg"):
            pytest.fail("the body must not run")


def _fill(path: str) -> None:  # runs in a worker process, like the CSV shaping does
    _write_2mib(Path(path))


def test_full_disk_in_a_worker_process_is_recognised(tiny_disk):
    tiny_disk()
    with pytest.raises(ScratchSpaceError, match="^shaping: ran out of disk space"):
        with scratch_dir("seg") as d, disk_errors("shaping"), ProcessPoolExecutor(1) as pool:
            pool.submit(_fill, str(d / "part-0.csv")).result()


# -- what is and is not converted -------------------------------------------------------------------
def test_quota_and_wrapped_errors_are_converted_others_pass_unchanged(work_dir):
    with pytest.raises(ScratchSpaceError, match=r"^encrypting: ran out of disk space \(disk quota exceeded writing /x/y"):
        with disk_errors("encrypting"):
            raise OSError(errno.EDQUOT, "Disk quota exceeded", "/x/y")
    with pytest.raises(ScratchSpaceError, match=r"^downloading: ran out of disk space \(no space left on the device\)"):
        with disk_errors("downloading"):
            try:
                raise OSError(errno.ENOSPC, "No space left on device")
            except OSError as exc:
                raise RuntimeError("the download failed") from exc
    inner = ScratchSpaceError("inner step")
    with pytest.raises(ScratchSpaceError) as err:
        with disk_errors("outer"), disk_errors("inner"):
            raise inner
    assert err.value is inner
    for other in (PermissionError(errno.EACCES, "denied"), OSError(errno.EIO, "I/O error"), ValueError("bad")):
        with pytest.raises(type(other)) as err:
            with disk_errors("shaping"):
                raise other
        assert err.value is other
