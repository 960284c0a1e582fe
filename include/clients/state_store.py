"""A small key -> bytes store for pipeline state, on any fsspec filesystem.

The Lytics -> Braze pipeline remembers, per audience, which members it last delivered
(`include.audiences_to_braze.snapshot`). That state must survive workers and be shared between them, so
it lives under one URL: a local directory for development and tests, `s3://bucket/prefix` in
production (any fsspec URL works: `memory://` in unit tests, `gcs://`, `abfs://`).

Keys are '/'-separated relative paths (`audiences/vip/committed.json`); `..`, empty segments and
absolute keys are refused, so a key can never leave the store's root.

Every write is all-or-nothing, which is what makes a commit pointer safe to swap:

- local paths: the data goes to a hidden temporary file in the target's directory, is fsynced,
  then `os.replace`d over the target (atomic on POSIX within one filesystem);
- object stores: the data is staged in a local temporary file and uploaded with one put, which
  S3/GCS make visible only once complete; a failed write uploads nothing.

Example::

    store = StateStore("s3://acme-pipelines/lytics-to-braze")
    store.write_json("audiences/vip/committed.json", {"snapshot": "..."})
    with store.open_write("exports/report.csv") as fh:
        fh.write(b"id\\n")
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import posixpath
import tempfile
from collections.abc import Iterator
from datetime import datetime
from typing import IO, Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from include.common import settings
from include.common.errors import (
    AuthError,
    ConfigError,
    NotFoundError,
    PermanentError,
    StorageError,
    TransientError,
)
from include.common.scratch import disk_errors, private_dirs, process_stamp, sweep_dead_scratch

# Hidden temporary files of unfinished local writes: `.<name>.tmp-XXXXXXXX`. `list()` skips them.
_TMP_MARK = ".tmp-"
# Where the store is configured, for messages that ask to point it elsewhere.
_SETTING = f"state_url (lytics_to_braze in the pipeline configuration) or {settings.STATE_URL}"
# A read-only filesystem, a full disk or quota: waiting does not help, someone must act.
_UNWRITABLE = {errno.EROFS: "its filesystem is read-only", errno.ENOSPC: "its disk is full",
               errno.EDQUOT: "the disk quota is exceeded"}


class StateStore:
    """Keys and values (bytes, JSON, Parquet tables) under one fsspec URL.

    :param url: where the state lives: a local directory (created on first write), `file://...`,
        `s3://bucket/prefix`, `memory://name`, ... Credentials for object stores come from the
        environment as fsspec/s3fs read them (instance role, `AWS_*` variables), unless the caller
        opened the filesystem itself and passes it as `filesystem` with the path inside it as `root`
        (the Airflow glue does this for `s3://<conn_id>@bucket/prefix`, credentials from a Connection).
    """

    def __init__(self, url: str, *, filesystem: Any = None, root: str | None = None, setting: str = _SETTING):
        if not url or not str(url).strip():
            raise ConfigError("state store URL is empty: set it to a local directory or an s3:// URL")
        self.url = str(url)
        self.setting = setting  # where this store is configured, for messages
        if filesystem is not None:  # opened by the caller (e.g. from an Airflow connection): `root` is its path
            self.fs, root = filesystem, str(root or "")
        else:
            try:
                self.fs, root = fsspec.core.url_to_fs(self.url)
            except (ImportError, ValueError) as exc:  # unknown protocol, or its package is missing (s3fs, gcsfs)
                raise ConfigError(f"state store URL {self.url!r} cannot be opened: {exc}") from exc
        self._root = root.rstrip("/")
        self._local = isinstance(self.fs, LocalFileSystem)

    def __repr__(self) -> str:
        return f"StateStore({self.url!r})"

    # -- addressing ------------------------------------------------------------------------------

    def _full(self, key: str) -> str:
        return f"{self._root}/{_check_key(key)}"

    def path(self, key: str) -> str:
        """The full location of `key` (a local path or a URL), for messages and logs."""
        full = self._full(key)
        return full if self._local else self.fs.unstrip_protocol(full)

    # -- reading ---------------------------------------------------------------------------------

    def exists(self, key: str) -> bool:
        full = self._full(key)
        with self._errors(key, "check"):
            return bool(self.fs.isfile(full))

    def read_bytes(self, key: str) -> bytes:
        """The stored bytes of `key`; `NotFoundError` when there are none."""
        full = self._full(key)
        with self._errors(key, "read"):
            return self.fs.cat_file(full)

    def read_json(self, key: str) -> Any:
        data = self.read_bytes(key)
        try:
            return json.loads(data)
        except ValueError as exc:
            raise PermanentError(
                f"state file {self.path(key)} is not valid JSON ({exc}); it was written by something "
                "else or damaged: restore it from a backup or delete it to start over"
            ) from exc

    def read_table(self, key: str):
        """A Parquet file written by `write_table`, as a `pyarrow.Table`."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self._local:
            full = self._full(key)
            with self._errors(key, "read"):
                if not os.path.isfile(full):
                    raise FileNotFoundError(full)
                return pq.read_table(full, memory_map=True)
        return pq.read_table(pa.BufferReader(self.read_bytes(key)))

    def parquet_file(self, key: str):
        """`key` opened as a `pyarrow.parquet.ParquetFile`, to read it batch by batch.

        Local files are memory-mapped; from object stores the file is read lazily in 8 MB ranges
        (the footer first, then each row group as it is read), so memory stays bounded by a block,
        not the file.
        """
        import pyarrow.parquet as pq

        full = self._full(key)
        with self._errors(key, "read"):
            if self._local:
                return pq.ParquetFile(full, memory_map=True)
            return pq.ParquetFile(self.fs.open(full, "rb", block_size=8 << 20))

    def modified(self, key: str) -> datetime:
        """When `key` was last written (the filesystem's or object store's timestamp)."""
        full = self._full(key)
        with self._errors(key, "stat"):
            return self.fs.modified(full)

    def list(self, prefix: str = "") -> list[str]:
        """Every key under the folder `prefix` (recursively), sorted; [] when there is none."""
        base = f"{self._root}/{_check_key(prefix)}" if prefix.strip("/") else self._root
        with self._errors(prefix or "/", "list"):
            # Object-store filesystems (s3fs) cache directory listings per process; state written by other
            # workers since must show (S3 itself lists read-after-write consistently).
            self.fs.invalidate_cache(base)
            if not self.fs.isdir(base):
                return []
            found = self.fs.find(base)
        strip = self.fs._strip_protocol(self._root).rstrip("/") + "/"
        keys = []
        for name in found:
            name = self.fs._strip_protocol(name)
            if not name.startswith(strip):
                continue
            key = name[len(strip):]
            if _TMP_MARK in posixpath.basename(key) and posixpath.basename(key).startswith("."):
                continue  # a local write in progress (or one killed mid-way)
            keys.append(key)
        return sorted(keys)

    # -- writing ---------------------------------------------------------------------------------

    def write_bytes(self, key: str, data: bytes) -> None:
        with self.open_write(key) as fh:
            fh.write(data)

    def write_json(self, key: str, value: Any) -> None:
        self.write_bytes(key, json.dumps(value, indent=1, sort_keys=True).encode() + b"\n")

    def write_table(self, key: str, table, **parquet_options) -> None:
        """Store a `pyarrow.Table` as Parquet (zstd unless `compression=` says otherwise)."""
        import pyarrow.parquet as pq

        parquet_options.setdefault("compression", "zstd")
        with self._staged(key) as tmp:
            pq.write_table(table, tmp, **parquet_options)

    @contextlib.contextmanager
    def open_write(self, key: str) -> Iterator[IO[bytes]]:
        """A binary file whose content replaces `key` only if the block ends without an exception."""
        with self._staged(key) as tmp, open(tmp, "wb") as fh:
            yield fh

    def delete(self, key: str) -> None:
        """Remove `key`; nothing happens when it does not exist."""
        full = self._full(key)
        with self._errors(key, "delete"):
            try:
                self.fs.rm_file(full)
            except FileNotFoundError:
                pass

    @contextlib.contextmanager
    def _staged(self, key: str) -> Iterator[str]:
        """A local temp path to write; it becomes `key` atomically on success, vanishes on failure."""
        full = self._full(key)
        if self._local:
            directory = os.path.dirname(full)
            with self._errors(key, "write"):
                private_dirs(directory)  # 0700: snapshots, plans, dead letters hold customer ids
                fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(full)}{_TMP_MARK}", dir=directory)  # 0600
            os.close(fd)
        else:
            root = settings.work_dir()  # ids are personal data: keep them where the project keeps its scratch files
            private_dirs(root)
            sweep_dead_scratch(root)  # staging files (and scratch) of killed tasks: customer ids
            # Stamped with this process, so a killed task's staging file is swept like this.
            fd, tmp = tempfile.mkstemp(prefix=f"state-store-{process_stamp()}-", dir=root)
            os.close(fd)
        try:
            # The caller writes the staged file: on a local store that is the store's own disk; an object
            # store's staging file is in the scratch dir (a full one is named as such).
            with self._errors(key, "write") if self._local else disk_errors(f"staging state {key!r}", root):
                yield tmp
            with self._errors(key, "write"):
                if self._local:
                    _fsync_path(tmp)
                    os.replace(tmp, full)
                    _fsync_path(directory)
                else:
                    self.fs.put_file(tmp, full)  # one put: the object appears whole or not at all
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    @contextlib.contextmanager
    def _errors(self, key: str, action: str) -> Iterator[None]:
        """Turn filesystem errors into the project's typed errors, naming the key's location."""
        try:
            yield
        except FileNotFoundError as exc:
            raise NotFoundError(f"state {self._where(key)} does not exist ({action})") from exc
        except PermissionError as exc:
            raise AuthError(
                f"no permission to {action} state {self._where(key)}: {exc}; check the worker's "
                f"credentials / the directory's owner, or point {self.setting} to a place it may write"
            ) from exc
        except (NotADirectoryError, IsADirectoryError) as exc:
            raise PermanentError(f"cannot {action} state {self._where(key)}: {exc}") from exc
        except OSError as exc:  # network drops, throttling (s3fs raises OSError subclasses)
            if exc.errno in _UNWRITABLE:
                raise StorageError(
                    f"cannot {action} state {self._where(key)}: {_UNWRITABLE[exc.errno]} ({exc}). Free space or make "
                    f"it writable, or point {self.setting} to another place (moving the existing state with it), then "
                    f"clear the task."
                ) from exc
            raise TransientError(f"could not {action} state {self._where(key)}: {exc}") from exc

    def _where(self, key: str) -> str:
        try:
            return self.path(key)
        except PermanentError:
            return f"{self.url} / {key!r}"


def _check_key(key: str) -> str:
    """Refuse keys that could escape the root or mean two different things on different stores.

    Raises `ConfigError` (a `PermanentError`) naming the key: keys are built from configured
    names (audience slugs, run ids), so a bad one is a configuration problem, never retried.
    """
    if not isinstance(key, str) or not key:
        raise ConfigError(f"state key must be a non-empty string, got {key!r}")
    if key.startswith("/") or "\\" in key or "\x00" in key or (len(key) > 1 and key[1] == ":"):
        raise ConfigError(f"state key {key!r} must be a relative '/'-separated path")
    parts = key.rstrip("/").split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise ConfigError(f"state key {key!r} has an empty, '.' or '..' segment (path traversal refused)")
    return "/".join(parts)


def _fsync_path(path: str) -> None:
    """Flush a file's or directory's data to disk, so a crash cannot leave a renamed-but-empty file."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
