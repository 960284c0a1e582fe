#!/usr/bin/env bash
# Stop everything scripts/up.sh started (by pid: each process group, then SIGKILL after a grace
# period). Airflow's DB (run history) stays in .stack/postgres; remove .stack/ to start afresh.
#   scripts/stop.sh [--state-dir .stack]
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  echo "==> no .venv: nothing was started by scripts/up.sh"
  exit 0
fi
exec .venv/bin/python -m sandbox.stack stop "$@"
