"""The audience state store on a real S3 API (moto server on loopback), the way a multi-worker
deployment runs it: snapshots written, read lazily for the streamed diff, committed, pruned."""

from __future__ import annotations

import pyarrow as pa
import pytest

from include.audiences_to_braze.diff_files import diff_snapshot_files
from include.audiences_to_braze.snapshot import commit, committed_file, write_snapshot
from include.clients.state_store import StateStore

pytestmark = pytest.mark.sandbox


@pytest.fixture
def s3_store(s3_bucket, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_bucket.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_bucket.secret_key)
    monkeypatch.setenv("AWS_DEFAULT_REGION", s3_bucket.region)
    import fsspec.config

    # What FSSPEC_S3_ENDPOINT_URL does in a deployment (fsspec reads it when imported).
    monkeypatch.setitem(fsspec.config.conf, "s3", {"endpoint_url": s3_bucket.endpoint_url})
    return StateStore(f"s3://{s3_bucket.name}/braze-lytics"), s3_bucket


def test_snapshots_on_s3_are_diffed_block_by_block_and_committed(s3_store):
    store, bucket = s3_store
    before = pa.array([f"u{i:07d}" for i in range(0, 300_000, 2)])  # 150,000 members
    after = pa.array(sorted({f"u{i:07d}" for i in range(0, 300_000, 2) if i % 100} | {"u9999999", "ü-1"}))
    first = write_snapshot(store, "vip", "run1", before)
    commit(store, "vip", "run1", first, len(before), "2026-12-01T00:00:00Z")
    second = write_snapshot(store, "vip", "run2", after)

    changes = diff_snapshot_files("vip", store.parquet_file(second), committed_file(store, "vip"),
                                  block_rows=10_000)

    assert changes.adds.to_pylist() == ["u9999999", "ü-1"]
    assert changes.removes.to_pylist() == [f"u{i:07d}" for i in range(0, 300_000, 100)]
    assert any(k.endswith("vip/snapshots/run2.parquet") for k in bucket.keys("braze-lytics/"))
