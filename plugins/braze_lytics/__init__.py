"""Airflow glue for the Braze <-> Lytics pipelines.

* ``hooks/`` - one hook per Connection kind, turning it into a core client (``include.clients``);
* ``sensors/`` - the Braze export sensor (reschedule mode);
* ``tasks/`` - the task bodies each DAG calls, one module per pipeline, named like the core
  package it drives (``include.segments_to_lytics``, ``include.audiences_to_braze``);
* ``failures.py`` / ``dag_defaults.py`` - fail-fast error mapping and shared ``default_args``.

Heavy libraries (paramiko, gnupg, requests, pyarrow) are imported inside functions, never at
module level, so DAG files that import this package parse fast.
"""

import importlib.util
import sys
from pathlib import Path


def _make_core_importable() -> None:
    """Let `include` be imported when the project is mounted, not installed.

    `pip install -e .` (scripts/setup.sh) makes `include` importable everywhere. A standard
    Airflow deployment (Astro, docker-compose) instead mounts dags/, plugins/ and include/ side
    by side under $AIRFLOW_HOME and puts only dags/ and plugins/ on sys.path: there, the
    directory above plugins/ holds include/, and it is added (at the end, shadowing nothing).
    """
    if importlib.util.find_spec("include") is not None:
        return
    root = Path(__file__).resolve().parents[2]
    if (root / "include" / "__init__.py").is_file():
        sys.path.append(str(root))


_make_core_importable()
