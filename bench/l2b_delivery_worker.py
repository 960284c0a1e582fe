"""The worker side of bench/run_l2b_delivery.py: one fresh process per chunk (or one for all chunks
as threads). Started as `python -m bench.run_l2b_delivery --worker '<json task>'` (internal).

It imports and builds the pipeline's client(s) (``BrazeTrackClient``, a timed ``StateStore``),
prints READY and waits for GO on stdin. After GO it waits its start offset (``task["starts"]``: the
staggered start of a mapped task), then does what the ``deliver_chunk`` task body does from there
on: makes its ``RateLimiter`` (recording; the limiter's clock starts when it is made, as in the
task), shares the budget with the other workers through leases in the store
(``delivery.shared_budget``, variant ``processes``; ``static``: its fixed share) and delivers its
chunk with ``deliver_chunk``; prints one ``BENCH_RESULT`` JSON line.

Every attempt's grant (when the limiter let it go), the requests in flight (grant -> response), and
each attempt's grant -> response time (thread-local, so exact with requests in flight) are
recorded; every request carries its grant time in an ``X-Bench-Granted`` header, which the
sandbox wrapper reads to measure the grant -> arrival spread.
"""

from __future__ import annotations

import json
import sys
import threading
import time

from bench.l2b_delivery_sandbox import API_KEY

GRANTED_HEADER = "X-Bench-Granted"


def worker_main(task: dict) -> int:
    """Build the client(s), say READY, wait for GO on stdin, deliver, print BENCH_RESULT."""
    import resource

    from requests.adapters import HTTPAdapter

    from include.audiences_to_braze.delivery import deliver_chunk
    from include.audiences_to_braze.planning import PlanOptions
    from include.clients.braze.track import POOL_CONNECTIONS, BrazeTrackClient
    from include.clients.state_store import StateStore
    from include.common.rate_limit import RateLimiter

    local = threading.local()  # per sending thread: the chunk it sends for, its latest grant
    lock = threading.Lock()
    state = {"in_flight": 0, "max_in_flight": 0}

    class RecordingLimiter(RateLimiter):
        """The pipeline's limiter; also notes each grant (time, chunk), its wait, and the holds."""

        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self.sends: list[tuple[float, int]] = []
            self.waited = 0.0
            self.cpu_at_first = 0.0
            self.holds: list[tuple[str, float]] = []

        def acquire(self) -> float:
            waited = super().acquire()
            now = time.monotonic()
            with lock:
                if not self.sends:
                    self.cpu_at_first = time.process_time()  # the whole process (all threads)
                self.sends.append((now, getattr(local, "chunk", -1)))
                self.waited += waited
                state["in_flight"] += 1
                state["max_in_flight"] = max(state["max_in_flight"], state["in_flight"])
            local.granted = now
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

    rtt_client = task.get("rtt_ms", 0) / 1000 if task.get("rtt_side") == "client" else 0.0

    class StampingAdapter(HTTPAdapter):
        """The client's own adapter (same pool size); stamps the grant time on the request, and in
        `--rtt-side client` mode holds the response `rtt_client` s in the sending thread (the
        threads of deliver_chunk's pool hold theirs concurrently, like a network would)."""

        def send(self, request, *a, **kw):
            request.headers[GRANTED_HEADER] = repr(getattr(local, "granted", float("nan")))
            resp = super().send(request, *a, **kw)
            if rtt_client:
                time.sleep(rtt_client)
            return resp

    def on_response(r, *a, **k):
        now = time.monotonic()
        with lock:
            state["in_flight"] -= 1
        responses.append((now, r.status_code, now - getattr(local, "granted", now)))

    options = PlanOptions(batch_size=task["batch_size"])
    store = TimedStore(task["store"])
    chunks: list[int] = task["chunks"]
    starts: list[float] = task["starts"]  # seconds after GO, per chunk (threads: all 0)
    responses: list[tuple[float, int, float]] = []  # (time, status, grant -> response)
    clients = []
    for _ in chunks:
        client = BrazeTrackClient(task["url"], API_KEY, batch_limit=task["batch_size"])
        client.session.mount("http://", StampingAdapter(pool_connections=1, pool_maxsize=POOL_CONNECTIONS))
        client.session.hooks["response"].append(on_response)
        clients.append(client)
    margin = {} if task.get("margin") is None else {"margin": task["margin"]}  # default: the pipeline's
    in_flight = {} if task.get("in_flight") is None else {"in_flight": task["in_flight"]}
    results: dict[int, dict] = {}
    errors: list[str] = []
    track_seconds = [0.0]
    limiters: list[RecordingLimiter] = []
    started: dict[int, float] = {}
    budget_changes: list[tuple[float, float]] = []  # (time, budget) of the shared budget, when shared

    def timed(track, chunk):
        def call(batch, **kw):
            local.chunk = chunk
            t = time.perf_counter()
            try:
                return track(batch, **kw)
            finally:
                with lock:
                    track_seconds[0] += time.perf_counter() - t
        return call

    def deliver(i: int, client, t_go: float, start: float) -> None:
        delay = t_go + start - time.monotonic()
        if delay > 0:
            time.sleep(delay)  # the staggered start of this task
        started[i] = time.monotonic()
        try:
            results[i] = deliver_chunk(store, task["run_key"], i, timed(client.track, i), options, **in_flight)
        except Exception as exc:  # noqa: BLE001 - reported to the parent
            errors.append(f"chunk {i}: {type(exc).__name__}: {exc}"[:500])

    profiler = None
    if task.get("profile"):
        import cProfile

        profiler = cProfile.Profile()
    if task.get("switch_interval_ms"):  # experiment: the interpreter's GIL switch interval (default 5 ms)
        sys.setswitchinterval(task["switch_interval_ms"] / 1000)
    print("READY", flush=True)
    if sys.stdin.readline().strip() != "GO":
        return 1
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    t_go = time.monotonic()
    if profiler:
        profiler.enable()
    if len(chunks) == 1:
        delay = t_go + starts[0] - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        # As the task body: the limiter (its share of the workspace budget) is made when the task runs.
        limiter = RecordingLimiter(task["budget"], task["window"], **margin)
        clients[0].limiter = limiter
        limiters.append(limiter)
        if task.get("shared"):  # as the task body: the workspace budget shared with the run's other tasks
            from include.audiences_to_braze.delivery import shared_budget

            with shared_budget(store, task["run_key"], chunks[0], limiter, limit=task["budget"],
                               slots=task["slots"]) as share:
                deliver(chunks[0], clients[0], t_go, starts[0])
            budget_changes.extend(share.changes)
        else:
            deliver(chunks[0], clients[0], t_go, starts[0])
    else:  # threads: one process, one limiter at the full budget shared by all chunks
        limiter = RecordingLimiter(task["budget"], task["window"], **margin)
        for client in clients:
            client.limiter = limiter
        limiters.append(limiter)
        threads = [threading.Thread(target=deliver, args=(i, c, t_go, s))
                   for i, c, s in zip(chunks, clients, starts, strict=True)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    t_end = time.monotonic()
    cpu_end = time.process_time()
    if profiler:
        profiler.disable()
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    limiter = limiters[0]
    connections = 0  # TCP connections the sessions opened
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
        "started": started,
        "sends": limiter.sends,
        "interval": limiter._span / task["budget"],  # at the full budget (shared: it varies)
        "budget_changes": budget_changes,
        "responses": responses,
        "waited": limiter.waited,
        "holds": limiter.holds,
        "max_in_flight": state["max_in_flight"],
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
