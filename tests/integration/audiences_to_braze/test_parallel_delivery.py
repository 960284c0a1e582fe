"""Parallel deliveries as separate OS processes against one rate-limited Braze sandbox.

The DAG's shape: a pool of SLOTS `deliver_chunk` tasks, each its own process with its own
`RateLimiter(limit // SLOTS, window)` (as `braze_lytics.tasks.audiences_to_braze.deliver_chunk`
builds it, after the task started), started at different times, chunks of uneven sizes, and one
slot running a second task the moment its first one ended (more chunks than slots). The sandbox's
sliding window is exact: a single request over the limit in any window is a 429.

Checked: no 429 at all, no window of our grants over the limit, the profiles exactly as sent, each
request sent once, and the share of the limit reached while every slot is sending -- with and
without a 30 ms answer delay (several requests in flight per task), and how far one request at a
time falls short at 30 ms. The figures are printed (`pytest -s`), with the spread between a
request's grant and its arrival at the sandbox: what the limiter's margin has to cover.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow as pa
import pytest

from include.audiences_to_braze import run_files
from include.clients.state_store import StateStore

pytestmark = pytest.mark.sandbox

KEY = "parallel-delivery-key"
RUN = "par"
# 200 requests per second, 50 per task. A 2-second window (rather than 1) outlasts the few tenths
# of a second between one task's end and the next one's first request in the same slot, so a new
# task that started with a full budget (the defect) is sure to overshoot.
LIMIT, WINDOW, SLOTS = 400, 2.0, 4
STARTS = (0.0, 0.4, 0.9, 1.7)  # when each slot's first task starts
REPO = Path(__file__).resolve().parents[3]

# The sandbox in its own process (its own GIL, not the test's), garbage collector off: the server
# should count each request when it arrives, not after a pause of its own (a 63,000-profile store
# makes collections of tens of ms). Its listen backlog raised from socketserver's 5 to a real
# server's: with up to 4 x IN_FLIGHT connections opening at once, a full backlog drops SYNs, which
# the client's kernel re-sends only after 1 s. Prints its URL; on a line from stdin, its figures.
SERVER = r"""
import gc, json, sys, time
from sandbox.braze_http import BrazeHttpServer
from sandbox.braze_server import BrazeSandbox
BrazeHttpServer.request_queue_size = 128
key, limit, window, delay = sys.argv[1:]
gc.collect()
gc.disable()
with BrazeSandbox(key, track_rate_limit=int(limit), track_rate_window=float(window)) as braze:
    braze.track.response_delay = float(delay)
    arrivals = []  # (when the sandbox saw each POST /users/track, when the client's limiter let it go)
    handle = braze.track.handle

    def recording_handle(authorized, headers, body):
        arrivals.append((time.monotonic(), float(headers.get("X-Test-Granted", "nan"))))
        return handle(authorized, headers, body)

    braze.track.handle = recording_handle
    print(braze.url, flush=True)
    sys.stdin.readline()
    snapshot = {uid: sorted(values) for uid, values in braze.profiles.snapshot().items()}
    print(json.dumps({"stats": braze.stats, "arrivals": arrivals, "snapshot": snapshot}), flush=True)
"""

WORKER = r"""
import json, sys, threading, time
from requests.adapters import HTTPAdapter
from include.audiences_to_braze.delivery import deliver_chunk
from include.audiences_to_braze.planning import PlanOptions
from include.clients.braze.track import BrazeTrackClient
from include.clients.state_store import StateStore
from include.common.rate_limit import RateLimiter
url, state, run, chunk, budget, window, in_flight = sys.argv[1:]
store = StateStore(state)
print("READY", flush=True)
if sys.stdin.readline().strip() != "GO":
    sys.exit(1)
started = time.monotonic()
grants, holds, local = [], [], threading.local()
class Recording(RateLimiter):
    # the task body's limiter; also notes each grant, and each hold the server's headers caused
    def acquire(self):
        waited = super().acquire()
        local.granted = time.monotonic()
        grants.append((local.granted, waited))
        return waited
    def observe(self, headers, now_epoch=None):
        before = self._blocked_until
        super().observe(headers, now_epoch)
        if self._blocked_until > before:
            holds.append((time.monotonic(), self._blocked_until - self._clock()))
# What the deliver_chunk task body does once the task runs: its share of the workspace budget.
client = BrazeTrackClient(url, "parallel-delivery-key", limiter=Recording(int(budget), float(window)))
class Stamping(HTTPAdapter):
    # tells the sandbox when this request's turn came, to measure the spread to its arrival
    def send(self, request, *args, **kwargs):
        request.headers["X-Test-Granted"] = repr(local.granted)
        return super().send(request, *args, **kwargs)
client.session.mount("http://", Stamping(pool_maxsize=16))
kwargs = {"in_flight": int(in_flight)} if int(in_flight) else {}
progress = deliver_chunk(store, run, int(chunk), client.track, PlanOptions(), **kwargs)
summary = {k: progress[k] for k in ("sent", "requests", "retries", "batches_done", "rows_done")}
print("RESULT " + json.dumps({"started": started, "ended": time.monotonic(), "failed": len(progress["failed"]),
                              "grants": grants, "holds": holds, **summary}), flush=True)
"""


def _write_chunks(store: StateStore, batches: list[int]) -> dict[str, frozenset[str]]:
    """Chunk i: about batches[i] full batches (a partial last one), users adding vip + c<i>."""
    expected: dict[str, frozenset[str]] = {}
    for chunk, n in enumerate(batches):
        rows = n * 75 - 7 * chunk - 3  # uneven, the last batch partial
        ids = [f"c{chunk}-{i:06d}" for i in range(rows)]
        adds = [["vip", f"c{chunk}"]] * rows
        store.write_table(run_files.chunk_key(RUN, chunk), pa.table({
            "external_id": pa.array(ids, pa.string()),
            "add": pa.array(adds, pa.list_(pa.string())),
            "remove": pa.array([[]] * rows, pa.list_(pa.string())),
        }))
        expected.update(dict.fromkeys(ids, frozenset({"vip", f"c{chunk}"})))
    return expected


def _rows(store: StateStore, chunk: int) -> int:
    return store.read_table(run_files.chunk_key(RUN, chunk)).num_rows


def _max_in_any_window(times: list[float], window: float) -> int:
    times = sorted(times)
    best, lo = 0, 0
    for hi, t in enumerate(times):
        while times[lo] + window <= t:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def _intersection(slots: list[list[tuple[float, float]]]) -> list[tuple[float, float]]:
    """The times covered by an interval of every slot."""
    common = slots[0]
    for intervals in slots[1:]:
        common = [(max(a, c), min(b, d)) for a, b in common for c, d in intervals if max(a, c) < min(b, d)]
    return common


def _deliver_in_slots(tmp_path, slots: list[list[int]], starts, batches: list[int], *,
                      response_delay: float = 0.0, in_flight: int = 0) -> tuple[dict, dict]:
    """Run the slots' deliveries (one process each; a slot's next one starts when its previous one
    exited) against a fresh sandbox. Checks the exact final state; returns the figures, and what
    each worker reported (its grants and holds, with `time.monotonic()`), by chunk."""
    state = tmp_path / "state"
    store = StateStore(str(state))
    expected = _write_chunks(store, batches)
    server = subprocess.Popen([sys.executable, "-c", SERVER, KEY, str(LIMIT), str(WINDOW), str(response_delay)],
                              cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        url = server.stdout.readline().strip()
        assert url.startswith("http://"), url
        # Every process starts (and imports) first; the tasks begin on GO.
        procs = {chunk: subprocess.Popen(
            [sys.executable, "-c", WORKER, url, str(state), RUN, str(chunk), str(LIMIT // SLOTS),
             str(WINDOW), str(in_flight)],
            cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            for slot in slots for chunk in slot}
        try:
            for proc in procs.values():
                assert proc.stdout.readline().strip() == "READY"
            results: dict[int, dict] = {}
            errors: list[str] = []
            t0 = time.monotonic() + 0.2

            def run_slot(chunks: list[int], start: float) -> None:
                time.sleep(max(0.0, t0 + start - time.monotonic()))
                for chunk in chunks:  # the next task the moment the previous one returned
                    proc = procs[chunk]
                    proc.stdin.write("GO\n")
                    proc.stdin.flush()
                    line = proc.stdout.readline()
                    if not line.startswith("RESULT "):
                        errors.append(f"chunk {chunk}: exit {proc.wait(timeout=120)}, {line!r}")
                        return
                    results[chunk] = json.loads(line.removeprefix("RESULT "))

            threads = [threading.Thread(target=run_slot, args=(slot, start)) for slot, start in zip(slots, starts, strict=True)]
            for th in threads:
                th.start()
            for th in threads:
                th.join(timeout=180)
            assert not errors, errors
            for proc in procs.values():
                assert proc.wait(timeout=60) == 0
        finally:
            for proc in procs.values():
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        server.stdin.write("DONE\n")
        server.stdin.flush()
        figures = json.loads(server.stdout.readline())
    finally:
        server.kill()
        server.wait()
    stats = figures["stats"]
    arrivals = [arrived for arrived, _ in figures["arrivals"]]
    spread = sorted(arrived - granted for arrived, granted in figures["arrivals"])  # monotonic: one clock
    snapshot = {uid: frozenset(values) for uid, values in figures["snapshot"].items()}

    # Exact: every row delivered once, nothing rejected, the profiles exactly as sent.
    for chunk in range(len(batches)):
        rows = _rows(store, chunk)
        r = results[chunk]
        assert (r["sent"], r["rows_done"], r["failed"], r["batches_done"]) == (rows, rows, 0, -(-rows // 75))
        assert r["requests"] == r["batches_done"] + r["retries"]
    assert snapshot == expected
    # The steady part: while every slot is sending (between a task's first and last request; a
    # slot switching tasks is out for the old process's exit and the new one's start-up).
    steady = _intersection([[(results[c]["grants"][0][0], results[c]["grants"][-1][0]) for c in slot]
                            for slot in slots])
    steady_seconds = sum(b - a for a, b in steady)
    busy = [t for t in arrivals if any(a <= t <= b for a, b in steady)]
    return {
        "429s": stats["rate_limited"],
        "retries": sum(r["retries"] for r in results.values()),
        "requests": stats["requests"],
        "accepted": stats["accepted"],
        "batches": sum(r["batches_done"] for r in results.values()),
        "starts": sorted(round(r["started"] - t0, 3) for r in results.values()),
        "ends": sorted(round(r["ended"] - t0, 3) for r in results.values()),
        "granted_to_arrived_ms": {q: round(spread[int(q / 100 * (len(spread) - 1))] * 1000, 1) for q in (50, 99, 100)},
        "busiest_window": _max_in_any_window(arrivals, WINDOW),  # at the server
        "busiest_window_sent": _max_in_any_window([g for r in results.values() for g, _ in r["grants"]], WINDOW),
        "steady_seconds": steady_seconds,
        "steady_rate": len(busy) / steady_seconds,
        "share": len(busy) / steady_seconds / (LIMIT / WINDOW),
    }, results


# Slot 0 delivers chunk 0 (short), then chunk 4 right after: more chunks than pool slots.
SLOTS_PLAN = [[0, 4], [1], [2], [3]]
BATCHES = [120, 230, 210, 170, 140]  # about 5 s per slot at 50 requests per second; slot 0 switches
# tasks at ~2.5 s, when every slot is busy: its new task starts while the old one's requests of the
# last 2 s are still in the server's window


@pytest.mark.parametrize("response_delay", [0.0, 0.03], ids=["0ms", "30ms"])
def test_parallel_tasks_fill_the_budget_without_a_single_429(tmp_path, response_delay):
    figures, _ = _deliver_in_slots(tmp_path, SLOTS_PLAN, STARTS, BATCHES, response_delay=response_delay)
    print(f"\nresponse delay {response_delay * 1000:.0f} ms: {figures}")
    assert figures["429s"] == 0 and figures["retries"] == 0, figures
    assert figures["requests"] == figures["accepted"] == figures["batches"] == sum(-(-(n * 75 - 7 * c - 3) // 75)
                                                                                    for c, n in enumerate(BATCHES))
    assert figures["busiest_window_sent"] <= LIMIT, figures  # the pacing's invariant, at our side
    assert figures["busiest_window"] <= LIMIT, figures  # and at the server's
    assert figures["steady_seconds"] > 1.5, figures  # a steady part long enough to measure
    # Pacing gives 400 / 2.03 = 197 requests per second; leave room for a loaded 2-core machine.
    assert figures["share"] >= (0.85 if response_delay == 0 else 0.80), figures


def test_one_request_in_flight_cannot_fill_the_budget_at_30ms(tmp_path):
    """The old shape, for contrast: one request at a time per task reaches ~1 / round trip."""
    figures, _ = _deliver_in_slots(tmp_path, [[0], [1], [2], [3]], (0.0, 0.0, 0.0, 0.0), [70, 70, 70, 70],
                                response_delay=0.03, in_flight=1)
    print(f"\nresponse delay 30 ms, 1 in flight: {figures}")
    assert figures["429s"] == 0
    assert figures["share"] < 0.70, figures  # at most 4 / 32 ms = 125 of 200 per second (measured ~105)
