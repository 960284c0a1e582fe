"""The Braze sandbox of bench/run_l2b_delivery.py: a fresh server process per run.

:class:`Sandbox` starts `python -m sandbox.braze_server` on a free loopback port, through
:data:`SANDBOX_WRAPPER` unless `--sandbox-gc plain`: the wrapper times the garbage collector,
records every /users/track answer and holds it for a server-side round trip. The parent reads
the sandbox's counters and profiles over HTTP and its CPU time with psutil.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
API_KEY = "bench-l2b-delivery-key"

# The sandbox CLI run through runpy, optionally with the garbage collector watched / tuned, and
# always with /users/track's answers recorded (arrival time, the client's grant time from the
# X-Bench-Granted header, status) and, for --rtt-side server, held `delay` seconds (the sandbox's
# own `UsersTrack.response_delay`, which the CLI has no option for: set on every UsersTrack made).
# argv[1] = mode (watch|freeze|tuned|off), argv[2] = file for the report, argv[3] = response delay (s),
# rest = the CLI's arguments.
SANDBOX_WRAPPER = r"""
import gc, json, runpy, sys, time
mode, report, delay = sys.argv[1], sys.argv[2], float(sys.argv[3])
sys.argv = ["sandbox.braze_server", *sys.argv[4:]]
pauses = {0: [], 1: [], 2: []}
started = [0.0]
def _cb(phase, info):
    if phase == "start":
        started[0] = time.perf_counter()
    else:
        pauses[info["generation"]].append(time.perf_counter() - started[0])
gc.callbacks.append(_cb)
from sandbox import braze_track
arrivals = []  # (monotonic at the handler, the client's grant time or NaN, status)
_init, _handle = braze_track.UsersTrack.__init__, braze_track.UsersTrack.handle
def _init_delayed(self, *a, **kw):
    _init(self, *a, **kw)
    self.response_delay = delay  # held after the request was counted and applied
def _recording_handle(self, authorized, headers, body):
    t = time.monotonic()
    resp = _handle(self, authorized, headers, body)
    arrivals.append((t, float(headers.get("X-Bench-Granted") or "nan"), resp.status))
    return resp
braze_track.UsersTrack.__init__ = _init_delayed
braze_track.UsersTrack.handle = _recording_handle
if mode in ("freeze", "tuned"):
    import http.server, orjson, sandbox.braze_profiles, sandbox.braze_users  # noqa: F401 - the server's imports
    gc.collect()
    gc.freeze()  # start-up objects (modules, classes) are never traversed again
    if mode == "tuned":
        gc.set_threshold(50_000, 20, 100)
    for p in pauses.values():
        p.clear()  # the explicit collect above is not the server's
elif mode == "off":
    gc.disable()
try:
    runpy.run_module("sandbox.braze_server", run_name="__main__", alter_sys=True)
finally:
    with open(report, "w") as fh:
        json.dump({"gc": {str(g): p for g, p in pauses.items()}, "arrivals": arrivals}, fh)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str, timeout: float = 30.0) -> tuple[int, bytes]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {API_KEY}"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


class Sandbox:
    """`python -m sandbox.braze_server` in its own process (through the wrapper unless `plain`)."""

    def __init__(self, limit: int, window: float, gc_mode: str, work: Path, response_delay: float = 0.0):
        import psutil

        if gc_mode == "plain" and response_delay:
            raise ValueError("--sandbox-gc plain runs the bare CLI, which cannot delay its answers: "
                             "use --rtt-side client or another --sandbox-gc mode")
        self.report = work / f"sandbox-{time.monotonic_ns()}.json"
        for _ in range(5):  # a free port can be taken between our probe and the server's bind
            self.port = free_port()
            cli = ["--host", "127.0.0.1", "--port", str(self.port), "--api-key", API_KEY,
                   "--track-rate-limit", str(limit), "--track-rate-window", str(window), "-q"]
            if gc_mode == "plain":
                cmd = [sys.executable, "-m", "sandbox.braze_server", *cli]
            else:
                cmd = [sys.executable, "-c", SANDBOX_WRAPPER, gc_mode, str(self.report), repr(response_delay), *cli]
            self.proc = subprocess.Popen(cmd, cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.PIPE, env=child_env())
            self.url = f"http://127.0.0.1:{self.port}"
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and self.proc.poll() is None:
                try:
                    if http_get(f"{self.url}/_sandbox/stats", timeout=2)[0] == 200:
                        self.ps = psutil.Process(self.proc.pid)
                        return
                except OSError:
                    pass
                time.sleep(0.05)
            self.stop()
            why = self.proc.stderr.read().decode(errors="replace")[-1000:] if self.proc.stderr else ""
        raise RuntimeError(f"the Braze sandbox did not start: {why}")

    def stats(self) -> dict:
        status, body = http_get(f"{self.url}/_sandbox/stats")
        if status != 200:
            raise RuntimeError(f"/_sandbox/stats answered {status}")
        return json.loads(body)

    def profiles(self) -> dict:
        status, body = http_get(f"{self.url}/_sandbox/profiles?attr=lytics_segments", timeout=120)
        if status != 200:
            raise RuntimeError(f"/_sandbox/profiles answered {status}")
        return json.loads(body)

    def cpu(self) -> float:
        t = self.ps.cpu_times()
        return t.user + t.system

    def stop(self) -> dict:
        """Stop the server; the wrapper's report {"gc": {generation: [s, ...]}, "arrivals": [...]} or {}."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        try:
            return json.loads(self.report.read_text())
        except (OSError, ValueError):
            return {}


def child_env() -> dict:
    return dict(os.environ)  # the project is installed (scripts/setup.sh); `-m bench...` runs from the repo root
