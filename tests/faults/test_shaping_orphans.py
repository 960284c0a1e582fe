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
