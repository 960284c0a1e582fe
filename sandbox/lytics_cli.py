"""Command line of the Lytics sandbox: run it in the foreground.

    python -m sandbox.lytics_server --port 8282 --token T --audience aud1:high_value:50000
    python -m sandbox.lytics_cli ...   (the same)

Audiences are ``ID:SLUG:POPULATION[:key=value,...]`` (see :func:`_parse_audience`); with
``--churn-every`` every audience churns on a timer until SIGTERM or Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading

from sandbox import lytics_server
from sandbox.cli_options import typed_options
from sandbox.lytics_collect import DEFAULT_ACCOUNT
from sandbox.lytics_members import Audience
from sandbox.lytics_server import TOKEN_TTL, LyticsSandbox

__all__ = ["main"]


def _parse_audience(text: str) -> Audience:
    """``ID:SLUG:POPULATION[:key=value,...]``, e.g. ``aud1:high_value:50000:seed=7,missing_id_every=100``."""
    parts = text.split(":", 3)
    if len(parts) < 3:
        raise argparse.ArgumentTypeError(f"expected ID:SLUG:POPULATION[:key=value,...], got {text!r}")
    kwargs = typed_options(parts[3] if len(parts) == 4 else "", "audience",
                           {"name": str, "id_field": str, "seed": int, "missing_id_every": int, "universe": int})
    kwargs.setdefault("name", parts[1].replace("_", " ").title())
    try:
        return Audience(parts[0], parts[1], population=int(parts[2]), **kwargs)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from e


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sandbox.lytics_server", description=lytics_server.__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8282)
    ap.add_argument(
        "--token", default=os.environ.get("LYTICS_SANDBOX_TOKEN"), help="default: $LYTICS_SANDBOX_TOKEN"
    )
    ap.add_argument(
        "--audience",
        action="append",
        type=_parse_audience,
        default=[],
        metavar="ID:SLUG:POPULATION[:k=v,...]",
        help="repeatable; options: name, seed, id_field, missing_id_every, universe",
    )
    ap.add_argument("--account", action="append", default=[], metavar="ACCOUNT",
                    help=f"account number taking collect events; repeatable (default: {DEFAULT_ACCOUNT})")
    ap.add_argument("--token-ttl", type=float, default=TOKEN_TTL, help="seconds a scan token stays valid")
    ap.add_argument("--rate-limit", type=float, default=None, help="requests per second (default: none)")
    ap.add_argument(
        "--churn-every", type=float, default=0.0, help="churn every audience each N seconds (0: never)"
    )
    ap.add_argument("--churn-share", type=float, default=0.01, help="share of members churned each time")
    ap.add_argument("-q", "--quiet", action="store_true", help="do not log requests")
    args = ap.parse_args(argv)
    if not args.token:
        ap.error("--token (or $LYTICS_SANDBOX_TOKEN) is required")

    sandbox = LyticsSandbox(
        args.token,
        args.audience,
        host=args.host,
        port=args.port,
        token_ttl=args.token_ttl,
        rate_limit_per_sec=args.rate_limit,
        verbose=not args.quiet,
        accounts=args.account or (DEFAULT_ACCOUNT,),
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    sandbox.start()
    try:
        print(f"Lytics sandbox listening on {sandbox.url}", flush=True)
        for a in args.audience:
            print(f"  audience {a.id} ({a.slug}): {sandbox.store.count(a.id)} members", flush=True)
        rounds = 0
        while not stop.wait(args.churn_every or None):
            rounds += 1
            for a in args.audience:
                removed, added = sandbox.store.churn(a.id, args.churn_share, seed=rounds)
                print(f"  churn #{rounds} {a.slug}: -{len(removed)} +{len(added)}", flush=True)
    except KeyboardInterrupt:
        pass
    finally:
        sandbox.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
