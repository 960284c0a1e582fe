"""A delivery worker killed mid-chunk (SIGKILL, no clean-up) and re-run resends less than a chunk:
at most the batches recorded since its last checkpoint plus the ones it had in flight."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pyarrow as pa
import pytest

from include.audiences_to_braze import run_files
from include.audiences_to_braze.delivery import CHECKPOINT_EVERY, IN_FLIGHT, deliver_chunk
from include.audiences_to_braze.planning import PlanOptions
from include.clients.braze.track import BrazeTrackClient
from include.clients.state_store import StateStore
from include.common.rate_limit import RateLimiter
from sandbox.braze_server import BrazeSandbox

pytestmark = pytest.mark.sandbox

KEY = "resume-key"
USERS = 4_500  # 60 batches of 75
RUN = "r1"

WORKER = """
import sys
from include.audiences_to_braze.delivery import deliver_chunk
from include.audiences_to_braze.planning import PlanOptions
from include.clients.braze.track import BrazeTrackClient
from include.common.rate_limit import RateLimiter
from include.clients.state_store import StateStore
url, state, rate = sys.argv[1], sys.argv[2], int(sys.argv[3])
client = BrazeTrackClient(url, "resume-key", limiter=RateLimiter(rate, 1.0))
deliver_chunk(StateStore(state), "r1", 0, client.track, PlanOptions())
"""


@pytest.mark.parametrize(("rate", "response_delay"), [
    (40, 0.0),  # paced: about one request in flight at a time
    (2_000, 0.15),  # slow answers, fast pacing: IN_FLIGHT requests under way when the worker dies
], ids=["paced", "in-flight"])
def test_killed_delivery_resumes_from_its_checkpoint(tmp_path, rate, response_delay):
    store = StateStore(str(tmp_path / "state"))
    ids = [f"u{i:06d}" for i in range(USERS)]
    store.write_table(run_files.chunk_key(RUN, 0), pa.table({
        "external_id": pa.array(ids, pa.string()),
        "add": pa.array([["vip"]] * USERS, pa.list_(pa.string())),
        "remove": pa.array([[]] * USERS, pa.list_(pa.string())),
    }))
    with BrazeSandbox(KEY) as braze:
        braze.track.response_delay = response_delay
        worker = subprocess.Popen([sys.executable, "-c", WORKER, braze.url, str(tmp_path / "state"), str(rate)])
        deadline = time.monotonic() + 60
        while braze.stats["accepted"] < 35:  # past the first checkpoint (20), before the second (40)
            assert worker.poll() is None and time.monotonic() < deadline
            time.sleep(0.01)
        worker.send_signal(signal.SIGKILL)  # no finally blocks, no clean-up: a lost worker
        worker.wait()
        sent_before_kill = braze.stats["accepted"]
        assert sent_before_kill < USERS // 75

        progress = deliver_chunk(store, RUN, 0, BrazeTrackClient(braze.url, KEY, limiter=RateLimiter(400, 1.0)).track,
                                 PlanOptions())

        batches = USERS // 75
        resent = braze.stats["accepted"] - batches
        assert progress["done"] and progress["batches_done"] == batches
        # At most the batches recorded since the last checkpoint (< CHECKPOINT_EVERY) plus those in
        # flight (<= IN_FLIGHT): a batch that finished out of order is not counted before its elders.
        assert 0 <= resent <= CHECKPOINT_EVERY + IN_FLIGHT - 1 < batches
        assert braze.profiles.snapshot() == {i: frozenset({"vip"}) for i in ids}
        # A further re-run (the task cleared again after success) sends nothing.
        deliver_chunk(store, RUN, 0, BrazeTrackClient(braze.url, KEY).track, PlanOptions())
        assert braze.stats["accepted"] == batches + resent
