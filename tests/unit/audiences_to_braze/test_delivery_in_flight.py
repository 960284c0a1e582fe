"""deliver_chunk with several requests in flight: ordered checkpoints, exact counts, failures."""

from __future__ import annotations

import random
import threading
import time

import pyarrow as pa
import pytest

from include.audiences_to_braze import run_files
from include.audiences_to_braze.delivery import CHECKPOINT_EVERY, IN_FLIGHT, deliver_chunk
from include.audiences_to_braze.planning import PlanOptions
from include.clients.braze.track import TrackResult
from include.clients.state_store import StateStore
from include.common.errors import AuthError

RUN = "r1"
OPTIONS = PlanOptions(batch_size=5)
AUDIENCES = ["a", "b", "c", "d"]


def _chunk(store: StateStore, users: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    ids = [f"u{i:05d}" for i in range(users)]
    adds = [rng.sample(AUDIENCES, rng.randint(0, 2)) for _ in ids]
    removes = [[] if add else [rng.choice(AUDIENCES)] for add in adds]
    store.write_table(run_files.chunk_key(RUN, 0), pa.table({
        "external_id": pa.array(ids, pa.string()),
        "add": pa.array(adds, pa.list_(pa.string())),
        "remove": pa.array(removes, pa.list_(pa.string())),
    }))
    return ids


class RecordingStore(StateStore):
    """Notes every progress checkpoint together with the batches whose track() had returned by then."""

    def __init__(self, root, fake):
        super().__init__(root)
        self.fake = fake
        self.checkpoints: list[tuple[dict, set[int], int]] = []  # (progress, finished batches, calls started)

    def write_json(self, key, value):
        with self.fake.lock:
            self.checkpoints.append((
                {k: v for k, v in value.items() if k in ("rows_done", "batches_done", "done")},
                set(self.fake.finished), self.fake.started))
        super().write_json(key, value)


class FakeTrack:
    """track(): the outcome depends only on the batch (so any order gives the same counts); a
    random delay per call makes later batches finish before earlier ones."""

    def __init__(self, seed: int = 1, max_delay: float = 0.02, fail_first: str | None = None,
                 together: int = 0):
        self.rng = random.Random(seed)
        self.together = threading.Barrier(together, timeout=20) if together else None  # first calls wait for each other
        self.max_delay = max_delay
        self.fail_first = fail_first  # external_id of the first object of the batch that raises
        self.lock = threading.Lock()
        self.started = 0
        self.running = 0
        self.most_running = 0
        self.finished: set[int] = set()  # batch numbers (first user's number // batch size)
        self.finish_order: list[int] = []

    def __call__(self, batch: list[dict], *, update_existing_only: bool = False) -> TrackResult:
        number = int(batch[0]["external_id"][1:]) // OPTIONS.batch_size
        with self.lock:
            self.started += 1
            first_calls = self.together is not None and self.started <= self.together.parties
            self.running += 1
            self.most_running = max(self.most_running, self.running)
            delay = self.rng.uniform(0, self.max_delay) * (5 if number % 7 == 0 else 1)
        if first_calls:
            self.together.wait()  # BrokenBarrierError unless that many calls are under way at once
        time.sleep(delay)
        try:
            if batch[0]["external_id"] == self.fail_first:
                raise AuthError("Braze POST /users/track answered 401")
            failed = [(i, "Invalid 'external_id'") for i, obj in enumerate(batch) if obj["external_id"].endswith("3")]
            retries = number % 3
            return TrackResult(sent=len(batch) - len(failed), failed=failed, retries=retries)
        finally:
            with self.lock:
                self.running -= 1
                self.finished.add(number)
                self.finish_order.append(number)


def test_checkpoints_only_ever_count_a_finished_prefix(tmp_path):
    fake = FakeTrack()
    store = RecordingStore(str(tmp_path), fake)
    users = _chunk(store, 1_003)  # 201 batches of 5 (the last one of 3)
    progress = deliver_chunk(store, RUN, 0, fake, OPTIONS, in_flight=8)
    batches = 201
    assert progress["done"] and progress["batches_done"] == batches and progress["rows_done"] == len(users)
    assert 1 < fake.most_running <= 8  # several requests really were in flight ...
    assert fake.finish_order != sorted(fake.finish_order)  # ... and finished out of order
    intermediate = [c for c in store.checkpoints if not c[0]["done"]]
    assert [c[0]["batches_done"] for c in intermediate] == list(range(CHECKPOINT_EVERY, batches, CHECKPOINT_EVERY))
    for saved, finished, started in intermediate:
        done = saved["batches_done"]
        assert saved["rows_done"] == done * OPTIONS.batch_size  # rows of exactly the first `done` batches
        assert set(range(done)) <= finished  # every one of them had finished
        assert started - done <= 8  # never more than the in-flight window beyond the checkpoint


@pytest.mark.parametrize("in_flight", sorted({2, 8, IN_FLIGHT}))
def test_counts_are_exactly_those_of_one_request_at_a_time(tmp_path, in_flight):
    one_store = StateStore(str(tmp_path / "one"))
    _chunk(one_store, 777, seed=5)
    one = deliver_chunk(one_store, RUN, 0, FakeTrack(max_delay=0.0), OPTIONS, in_flight=1)
    many_store = StateStore(str(tmp_path / "many"))
    _chunk(many_store, 777, seed=5)
    fake = FakeTrack(seed=9, together=in_flight)
    many = deliver_chunk(many_store, RUN, 0, fake, OPTIONS, in_flight=in_flight)
    assert fake.most_running == in_flight  # `in_flight` requests at once (the first ones waited for each other), never more
    assert many == one  # sent, requests, retries, failed rows (in row order), per audience
    assert one["requests"] == 156 + one["retries"] and one["failed"] and one["per_audience"].keys() == set(AUDIENCES)


def test_a_failed_batch_stops_the_chunk_and_keeps_the_finished_prefix(tmp_path):
    fake = FakeTrack(fail_first="u00250")  # batch 50 of 100
    store = RecordingStore(str(tmp_path), fake)
    users = _chunk(store, 500)
    with pytest.raises(AuthError, match="401"):
        deliver_chunk(store, RUN, 0, fake, OPTIONS, in_flight=8)
    assert fake.started <= 50 + 8  # nothing sent after the failure but what was already under way
    assert fake.running == 0  # and that finished before deliver_chunk raised
    saved = store.read_json(run_files.progress_key(RUN, 0))
    assert saved["batches_done"] == 50 and saved["rows_done"] == 250 and not saved["done"]

    # The retry resumes at the failed batch: batches 50..99 only.
    retry = FakeTrack(seed=3)
    progress = deliver_chunk(StateStore(str(tmp_path)), RUN, 0, retry, OPTIONS, in_flight=8)
    assert progress["done"] and progress["rows_done"] == len(users) and retry.finished == set(range(50, 100))


def test_in_flight_must_be_positive(tmp_path):
    store = StateStore(str(tmp_path))
    _chunk(store, 10)
    with pytest.raises(ValueError, match="in_flight"):
        deliver_chunk(store, RUN, 0, FakeTrack(), OPTIONS, in_flight=0)


def test_progress_is_logged_every_ten_percent_of_the_chunk_and_from_the_resume_point(tmp_path, caplog):
    import logging

    caplog.set_level(logging.INFO, logger="include.audiences_to_braze.delivery")
    store = StateStore(str(tmp_path))
    _chunk(store, 1_000)
    deliver_chunk(store, RUN, 0, FakeTrack(max_delay=0.0), OPTIONS, in_flight=4)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Delivering chunk 0")]
    assert lines == [f"Delivering chunk 0: {p}% ({p * 10:,} of 1,000 users)" for p in range(10, 101, 10)]
