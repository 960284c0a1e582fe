#!/usr/bin/env bash
# Everything a fresh machine needs, idempotent: system packages (OpenSSH server for the SFTP
# tests, gnupg), a Python 3.11 virtualenv in .venv, the pinned requirements and the project.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
[ -x /usr/sbin/sshd ] || need_apt+=(openssh-server)
command -v gpg >/dev/null 2>&1 || need_apt+=(gnupg)
command -v sftp >/dev/null 2>&1 || need_apt+=(openssh-client)
command -v unzip >/dev/null 2>&1 || need_apt+=(unzip)  # benchmarks: the reference chain
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
[ -x /usr/bin/chromium ] || need_apt+=(chromium)
command -v gcc >/dev/null 2>&1 || need_apt+=(gcc libc6-dev)  # the native row writer (fast_rows.c)
[ -f /usr/include/zlib.h ] || need_apt+=(zlib1g-dev)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need_apt+=(postgresql)  # the local stack's metadata DB  # the UI's browser test (Playwright with executable_path)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "==> apt-get install ${need_apt[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

PY=""
for candidate in python3.11 python3; do
  if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
    PY="$candidate"; break
  fi
done
if [ -z "$PY" ]; then
  echo "Python 3.11 is required (Airflow 3.3 pins here are for 3.11); install python3.11 and re-run." >&2
  exit 1
fi

if ! "$PY" -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))'; then
  echo "==> apt-get install python3.11-dev (Python headers, for the native row writer)"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends python3.11-dev >/dev/null || true
fi

if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv with $PY"
  "$PY" -m venv .venv
fi
# Production pins, the dev/test/demo extras, then this project itself (editable, no deps: the
# pins above are the whole dependency set), so `include` and `braze_lytics` import everywhere
# without PYTHONPATH.
stamp=.venv/.requirements.sha256
# setup.py and fast_rows.c too: `pip install -e .` compiles the native row writer in place, so a
# change to the C source must rebuild it.
want=$(cat requirements.txt requirements-dev.txt pyproject.toml setup.py include/segments_to_lytics/fast_rows.c include/segments_to_lytics/fast_rows_json.h \
  | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "==> pip install -r requirements-dev.txt, then this project (pip install --no-deps -e .)"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -r requirements-dev.txt
  .venv/bin/python -m pip install -q --no-deps -e .
  echo "$want" > "$stamp"
fi
if ! .venv/bin/python -c "import include.segments_to_lytics._fast_rows" 2>/dev/null; then
  echo "WARNING: the native row writer (include/segments_to_lytics/fast_rows.c) did not build - is gcc" \
       "with zlib headers (zlib1g-dev) installed? Shaping falls back to Python (same output, ~3x slower)." >&2
fi
