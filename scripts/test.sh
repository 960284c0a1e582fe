#!/usr/bin/env bash
# The whole test suite, after doing any set-up this machine still needs. CI runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
