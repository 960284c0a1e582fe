"""``braze-lytics-webhook-kit`` / ``python -m include.webhook_kit``: set up Braze -> Lytics webhooks.

Prints the Lytics webhook URL for Braze (key masked unless ``--show-key``), the HTTP method and
headers, and the JSON body with Braze Liquid for the fields of Lytics' ``braze_users`` stream;
with ``--send-test-event`` it also posts one test event to that URL and prints PASS or FAIL with
the reason.

Where the settings come from:

* ``--conn-id lytics_default`` -- an Airflow connection (host = API base URL, password = token,
  extra ``{"account_id": "<ACCOUNT-NUMBER>"}``), read through Airflow's own lookup, so this
  works where Airflow and this project's plugins are installed (a worker, a scheduler, ``airflow
  standalone``);
* otherwise ``--base-url`` (default https://api.lytics.io) and ``--account``, with the token in
  the environment variable ``LYTICS_API_TOKEN``: never on the command line, where it would end up
  in the shell history and the process list.

Exit codes: 0 done (and the test event, when asked for, passed); 1 the test event failed; 2 the
settings are wrong. Nothing is ever printed with a traceback or with the token (except the URL
under ``--show-key``).
"""

from __future__ import annotations

import argparse
import sys

from include.clients.lytics.collect import BRAZE_USERS_STREAM, DEFAULT_BASE_URL
from include.common import settings
from include.common.errors import BrazeLyticsError

TOKEN_ENV = settings.LYTICS_API_TOKEN
EXIT_OK, EXIT_TEST_FAILED, EXIT_CONFIG = 0, 1, 2


class _RefuseOnCommandLine(argparse.Action):
    """``--token``/``--key``: refused without repeating the value (argparse would echo it)."""

    def __call__(self, parser, namespace, values, option_string=None):
        parser.exit(EXIT_CONFIG, f"{parser.prog}: error: the Lytics token is never taken on the command line "
                                 f"(it would land in the shell history); set the environment variable "
                                 f"{TOKEN_ENV}, or use --conn-id. Consider the token you typed exposed: "
                                 f"rotate it in Lytics.\n")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="braze-lytics-webhook-kit",
        description="Print the Lytics webhook URL, headers and Liquid body for a Braze webhook step, "
                    "and optionally send one test event.",
        epilog=f"The token comes from --conn-id's connection or from ${TOKEN_ENV}, never from an argument.",
    )
    where = ap.add_argument_group("Lytics account (either --conn-id, or --account with $" + TOKEN_ENV + ")")
    where.add_argument("--conn-id", help="Airflow connection to read (host, password = token, extra account_id); "
                                         "needs Airflow")
    where.add_argument("--base-url", help=f"Lytics API base URL (default {DEFAULT_BASE_URL})")
    where.add_argument("--account", help="Lytics account number (Lytics: Account Settings)")
    ap.add_argument("--stream", default=BRAZE_USERS_STREAM,
                    help=f"Lytics stream (default {BRAZE_USERS_STREAM}, whose default mapping the body follows)")
    ap.add_argument("--show-key", action="store_true", help="print the full URL, key included (to paste into Braze)")
    ap.add_argument("--send-test-event", action="store_true",
                    help="POST one test event (email webhook-kit-test@example.invalid) and print PASS/FAIL")
    ap.add_argument("--token", "--key", nargs="?", action=_RefuseOnCommandLine, help=argparse.SUPPRESS)
    return ap


def main(argv: list[str] | None = None) -> int:
    from include.webhook_kit.kit import render, send_test_event

    args = build_parser().parse_args(argv)
    try:
        settings = _settings(args)
    except BrazeLyticsError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    outcome = send_test_event(settings) if args.send_test_event else None
    print(render(settings, show_key=args.show_key, outcome=outcome), flush=True)
    return EXIT_TEST_FAILED if outcome is not None and not outcome.passed else EXIT_OK


def _settings(args: argparse.Namespace):
    from include.common.errors import ConfigError
    from include.webhook_kit.kit import KitSettings

    if args.conn_id:
        if args.base_url or args.account:
            raise ConfigError("give either --conn-id or --base-url/--account, not both")
        try:
            # The Airflow glue: reads the connection through Airflow (never imported otherwise).
            from braze_lytics.tasks.webhook_kit import kit_settings
        except ImportError as exc:
            raise ConfigError(f"--conn-id reads an Airflow connection, but Airflow or this project's plugins are "
                              f"not importable here ({exc.name}); run it where Airflow runs, or use --account "
                              f"with ${TOKEN_ENV}") from None
        return kit_settings(args.conn_id, stream=args.stream)
    if not args.account:
        raise ConfigError("--account is missing (Lytics account number, under Account Settings), or use --conn-id")
    token = _token_from_environment()
    if not token:
        raise ConfigError(f"the environment variable {TOKEN_ENV} is not set: export the Lytics API token there "
                          f"(e.g. read -rs {TOKEN_ENV} && export {TOKEN_ENV}), or use --conn-id")
    return KitSettings(args.base_url or DEFAULT_BASE_URL, args.account, token, args.stream,
                       source=f"--account and ${TOKEN_ENV}")


def _token_from_environment() -> str | None:
    # The command's own secret input (read in include/common/settings.py, like every variable).
    return settings.lytics_api_token()


if __name__ == "__main__":
    sys.exit(main())
