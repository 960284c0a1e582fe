#!/usr/bin/env bash
# The whole pipeline locally, in the background: PostgreSQL, S3 (moto), the Braze and Lytics
# sandboxes, an SFTP server, and Airflow 3 (api-server, scheduler with LocalExecutor, dag-processor,
# triggerer), wired by airflow_settings.yaml. Does all set-up a fresh Debian/Ubuntu machine needs.
#   scripts/up.sh [--port 8080] [--state-dir .stack] [--parallelism 4] [--no-schedule]
# Stop with scripts/stop.sh. Running it again while the stack runs only says so.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "==> set-up (system packages, .venv, requirements; quick when already done)"
bash scripts/setup.sh

# Airflow's metadata DB: Debian's PostgreSQL, run as a private cluster under the state dir (no
# systemd, no system cluster touched). The Debian package also creates the 'postgres' user.
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  echo "==> apt-get install postgresql"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends postgresql >/dev/null
fi
# Its Python driver (psycopg 3: Airflow 3 uses it for both its sync and async engines).
if ! .venv/bin/python -c 'import psycopg' >/dev/null 2>&1; then
  echo "==> pip install psycopg[binary] (Airflow's PostgreSQL driver)"
  .venv/bin/python -m pip install -q "psycopg==3.3.9" "psycopg-binary==3.3.9"
fi

exec .venv/bin/python -m sandbox.stack up "$@"
