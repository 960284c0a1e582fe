"""Measuring one child process: wall time, peak RSS of its whole process tree, CPU (all benchmarks).

Every measured run is a fresh child process. Peak RSS is the larger of (a) the highest *sum* of
VmRSS over the child and all its descendants, polled every 20 ms (psutil for the tree,
/proc/PID/status for the numbers), and (b) the highest single-process VmHWM seen (for Python
workers also their own VmHWM read just before exit). Not ``ru_maxrss`` from ``wait4``: Linux
carries the RSS the forking parent had at exec time into the child's ``ru_maxrss``, so every small
child would look as big as the benchmark process. CPU = user+sys of the child and its reaped
descendants (``wait4``).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
POLL_SECONDS = 0.02
MB = 1024 * 1024


@dataclass
class Run:
    seconds: float  # the step's wall time (worker-reported for Python workers, else parent wall clock)
    rss: int  # peak RSS of the process tree, bytes
    cpu: float  # user+sys CPU seconds of the child and its reaped descendants
    wall: float  # parent wall clock from spawn to exit (includes interpreter start for workers)
    info: dict = field(default_factory=dict)
    load1: float = 0.0  # 1-minute load average just before the run


class StepFailed(RuntimeError):
    pass


def measure(cmd: list[str], *, env: dict | None = None, worker: bool = False, timeout: float = 3600,
            cwd: Path | None = None) -> Run:
    """Run `cmd` as a fresh child; wall time, peak tree RSS, CPU; the worker's JSON result if `worker`."""
    load1 = os.getloadavg()[0]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL, cwd=cwd or REPO, env=env)
        peak = [0, 0]  # [highest tree RSS sum, highest single-process VmHWM]
        stop = threading.Event()

        def poll() -> None:
            try:
                root = psutil.Process(proc.pid)
            except psutil.Error:
                return
            while not stop.is_set():
                try:
                    pids = [proc.pid, *(c.pid for c in root.children(recursive=True))]
                except psutil.Error:
                    return
                total = 0
                for pid in pids:
                    rss, hwm = _rss_hwm(pid)
                    total += rss
                    if hwm > peak[1]:
                        peak[1] = hwm
                if total > peak[0]:
                    peak[0] = total
                stop.wait(POLL_SECONDS)

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)  # rusage of the child *and* its reaped descendants
        finally:
            timer.cancel()
        wall = time.perf_counter() - start
        stop.set()
        poller.join()
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode(errors="replace")
        stderr = err.read().decode(errors="replace")
    if proc.returncode != 0:
        raise StepFailed(f"{' '.join(cmd[:4])}... exited {proc.returncode}:\n{stderr[-3000:]}{stdout[-1000:]}")
    rss = max(peak)
    cpu = usage.ru_utime + usage.ru_stime
    info: dict = {}
    seconds = wall
    if worker:
        lines = [ln for ln in stdout.splitlines() if ln.startswith("BENCH_RESULT ")]
        if not lines:
            raise StepFailed(f"worker printed no result:\n{stderr[-3000:]}")
        info = json.loads(lines[-1].removeprefix("BENCH_RESULT "))
        seconds = info.pop("seconds")
        rss = max(rss, info.pop("self_hwm_kib", 0) * 1024)  # the worker's own VmHWM, read just before exit
    return Run(seconds=seconds, rss=rss, cpu=cpu, wall=wall, info=info, load1=load1)


def _rss_hwm(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of one process in bytes, from /proc (0, 0 if it is gone or a zombie)."""
    rss = hwm = 0
    try:
        with open(f"/proc/{pid}/status", "rb") as fh:
            for line in fh:
                if line.startswith(b"VmRSS:"):
                    rss = int(line.split()[1]) * 1024
                elif line.startswith(b"VmHWM:"):
                    hwm = int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return rss, hwm


def worker_env(extra: dict | None = None) -> dict:
    env = dict(os.environ)  # the project is installed (scripts/setup.sh); `-m bench...` runs from the repo root
    env.update(extra or {})
    return env


def run_worker(task: dict, env: dict | None = None, module: str = "bench.b2l_worker") -> Run:
    return measure([sys.executable, "-m", module, json.dumps(task)], env=env or worker_env(), worker=True)


def best(runs: list[Run]) -> Run:
    return min(runs, key=lambda r: r.seconds)


def machine() -> str:
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = psutil.virtual_memory().total / (1024**3)
    return (f"{os.cpu_count()} CPUs (nproc {len(os.sched_getaffinity(0))}), {model}, {mem:.1f} GiB RAM, "
            f"Python {platform.python_version()}, {platform.system()} {platform.release()}")


def load_text(avg: tuple[float, float, float] | None = None) -> str:
    return " / ".join(f"{x:.2f}" for x in (avg or os.getloadavg()))


def tool_version(cmd: list[str], pick=lambda out: out.splitlines()[0]) -> str:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        return pick(done.stdout or done.stderr)
    except (OSError, IndexError):
        return "?"


def package_version(name: str) -> str:
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:  # noqa: BLE001
        return "?"


def python_cmd(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]
