"""ExportBucketHook: the bucket Braze writes bucket exports to, read through Airflow's object storage.

``ObjectStoragePath("s3://<conn_id>@bucket/...")`` turns an Airflow Connection into an fsspec
filesystem (S3 through the amazon provider's s3fs integration; GCS and Azure through theirs), so
the core reads every kind of bucket the same way. Connection: the storage's own type, e.g.
``aws`` with ``login`` = access key id, ``password`` = secret key, and, for S3-compatible
servers, extra ``endpoint_url``.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseHook


class ExportBucketHook(BaseHook):
    """A segment's `bucket_url` + `bucket_conn_id` -> (fsspec filesystem, root path)."""

    conn_name_attr = "bucket_conn_id"
    default_conn_name = "aws_default"
    hook_name = "Braze export bucket"

    def __init__(self, bucket_url: str, bucket_conn_id: str = default_conn_name, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.bucket_url = bucket_url
        self.bucket_conn_id = bucket_conn_id

    def get_fs_and_root(self) -> tuple[Any, str]:
        from airflow.sdk import ObjectStoragePath

        scheme, rest = self.bucket_url.split("://", 1)
        path = ObjectStoragePath(f"{scheme}://{self.bucket_conn_id}@{rest.strip('/')}")
        return path.fs, path.path.rstrip("/")
