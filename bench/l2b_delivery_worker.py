"""The worker side of bench/run_l2b_delivery.py: one fresh process per chunk (or one for all chunks
as threads). Started as `python -m bench.run_l2b_delivery --worker '<json task>'` (internal).

It builds the pipeline's client(s) (``BrazeTrackClient`` with a recording ``RateLimiter``, a timed
``StateStore``), prints READY, waits for GO on stdin, delivers its chunk(s) with
``deliver_chunk`` and prints one ``BENCH_RESULT`` JSON line.
"""

from __future__ import annotations

import json
import sys
import threading
import time

from bench.l2b_delivery_runs import API_KEY


def worker_main(task: dict) -> int:
    """Build the client(s), say READY, wait for GO on stdin, deliver, print BENCH_RESULT."""
    import resource

    from include.audiences_to_braze.delivery import deliver_chunk
    from include.audiences_to_braze.planning import PlanOptions
    from include.clients.braze.track import BrazeTrackClient
    from include.clients.state_store import StateStore
    from include.common.rate_limit import RateLimiter

    class RecordingLimiter(RateLimiter):
        """The pipeline's limiter; also notes when each attempt was let go and how long it waited."""

        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self.sends: list[float] = []
            self.waited = 0.0
            self.cpu_at_first = 0.0
            self.holds: list[tuple[str, float]] = []

        def acquire(self) -> float:
            waited = super().acquire()
            if not self.sends:
                self.cpu_at_first = time.process_time()  # the whole process (all threads)
            self.sends.append(time.monotonic())  # list.append is atomic under the GIL
            self.waited += waited
            return waited

        def observe(self, headers, now_epoch=None):
            before = self._blocked_until
            if task.get("observe") == "floor":  # experiment: the rounded-up reset's lower bound
                headers = {k: (str(float(v) - 1) if k.lower() == "x-ratelimit-reset" else v)
                           for k, v in headers.items()}
            super().observe(headers, now_epoch)
            hold = self._blocked_until - self._clock()
            if self._blocked_until > before and hold > 0:  # the server's headers (remaining 0) made us hold
                self.holds.append(("observe", hold))

        def pause(self, seconds):
            before = self._blocked_until
            super().pause(seconds)
            hold = self._blocked_until - self._clock()
            if self._blocked_until > before and hold > 0:  # a 429's Retry-After
                self.holds.append(("pause", hold))

    class TimedStore(StateStore):
        """The pipeline's state store; also times the progress checkpoints (fsync included)."""

        checkpoint_seconds = 0.0
        checkpoints = 0

        def write_json(self, key, value):
            t = time.perf_counter()
            super().write_json(key, value)
            TimedStore.checkpoint_seconds += time.perf_counter() - t
            TimedStore.checkpoints += 1

    options = PlanOptions(batch_size=task["batch_size"])
    store = TimedStore(task["store"])
    chunks: list[int] = task["chunks"]
    # processes: one limiter per process with limit // workers; threads: one limiter at the full limit.
    margin = {} if task.get("margin") is None else {"margin": task["margin"]}  # default: the pipeline's
    limiter = RecordingLimiter(task["budget"], task["window"], **margin)
    responses: list[tuple[float, int]] = []
    clients = []
    for _ in chunks:
        client = BrazeTrackClient(task["url"], API_KEY, limiter=limiter, batch_limit=task["batch_size"])
        if task.get("rtt_ms"):
            client.session.mount("http://", _delayed_adapter(task["rtt_ms"] / 1000))
        client.session.hooks["response"].append(
            lambda r, *a, **k: responses.append((time.monotonic(), r.status_code)))
        clients.append(client)
    results: dict[int, dict] = {}
    errors: list[str] = []
    track_seconds = [0.0]

    def timed(track):
        def call(batch, **kw):
            t = time.perf_counter()
            try:
                return track(batch, **kw)
            finally:
                track_seconds[0] += time.perf_counter() - t
        return call

    def deliver(i: int, client) -> None:
        try:
            results[i] = deliver_chunk(store, task["run_key"], i, timed(client.track), options)
        except Exception as exc:  # noqa: BLE001 - reported to the parent
            errors.append(f"chunk {i}: {type(exc).__name__}: {exc}"[:500])

    profiler = None
    if task.get("profile"):
        import cProfile

        profiler = cProfile.Profile()
    print("READY", flush=True)
    if sys.stdin.readline().strip() != "GO":
        return 1
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    t_go = time.monotonic()
    if profiler:
        profiler.enable()
    if len(chunks) == 1:
        deliver(chunks[0], clients[0])
    else:
        threads = [threading.Thread(target=deliver, args=(i, c)) for i, c in zip(chunks, clients, strict=True)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    t_end = time.monotonic()
    cpu_end = time.process_time()
    if profiler:
        profiler.disable()
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    connections = 0  # TCP connections the sessions opened (1 per client = keep-alive worked)
    for client in clients:
        pools = client.session.get_adapter(task["url"]).poolmanager.pools
        connections += sum(pools[k].num_connections for k in pools.keys())
    profile_text = ""
    if profiler:
        import io
        import pstats

        buf = io.StringIO()
        pstats.Stats(profiler, stream=buf).sort_stats("tottime").print_stats(25)
        profile_text = buf.getvalue()
    out = {
        "chunks": chunks,
        "t_go": t_go,
        "t_end": t_end,
        "sends": limiter.sends,
        "responses": responses,
        "waited": limiter.waited,
        "holds": limiter.holds,
        "track_seconds": track_seconds[0],
        "checkpoint_seconds": TimedStore.checkpoint_seconds,
        "checkpoints": TimedStore.checkpoints,
        "connections": connections,
        "cpu_in_span": cpu_end - limiter.cpu_at_first if limiter.sends else 0.0,
        "cpu_user": ru1.ru_utime - ru0.ru_utime,
        "cpu_sys": ru1.ru_stime - ru0.ru_stime,
        "progress": {i: {k: p[k] for k in ("sent", "requests", "retries")} | {"failed": len(p["failed"])}
                     for i, p in results.items()},
        "errors": errors,
        "profile": profile_text,
    }
    print("BENCH_RESULT " + json.dumps(out), flush=True)
    return 0


def _delayed_adapter(seconds: float):
    """An HTTPAdapter that holds every response `seconds` before returning it (a simulated network RTT)."""
    from requests.adapters import HTTPAdapter

    class DelayedAdapter(HTTPAdapter):
        def send(self, *a, **kw):
            resp = super().send(*a, **kw)
            time.sleep(seconds)
            return resp

    return DelayedAdapter()
