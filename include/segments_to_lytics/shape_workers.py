"""The processes that shape one export: contiguous runs of its files, one run per worker.

`shape_export` (csv_shape) cuts the export's data files (zip members, bucket objects) into
contiguous runs in export order (`work_groups`) and shapes each run in a forked worker
(`shape_in_workers`), or in the calling process for one run (`shape_part`). Workers never outlive
their task: each exits once the process that started it is gone (a SIGKILLed task), and the first
failure - a worker's, or the task being stopped - terminates the others at once.
"""

from __future__ import annotations

import itertools
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from include.common.progress import Progress
from include.segments_to_lytics.export_files import contiguous_runs, iter_record_blocks, member_groups

if TYPE_CHECKING:
    from include.segments_to_lytics.csv_shape import CsvShaper, ShapeStats
    from include.segments_to_lytics.duplicate_ids import PartRows

log = logging.getLogger("include.segments_to_lytics.csv_shape")  # one logger for shaping, as before

Unit = tuple[Path, "list[str] | None"]  # an export file and the zip members to read (None: all of it)


def shape_part(shaper: CsvShaper, kind: str, units: list[Unit], read_options: dict,
                rows_path: Path, rejects_path: Path, label: str = "Shaping") -> tuple[ShapeStats, PartRows]:
    blocks = itertools.chain.from_iterable(iter_record_blocks(path, kind, members, **read_options)
                                           for path, members in _one_unit_per_file(units))
    progress = Progress(log, label, total=None, unit="records")
    try:
        return shaper.write_part(blocks, rows_path, rejects_path, progress)
    finally:
        progress.done()


def shape_in_workers(shaper: CsvShaper, kind: str, groups: list[list[Unit]], read_options: dict,
                      paths: list[tuple[Path, Path]]) -> list[tuple[ShapeStats, PartRows]]:
    """Each group in a forked worker process (they start in milliseconds and inherit the imported
    modules). The first failure - a worker's, or the task being stopped (Airflow's SIGTERM raises
    here) - stops the other workers at once instead of letting them finish their parts."""
    import multiprocessing
    from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait

    before = set(multiprocessing.active_children())
    with ProcessPoolExecutor(len(groups), mp_context=multiprocessing.get_context("fork"),
                             initializer=_end_with_parent, initargs=(os.getpid(),)) as pool:
        try:
            futures = [pool.submit(shape_part, shaper, kind, g, read_options, *p,
                                   label=f"Shaping (worker {i + 1} of {len(groups)})")
                       for i, (g, p) in enumerate(zip(groups, paths, strict=True))]
            _import_numpy_meanwhile()  # needed for the duplicate check; the parent is idle now
            wait(futures, return_when=FIRST_EXCEPTION)
            for future in futures:  # a failed one first: result() of a running one would wait for it
                if future.done() and future.exception() is not None:
                    future.result()
            return [f.result() for f in futures]
        except BaseException:
            for worker in set(multiprocessing.active_children()) - before:
                worker.terminate()
            raise


def _end_with_parent(parent: int) -> None:
    """Pool initializer: a shaping worker exits (within ~0.5 s) once the process that started it is
    gone - a task SIGKILLed by Airflow or the OOM killer - instead of shaping on and then waiting
    forever as an orphan, holding a core while the cleared task runs again."""
    import threading
    import time

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="end-with-parent", daemon=True).start()


def _one_unit_per_file(units: list[Unit]) -> list[Unit]:
    """Neighbouring units of one zip as one: the zip's directory is read once, not once per member."""
    merged: list[Unit] = []
    for path, members in units:
        if merged and merged[-1][0] == path and members is not None and merged[-1][1] is not None:
            merged[-1] = (path, [*merged[-1][1], *members])
        else:
            merged.append((path, members))
    return merged


def work_groups(exports: list[Path], workers: int) -> list[list[Unit]]:
    """Contiguous runs of the exports' data files, in export order, one run per worker."""
    units: list[Unit] = [(path, members) for path in exports for members in member_groups(path, 1 << 30)]
    return contiguous_runs(units, workers)


def _import_numpy_meanwhile() -> None:
    import threading

    threading.Thread(target=__import__, args=("numpy",), daemon=True).start()
