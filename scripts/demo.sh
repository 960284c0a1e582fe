#!/usr/bin/env bash
# Local demo of braze_segments_to_lytics: Braze sandbox + demo SFTP server + one DAG run.
#   scripts/demo.sh          run the pipeline once and show what landed
#   scripts/demo.sh --ui     the Airflow UI: the same as scripts/up.sh (the whole stack, in the background)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--ui" ]; then
  shift
  exec bash scripts/up.sh "$@"
fi
bash scripts/setup.sh
exec .venv/bin/python -m sandbox.demo "$@"
