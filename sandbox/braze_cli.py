"""Command line of the Braze sandbox: run it in the foreground.

    python -m sandbox.braze_server --port 8181 --api-key KEY --segment seg_demo:50000 --delay 2
    python -m sandbox.braze_cli ...   (the same)

Segments are ``ID:SIZE[:key=value,...]`` (see :func:`_parse_segment`). Bucket mode is for tests
(``BrazeSandbox(..., bucket=S3Target(...))``); the CLI serves export links.
"""

from __future__ import annotations

import argparse
import gc
import os
import signal
import sys
import threading
from pathlib import Path

from sandbox.braze_export_ids import EXPORT_IDS_RATE_LIMIT, EXPORT_IDS_RATE_WINDOW
from sandbox.braze_exports import RATE_LIMIT, USERS_PER_FILE
from sandbox.braze_server import BrazeSandbox
from sandbox.braze_track import MAX_TRACK_OBJECTS, TRACK_RATE_LIMIT, TRACK_RATE_WINDOW
from sandbox.braze_users import SegmentSpec
from sandbox.cli_options import flag, typed_options

__all__ = ["main"]


def _parse_segment(text: str) -> SegmentSpec:
    """``ID:SIZE[:key=value,key=value...]``, e.g. ``seg_demo:50000:malformed_every=1000,seed=7``."""
    parts = text.split(":", 2)
    if len(parts) < 2:
        raise argparse.ArgumentTypeError(f"expected ID:SIZE[:key=value,...], got {text!r}")
    kwargs = typed_options(parts[2] if len(parts) == 3 else "", "segment",
                           {"name": str, "missing_email_share": float, "seed": int, "missing_id_every": int,
                            "malformed_every": int, "duplicate_every": int, "realistic": flag})
    try:
        return SegmentSpec(parts[0], int(parts[1]), **kwargs)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from e


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m sandbox.braze_server",
        description="A small, strict imitation of Braze's REST API, over real HTTP.",
    )
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8181)
    ap.add_argument(
        "--api-key", default=os.environ.get("BRAZE_SANDBOX_API_KEY"), help="default: $BRAZE_SANDBOX_API_KEY"
    )
    ap.add_argument(
        "--segment",
        action="append",
        type=_parse_segment,
        default=[],
        metavar="ID:SIZE[:k=v,...]",
        help="repeatable; options: name, seed, missing_email_share, missing_id_every, malformed_every, "
        "duplicate_every, realistic (1/0)",
    )
    ap.add_argument("--delay", type=float, default=2.0, help="seconds until an export is downloadable")
    ap.add_argument("--users-per-file", type=int, default=USERS_PER_FILE, help="users per export file")
    ap.add_argument("--link-ttl", type=float, default=3600.0, help="seconds an export link stays valid")
    ap.add_argument(
        "--not-ready-status",
        type=int,
        choices=(404, 403),
        default=404,
        help="what a link answers before the export is ready",
    )
    ap.add_argument("--data-dir", type=Path, default=None, help="where export files go (default: temp dir)")
    ap.add_argument("--rate-limit", type=int, default=RATE_LIMIT, help="export requests per hour")
    ap.add_argument(
        "--max-objects", type=int, default=MAX_TRACK_OBJECTS, help="/users/track objects per request"
    )
    ap.add_argument(
        "--track-rate-limit", type=int, default=TRACK_RATE_LIMIT, help="/users/track requests per window"
    )
    ap.add_argument(
        "--track-rate-window", type=float, default=TRACK_RATE_WINDOW, help="/users/track window (seconds)"
    )
    ap.add_argument(
        "--export-ids-rate-limit", type=int, default=EXPORT_IDS_RATE_LIMIT, help="/users/export/ids requests per window"
    )
    ap.add_argument(
        "--export-ids-rate-window", type=float, default=EXPORT_IDS_RATE_WINDOW, help="/users/export/ids window (seconds)"
    )
    ap.add_argument("--track-faults", type=float, default=0.0, help="share of /users/track requests faulted")
    ap.add_argument("--fault-seed", type=int, default=0)
    ap.add_argument("--fault-sleep", type=float, default=2.0, help="seconds a 'timeout' fault stalls")
    ap.add_argument("-q", "--quiet", action="store_true", help="do not log requests")
    args = ap.parse_args(argv)
    if not args.api_key:
        ap.error("--api-key (or $BRAZE_SANDBOX_API_KEY) is required")

    sandbox = BrazeSandbox(
        args.api_key,
        args.segment,
        export_delay=args.delay,
        users_per_file=args.users_per_file,
        link_ttl=args.link_ttl,
        not_ready_status=args.not_ready_status,
        data_dir=args.data_dir,
        host=args.host,
        port=args.port,
        rate_limit=args.rate_limit,
        verbose=not args.quiet,
        max_objects=args.max_objects,
        track_rate_limit=args.track_rate_limit,
        track_rate_window=args.track_rate_window,
        track_faults=args.track_faults,
        fault_seed=args.fault_seed,
        fault_sleep=args.fault_sleep,
        export_ids_rate_limit=args.export_ids_rate_limit,
        export_ids_rate_window=args.export_ids_rate_window,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    sandbox.start()
    # Braze does not pause; a Python sandbox holding hundreds of thousands of profiles does
    # (full GCs of ~100 ms), and requests that pile up behind a pause arrive bunched, which the
    # strict limiter then counts as an overshoot the client never made. In a process of its
    # own, collect young objects only (bench/run_l2b_delivery.py measured 10 full GCs -> 0).
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    try:
        print(f"Braze sandbox listening on {sandbox.url}", flush=True)
        for spec in args.segment:
            print(f"  segment {spec.segment_id}: {spec.size} users", flush=True)
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        sandbox.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
