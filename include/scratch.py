"""Private scratch directories for one task's files, removed even when the task fails.

Exports hold personal data in plaintext once decrypted; they live only inside a 0700
directory that is deleted on the way out, whatever happened. The base directory is
`BRAZE_LYTICS_WORK_DIR` (default: the system temp dir); give it room for about three times
the largest export (download, CSV, encrypted copy).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

WORK_DIR_ENV_VAR = "BRAZE_LYTICS_WORK_DIR"


def work_root() -> Path:
    return Path(os.environ.get(WORK_DIR_ENV_VAR) or tempfile.gettempdir())


@contextlib.contextmanager
def scratch_dir(label: str, base: Path | None = None) -> Iterator[Path]:
    """A fresh 0700 directory named after `label` (a segment name, never a secret)."""
    base = base or work_root()
    base.mkdir(parents=True, exist_ok=True)
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", label)[:60]
    path = Path(tempfile.mkdtemp(prefix=f"braze-lytics-{safe}-", dir=base))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
