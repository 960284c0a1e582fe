#!/usr/bin/env bash
# Local demo of braze_segments_to_lytics: Braze sandbox + demo SFTP server + one DAG run.
#   scripts/demo.sh          run the pipeline once and show what landed
#   scripts/demo.sh --ui     keep the sandbox up and start the Airflow UI (airflow standalone)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m sandbox.demo "$@"
