"""A transfer task SIGKILLed while its shaping workers run (Airflow's kill escalation, the OOM
killer): the workers must end too, not shape on and then wait forever as orphans holding the
cores the cleared task needs when it runs again."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import pytest

from sandbox.braze_users import SegmentSpec, export_lines

REPO = Path(__file__).resolve().parents[2]
SHAPE = textwrap.dedent("""
    import sys
    from pathlib import Path
    from include.segments_to_lytics.csv_shape import CsvShaper, shape_export
    shaper = CsvShaper({"id": "external_id", "email": "email", "devices": "devices"}, id_field="external_id",
                       timestamp_column="ts", timestamp_value="2026-11-23T00:00:00Z")
    out = Path(sys.argv[2])
    shape_export(Path(sys.argv[1]), shaper, out / "o.csv", out / "q.csv", workers=2)
""")


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_shaping_workers_end_when_their_task_process_is_killed(tmp_path):
    lines = list(export_lines(SegmentSpec("orphans", 60_000, realistic=True), None))
    export = tmp_path / "export.zip"
    with zipfile.ZipFile(export, "w", zipfile.ZIP_DEFLATED) as zf:
        for n in range(12):
            zf.writestr(f"orphans-{n}.json", b"".join(lines[n * 5000:(n + 1) * 5000]))
    env = {**os.environ, "BRAZE_LYTICS_NATIVE_SHAPING": "0"}  # the slower path: seconds to catch it in
    task = subprocess.Popen([sys.executable, "-c", SHAPE, str(export), str(tmp_path)], cwd=REPO, env=env)
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 60
        while len(workers := _children(task.pid)) < 2:
            assert task.poll() is None, "shaping ended before both workers were seen"
            assert time.monotonic() < deadline, "the shaping workers never started"
            time.sleep(0.01)
        os.kill(task.pid, signal.SIGKILL)
        task.wait(10)
        deadline = time.monotonic() + 15  # the workers look at their parent every 0.5 s
        while any(_alive(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not [w for w in workers if _alive(w)], "shaping workers outlived their killed task process"
    finally:
        if task.poll() is None:
            task.kill()
        for w in workers:  # a failing run leaves no orphan behind either
            if _alive(w):
                os.kill(w, signal.SIGKILL)


SLOW_SHAPE = textwrap.dedent("""
    import signal, sys, time
    from pathlib import Path
    from include.segments_to_lytics import csv_shape

    def stopped(*_):  # what Airflow's task runner does on SIGTERM: raise in the task
        raise SystemExit("task stopped")

    signal.signal(signal.SIGTERM, stopped)
    write_part = csv_shape.CsvShaper.write_part

    def slow(self, blocks, rows_path, *args, **kwargs):  # ~10 s per part: far longer than the stop may take
        if sys.argv[3] == "fail" and rows_path.name.endswith(".1.rows"):
            time.sleep(1)  # long enough for the test to see both workers
            raise ValueError("worker 2 failed")

        def paced(blocks):
            for block in blocks:
                time.sleep(0.05)
                yield block
        return write_part(self, paced(blocks), rows_path, *args, **kwargs)

    csv_shape.CsvShaper.write_part = slow
    shaper = csv_shape.CsvShaper({"id": "external_id"}, id_field="external_id", timestamp_column="ts",
                                 timestamp_value="2026-11-23T00:00:00Z")
    out = Path(sys.argv[2])
    csv_shape.shape_export(Path(sys.argv[1]), shaper, out / "o.csv", out / "q.csv", workers=2)
""")


@pytest.mark.parametrize("how", ["stop", "fail"])
def test_a_stopped_task_or_a_failed_worker_stops_the_shaping_workers_at_once(tmp_path, how):
    """Airflow stops a running task (cleared, marked failed) with SIGTERM, which raises in the task;
    or one worker fails early: the other workers are stopped at once, not left to finish their
    parts first."""
    lines = list(export_lines(SegmentSpec("stop", 40_000, realistic=True), None))
    export = tmp_path / "export.zip"
    with zipfile.ZipFile(export, "w", zipfile.ZIP_DEFLATED) as zf:
        for n in range(8):
            zf.writestr(f"stop-{n}.json", b"".join(lines[n * 5000:(n + 1) * 5000]))
    task = subprocess.Popen([sys.executable, "-c", SLOW_SHAPE, str(export), str(tmp_path), how], cwd=REPO,
                            stderr=subprocess.PIPE, text=True)
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 60
        while len(workers := _children(task.pid)) < 2:
            assert task.poll() is None and time.monotonic() < deadline, "the shaping workers never started"
            time.sleep(0.01)
        stopped_at = time.monotonic()
        if how == "stop":
            time.sleep(0.5)
            os.kill(task.pid, signal.SIGTERM)
            stopped_at = time.monotonic()
        _, err = task.communicate(timeout=30)
        took = time.monotonic() - stopped_at
        assert task.returncode != 0, err[-2000:]
        assert ("task stopped" if how == "stop" else "ValueError: worker 2 failed") in err, err[-2000:]
        assert took < 5, f"the task took {took:.1f} s to end (its other worker had ~10 s of work left)"
        assert not [w for w in workers if _alive(w)]
        assert not list(tmp_path.glob("o.csv*")), "part files left behind"
    finally:
        if task.poll() is None:
            task.kill()
        for w in workers:
            if _alive(w):
                os.kill(w, signal.SIGKILL)
