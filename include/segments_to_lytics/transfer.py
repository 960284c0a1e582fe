"""One segment, one logical date: fetch -> (decrypt) -> shape -> (encrypt) -> deliver -> report.

This is the body of the DAG's `transfer` task, as plain Python. It is a transaction: every
intermediate file lives in a private scratch directory that is removed on the way out
(plaintext never outlives the call; what a killed call left is swept by the next one), nothing
is delivered when too many rows are rejected, and the delivery replaces the remote file of the
same date atomically - so the task can be cleared and re-run any number of times with the same
result.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from include.clients.pgp.files import PgpKey, decrypt_file, encrypt_file, is_encrypted_name
from include.clients.pgp.keyring import sweep_dead_keyrings
from include.clients.sftp import SftpSettings, deliver
from include.common.errors import ConfigError, RejectedRowsError
from include.common.scratch import scratch_dir
from include.segments_to_lytics.config import SegmentConfig
from include.segments_to_lytics.csv_shape import CsvShaper, ShapeStats, shape_export
from include.segments_to_lytics.export_files import detect_kind
from include.segments_to_lytics.packaging import compress

log = logging.getLogger(__name__)

_PGP_ARMOR = b"-----BEGIN PGP"
_ZIP_OR_GZIP = (b"PK", b"\x1f\x8b")


@dataclass(frozen=True)
class TransferJob:
    segment: SegmentConfig
    logical_date: datetime
    sftp: SftpSettings
    quarantine_dir: Path
    decrypt_key: PgpKey | None = None
    encrypt_key: PgpKey | None = None
    workers: int = 1
    # Set (a StateStore): rejected rows go there, under `quarantine_key`, instead of `quarantine_dir`, so
    # a report served from another host finds them (BRAZE_LYTICS_QUARANTINE_URL).
    quarantine_store: Any = None

    @property
    def ds_nodash(self) -> str:
        return self.logical_date.astimezone(UTC).strftime("%Y%m%d")

    @property
    def timestamp_value(self) -> str:
        """Every row's timestamp: the run's logical date, so a re-run writes the same file."""
        return self.logical_date.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    @property
    def quarantine_path(self) -> Path:
        return quarantine_file(self.quarantine_dir, self.segment.name, self.segment.file_root, self.ds_nodash)

    @property
    def quarantine_key(self) -> str:
        """The quarantine file's key in `quarantine_store`: `<segment>/<file_root>_<YYYYMMDD>.quarantine.csv`."""
        return quarantine_file(Path(), self.segment.name, self.segment.file_root, self.ds_nodash).as_posix()

    @property
    def quarantine_location(self) -> str:
        """Where the rejected rows are, for messages and the report."""
        if self.quarantine_store is not None:
            return self.quarantine_store.path(self.quarantine_key)
        return str(self.quarantine_path)


def quarantine_file(quarantine_dir: Path, segment_name: str, file_root: str, ds_nodash: str) -> Path:
    """Where a segment's rejected rows of one day go (replaced on re-run); the run report serves it."""
    return Path(quarantine_dir) / segment_name / f"{file_root}_{ds_nodash}.quarantine.csv"


def looks_encrypted(path: Path) -> bool:
    """PGP by name (.pgp/.gpg/.asc) or by content (armor header, or a binary OpenPGP packet)."""
    if is_encrypted_name(path.name):
        return True
    with open(path, "rb") as fh:
        head = fh.read(16)
    if head.startswith(_PGP_ARMOR):
        return True
    # Binary OpenPGP starts with a packet tag byte (high bit set) naming a packet a message can start with;
    # zip/gzip/JSON/CSV don't, and neither do the UTF-8/UTF-16 byte order marks (EF BB BF, FF FE, FE FF)
    # of text saved by Excel and friends, whose high bit is set too.
    return bool(head) and _pgp_packet_tag(head[0]) in _PGP_FIRST_PACKETS and not head.startswith(_ZIP_OR_GZIP)


# Packets an OpenPGP message can start with (RFC 4880/9580): PK/SK-encrypted session key (1, 3), signature (2),
# one-pass signature (4), compressed (8), symmetrically encrypted (9, 18, 20), marker (10), literal data (11).
_PGP_FIRST_PACKETS = frozenset({1, 2, 3, 4, 8, 9, 10, 11, 18, 20})


def _pgp_packet_tag(first: int) -> int | None:
    """The packet tag of an OpenPGP packet header byte (old or new format), None if it is not one."""
    if not first & 0x80:
        return None
    return first & 0x3F if first & 0x40 else (first >> 2) & 0x0F


def _decrypt_if_needed(job: TransferJob, raw: Path) -> Path:
    if not looks_encrypted(raw):
        return raw
    if job.decrypt_key is None:
        raise ConfigError(
            f"segment {job.segment.name!r}: the export {raw.name!r} is PGP-encrypted but the segment has no "
            f"pgp.decrypt_conn_id; add the connection holding the private key and passphrase"
        )
    name = raw.name
    for suffix in (".pgp", ".gpg", ".asc"):
        name = name.removesuffix(suffix)
    plain = raw.with_name("decrypted-" + (name if name != raw.name else name + ".bin"))
    decrypt_file(raw, plain, job.decrypt_key.key, job.decrypt_key.passphrase, key_source=job.decrypt_key.source)
    raw.unlink()
    log.info("Decrypted %s with %s", raw.name, job.decrypt_key.source)
    return plain


def _check_rejections(job: TransferJob, stats: ShapeStats) -> None:
    seg = job.segment
    if stats.rejected_share <= seg.max_rejected_share:
        return
    reasons = ", ".join(f"{reason}: {count:,}" for reason, count in stats.reasons.most_common(5))
    raise RejectedRowsError(
        f"segment {seg.name!r}: {stats.rows_rejected:,} of {stats.rows_read:,} rows "
        f"({stats.rejected_share:.2%}) were rejected, above max_rejected_share {seg.max_rejected_share:.2%}. "
        f"Nothing was delivered. Rejected rows with their reasons are in {job.quarantine_location} "
        f"({reasons}). Fix the source data, or raise max_rejected_share for this segment, then clear the task."
    )


def _store_quarantine(job: TransferJob, local: Path, rows: int) -> None:
    """Put the run's rejected rows in the quarantine store (replacing an earlier try's), or remove a stale
    file there when this try rejected nothing - before the rejection check, so a failing run's rows are there."""
    store, key = job.quarantine_store, job.quarantine_key
    if not rows:
        store.delete(key)
        return
    with open(local, "rb") as src, store.open_write(key) as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
    local.unlink()
    log.info("Segment %s: %d rejected row(s) kept in %s", job.segment.name, rows, store.path(key))


def transfer_segment(job: TransferJob, fetch: Callable[[Path], Path | list[Path]]) -> dict:
    """Run the whole transfer; `fetch(scratch)` puts the export file(s) into scratch and returns them
    (several for a bucket export, in export order)."""
    seg = job.segment
    # A transfer killed with SIGKILL (OOM killer, a lost worker) leaves its plaintext: its gpg home (and
    # agent) are removed here, its scratch directory by scratch_dir (both name their process).
    sweep_dead_keyrings()
    with scratch_dir(seg.name) as work:
        fetched = fetch(work)
        raws = [_decrypt_if_needed(job, path) for path in ([fetched] if isinstance(fetched, Path) else fetched)]
        export_bytes = sum(raw.stat().st_size for raw in raws)
        kind = detect_kind(raws[0])
        shaper = CsvShaper(
            seg.columns, id_field=seg.id_field, timestamp_column=seg.timestamp_column,
            timestamp_value=job.timestamp_value, nested=kind != "csv",
        )
        plain_csv = work / f"{seg.file_root}_{job.ds_nodash}.csv"
        read_options = {"max_record_bytes": int(seg.max_record_mib * (1 << 20)),
                        "max_inflate_ratio": seg.max_inflate_ratio,
                        "required_fields": list(seg.columns.values()) if kind == "csv" else None}
        local_quarantine = work / "quarantine" / "rejected.csv" if job.quarantine_store else job.quarantine_path
        stats = shape_export(raws, shaper, plain_csv, local_quarantine, kind=kind, workers=job.workers,
                             read_options=read_options)
        if job.quarantine_store is not None:
            _store_quarantine(job, local_quarantine, stats.rows_quarantined)
        for raw in raws:
            raw.unlink()
        log.info(
            "Segment %s: read %d rows, wrote %d, rejected %d, duplicates %d (%s)", seg.name, stats.rows_read,
            stats.rows_written, stats.rows_rejected, stats.rows_duplicate, dict(stats.reasons) or "no rejections",
        )
        _check_rejections(job, stats)

        remote_name = seg.remote_name(job.ds_nodash)
        packaged = compress(plain_csv, seg.compression, work / remote_name.removesuffix(".pgp"), plain_csv.name)
        if job.encrypt_key is not None:
            encrypted = work / remote_name
            encrypt_file(packaged, encrypted, job.encrypt_key.key,
                         compress=seg.pgp.compress and seg.compression == "none", key_source=job.encrypt_key.source)
            os.unlink(packaged)
            packaged = encrypted
        delivery = deliver(job.sftp, packaged, seg.remote_path(job.ds_nodash), manifest=seg.manifest)

    return {
        "segment": seg.name,
        "segment_id": seg.segment_id,
        "source": seg.source,
        "logical_date": job.timestamp_value,
        "rows_read": stats.rows_read,
        "rows_written": stats.rows_written,
        "rows_quarantined": stats.rows_quarantined,
        "rows_rejected": stats.rows_rejected,
        "rows_duplicate": stats.rows_duplicate,
        "quarantine_file": job.quarantine_location if stats.rows_quarantined else None,
        "export_bytes": export_bytes,
        "bytes": delivery.bytes,
        "sha256": delivery.sha256,
        "remote_path": delivery.remote_path,
        "manifest_path": delivery.manifest_path,
        "encrypted": job.encrypt_key is not None,
        "compression": seg.compression,
    }
