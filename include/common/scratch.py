"""Private scratch directories for one task's files, removed even when the task fails.

Exports hold personal data in plaintext once decrypted; they live only inside a 0700
directory that is deleted on the way out, whatever happened. The base directory is
`BRAZE_LYTICS_WORK_DIR` (default: the system temp dir); give it room for about three times
the largest export (download, CSV, encrypted copy).
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from include.common import settings
from include.common.names import file_safe


@contextlib.contextmanager
def scratch_dir(label: str, base: Path | None = None) -> Iterator[Path]:
    """A fresh 0700 directory named after `label` (a segment name, never a secret)."""
    base = base or settings.work_dir()
    base.mkdir(parents=True, exist_ok=True)
    safe = file_safe(label, 60)
    path = Path(tempfile.mkdtemp(prefix=f"braze-lytics-{safe}-", dir=base))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
