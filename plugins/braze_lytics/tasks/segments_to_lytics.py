"""Task bodies of `braze_segments_to_lytics`: Airflow context and Connections in, core calls out.

    plan_segments    -> include.segments_to_lytics.config (read once: the run's frozen configuration)
    start_export     -> hooks.braze -> include.clients.braze.export (POST /users/export/segment)
                        or the drop folder of source: drop
    wait_for_export  -> sensors.braze_export -> export_is_ready (the export link, or
                        include.segments_to_lytics.drop_source)
    transfer         -> hooks.sftp_target / hooks.pgp_key -> include.segments_to_lytics.transfer
                        (download -> pgp decrypt? -> csv_shape -> pgp encrypt? -> clients.sftp)
    summarize        -> the run's table, XCom and asset event

Each segment's configuration travels from plan_segments through XCom, so a cleared task runs
with the settings its run was planned with. Heavy modules are imported inside the functions
(DAG parsing must stay light).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from braze_lytics.failures import fail_fast_on_permanent_errors

log = logging.getLogger(__name__)

def run_date(context) -> Any:
    """The run's date: its logical date, or for a manual run without one, when it was due."""
    return context.get("logical_date") or context["dag_run"].run_after


def plan_segments(selected: list[str] | None, context) -> list[dict]:
    """Read and validate the configuration; one small dict per segment to map over."""
    from braze_lytics.trigger_forms import refuse_unknown_conf
    from include.segments_to_lytics.config import load_config

    with fail_fast_on_permanent_errors():
        refuse_unknown_conf(context)
        config = load_config()
        segments = config.select(selected or [])
    log.info("Configuration %s: %d segment(s): %s", config.path, len(segments), [s.name for s in segments])
    return [s.to_dict() for s in segments]


def start_export(segment: dict, context) -> dict:
    """Ask Braze for the export (api) or work out where the drop will land (drop)."""
    from include.segments_to_lytics.config import SegmentConfig

    seg = SegmentConfig.from_dict(segment)
    context["segment_label"] = seg.name
    common = {
        "segment": seg.name,
        "kind": seg.source,
        "poll_interval_seconds": seg.poll_interval_seconds,
        "timeout_seconds": seg.export_timeout_minutes * 60,
    }
    with fail_fast_on_permanent_errors():
        _check_delivery_target(seg)
        if seg.source == "drop":
            ds = run_date(context).strftime("%Y-%m-%d")
            directory = seg.drop.directory_for(segment_id=seg.segment_id, name=seg.name, ds=ds)
            log.info("Segment %s: expecting a drop matching %r in %s", seg.name, seg.drop.pattern, directory)
            return {**common, "directory": directory, "pattern": seg.drop.pattern, "conn_id": seg.drop.conn_id}
        from braze_lytics.hooks.braze import BrazeHook
        from braze_lytics.tasks.export_callback import request_callback

        client = BrazeHook(seg.braze_conn_id).get_conn()
        # With callback_base_url: a secret per-export callback URL for Braze; XCom gets only its digest.
        callback_endpoint, common["callback"] = request_callback(seg)
        job = client.start_segment_export(seg.segment_id, list(seg.fields_to_export), seg.output_format,
                                          callback_endpoint=callback_endpoint)
        log.info("Segment %s: Braze export started (object prefix %s)", seg.name, job.object_prefix)
        if job.url is None:
            return {**common, **_bucket_export(seg, job.object_prefix)}
        # The download link is pre-signed (a bearer secret): only its sealed form goes to XCom.
        return {**common, "braze_conn_id": seg.braze_conn_id, "object_prefix": job.object_prefix,
                "sealed_url": client.seal(job.url), "output_format": seg.output_format}


def _check_delivery_target(seg) -> None:
    """Connect to the SFTP target (host key, login, remote dir writable) before any export is asked for:
    a changed host key or a wrong password fails in seconds, not after shaping a 5M-user export."""
    from braze_lytics.hooks.sftp_target import SftpTargetHook
    from include.clients.sftp import check_target

    check_target(SftpTargetHook(seg.sftp_conn_id).get_settings(), seg.remote_dir)
    log.info("Segment %s: delivery target %s:%s is reachable and writable", seg.name, seg.sftp_conn_id, seg.remote_dir)


def _bucket_export(seg, object_prefix: str) -> dict:
    """Braze answered with an object prefix and no link: the export goes to the workspace's bucket."""
    from datetime import UTC, datetime

    from include.common.errors import ConfigError

    if not seg.bucket_url:
        raise ConfigError(
            f"segment {seg.name!r}: Braze accepted the export but sent no download link: this workspace exports "
            f"to its own S3/Azure/GCS bucket (object prefix {object_prefix!r}). Set bucket_url (e.g. "
            f"s3://your-braze-bucket) and bucket_conn_id for this segment, then clear its task group."
        )
    log.info("Segment %s: bucket export to %s (object prefix %s)", seg.name, seg.bucket_url, object_prefix)
    return {"kind": "bucket", "segment_id": seg.segment_id, "object_prefix": object_prefix,
            "requested_day": datetime.now(UTC).strftime("%Y-%m-%d"), "bucket_url": seg.bucket_url,
            "bucket_conn_id": seg.bucket_conn_id, "quiet_seconds": seg.bucket_quiet_minutes * 60}


def _bucket_objects(export: dict):
    """(filesystem, the export's objects in export order) of a bucket export."""
    from datetime import date

    from braze_lytics.hooks.export_bucket import ExportBucketHook
    from include.segments_to_lytics.bucket_export import find_export_objects

    fs, root = ExportBucketHook(export["bucket_url"], export["bucket_conn_id"]).get_fs_and_root()
    return fs, find_export_objects(fs, root, export["segment_id"], export["object_prefix"],
                                   date.fromisoformat(export["requested_day"]))


def _drop_sftp(export: dict):
    if not export.get("conn_id"):
        return None
    from braze_lytics.hooks.sftp_target import SftpTargetHook

    return SftpTargetHook(export["conn_id"]).get_settings()


def export_is_ready(export: dict) -> bool:
    """Complete when Braze's callback was recorded (if one was requested) or by the fallback check
    (bucket: quiet period; link: ranged GET), whichever comes first; the log says which."""
    from braze_lytics.tasks.export_callback import callback_arrived, forget_callback

    if export["kind"] == "bucket":
        from include.segments_to_lytics.bucket_export import export_complete

        called = callback_arrived(export)
        _, objects = _bucket_objects(export)
        if called and objects:
            done, how = True, "Braze's callback arrived"
        else:
            done = export_complete(objects, export["quiet_seconds"])
            how = f"no object changed for {export['quiet_seconds']:g} s" + (
                "; no callback received" if export.get("callback") else "")
        log.info("Bucket export for %s: %d object(s)%s", export["segment"], len(objects),
                 f", complete ({how})" if done else (", still being written" if objects else ""))
        if done:
            forget_callback(export)
        return done
    if export["kind"] == "drop":
        from include.segments_to_lytics.drop_source import find_drop

        name = find_drop(export["directory"], export["pattern"], _drop_sftp(export))
        log.info("Drop for %s: %s", export["segment"], f"found {name}" if name else "nothing yet")
        return name is not None
    from braze_lytics.hooks.braze import BrazeHook

    if callback_arrived(export):
        log.info("Braze export for %s: ready (Braze's callback arrived)", export["segment"])
        forget_callback(export)
        return True
    client = BrazeHook(export["braze_conn_id"]).get_conn()
    ready = client.export_ready(client.unseal(export["sealed_url"]))
    log.info("Braze export for %s: %s", export["segment"],
             ("ready (the link answered" + ("; no callback received)" if export.get("callback") else ")"))
             if ready else "not ready yet")
    if ready:
        forget_callback(export)
    return ready


def _fetcher(export: dict):
    """A function that puts the export file(s) into the scratch directory it is given."""
    if export["kind"] == "bucket":
        from include.segments_to_lytics.bucket_export import fetch_export_objects

        def fetch_bucket_objects(work: Path) -> list[Path]:
            fs, objects = _bucket_objects(export)
            return fetch_export_objects(fs, objects, work)

        return fetch_bucket_objects
    if export["kind"] == "drop":
        from include.common.errors import NotFoundError
        from include.segments_to_lytics.drop_source import fetch_drop, find_drop

        sftp = _drop_sftp(export)

        def fetch_drop_file(work: Path) -> Path:
            name = find_drop(export["directory"], export["pattern"], sftp)
            if name is None:
                raise NotFoundError(
                    f"segment {export['segment']!r}: no file matching {export['pattern']!r} in "
                    f"{export['directory']!r} any more; was it moved? Re-drop it and clear the segment's tasks."
                )
            log.info("Taking drop file %s from %s", name, export["directory"])
            return fetch_drop(export["directory"], name, work, sftp)

        return fetch_drop_file

    from braze_lytics.hooks.braze import BrazeHook

    client = BrazeHook(export["braze_conn_id"]).get_conn()
    url = client.unseal(export["sealed_url"])

    def download_export(work: Path) -> Path:
        dest = work / ("export.zip" if export["output_format"] == "zip" else "export.json.gz")
        client.download(url, dest)
        return dest

    return download_export


def quarantine_store():
    """The object store for rejected rows when BRAZE_LYTICS_QUARANTINE_URL is set, else None (the local
    BRAZE_LYTICS_QUARANTINE_DIR)."""
    from braze_lytics.hooks.state_store import open_state_store
    from include.common import settings

    url = settings.quarantine_url()
    return None if url is None else open_state_store(url, setting=settings.QUARANTINE_URL)


def transfer(segment: dict, export: dict, context) -> dict:
    """Download, shape, protect and deliver one segment; returns the small report dict."""
    from braze_lytics.hooks.pgp_key import PgpKeyHook
    from braze_lytics.hooks.sftp_target import SftpTargetHook
    from include.common import settings
    from include.segments_to_lytics.config import SegmentConfig
    from include.segments_to_lytics.transfer import TransferJob, transfer_segment

    seg = SegmentConfig.from_dict(segment)
    context["segment_label"] = seg.name
    with fail_fast_on_permanent_errors():
        job = TransferJob(
            segment=seg,
            logical_date=run_date(context),
            sftp=SftpTargetHook(seg.sftp_conn_id).get_settings(),
            quarantine_dir=settings.quarantine_dir(),
            decrypt_key=PgpKeyHook(seg.pgp.decrypt_conn_id).get_private_key() if seg.pgp.decrypt_conn_id else None,
            encrypt_key=PgpKeyHook(seg.pgp.encrypt_conn_id).get_public_key() if seg.pgp.encrypt_conn_id else None,
            workers=settings.shape_workers(),
            quarantine_store=quarantine_store(),
        )
        report = transfer_segment(job, _fetcher(export))
        if export["kind"] == "bucket" and seg.bucket_cleanup == "delete":
            from include.segments_to_lytics.bucket_export import delete_export_objects

            fs, objects = _bucket_objects(export)
            delete_export_objects(fs, objects)  # only after a successful delivery
    log.info("Segment %s delivered:\n%s", seg.name, "\n".join(f"  {k:<17} {v}" for k, v in report.items()))
    return report


SUMMARY_KEYS = ("rows_read", "rows_written", "rows_quarantined", "bytes")


def summarize(reports, expected: list[dict]) -> dict:
    """The run's summary; fails the run (after reporting) if any segment did not deliver."""
    from airflow.sdk.exceptions import AirflowFailException

    if expected is None:
        raise AirflowFailException("no segments were planned: plan_segments failed (see its log, usually the "
                                   "configuration file)")
    # Airflow 3.3.2 hands over a mapped task group's single result as the bare dict, and
    # several results as a lazy sequence (with None for instances that pushed nothing).
    from braze_lytics.mapped_results import mapped_results

    reports = mapped_results(reports)

    delivered = {r["segment"]: r for r in reports if r}
    missing = [s["name"] for s in expected if s["name"] not in delivered]
    lines = ["| segment | rows read | written | quarantined | bytes | remote path |", "|---|---:|---:|---:|---:|---|"]
    for r in delivered.values():
        lines.append(f"| {r['segment']} | {r['rows_read']:,} | {r['rows_written']:,} | {r['rows_quarantined']:,} "
                     f"| {r['bytes']:,} | {r['remote_path']} |")
    for name in missing:
        lines.append(f"| {name} | FAILED | | | | see the segment's task logs |")
    log.info("Run summary:\n%s", "\n".join(lines))
    summary = {
        "segments": len(expected),
        "delivered": sorted(delivered),
        "failed": missing,
        **{k: sum(r[k] for r in delivered.values()) for k in SUMMARY_KEYS},
        "files": {name: r["remote_path"] for name, r in delivered.items()},
    }
    if missing:
        raise AirflowFailException(f"{len(missing)} of {len(expected)} segment(s) were not delivered: {missing}")
    return summary
