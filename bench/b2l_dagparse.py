"""Step 5 of the Braze -> Lytics benchmark: parsing each DAG file the way Airflow's DagBag does.

Each repetition is a fresh interpreter with a throwaway AIRFLOW_HOME: *warm* (bytecode cached under
bench/.data/pycache, as on a running DAG processor) and *no .pyc for project code*
(PYTHONDONTWRITEBYTECODE=1); the time is executing the DAG file after ``import airflow.sdk``, with
the import's own time given for context.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from bench.b2l_data import DATA
from bench.b2l_report import Report, Row
from bench.measure import REPO, Run, best, run_worker, worker_env

DAG_REPEATS = 5


def step_dags(work: Path, report: Report) -> None:
    for dag_file in sorted((REPO / "dags").glob("*.py")):
        if dag_file.name.startswith("_"):
            continue
        home = tempfile.mkdtemp(prefix="b2l-af-")
        try:
            base = {
                "AIRFLOW_HOME": home,
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
                "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
            }
            # warm: bytecode cached (as on a running DAG processor); kept under bench/.data, not in the repo
            warm_env = worker_env({**base, "PYTHONPYCACHEPREFIX": str(DATA / "pycache")})
            warm_env.pop("PYTHONDONTWRITEBYTECODE", None)
            # cold: no bytecode written or read for the project's code (the venv's own .pyc still used)
            cold_env = worker_env({**base, "PYTHONDONTWRITEBYTECODE": "1"})
            task = {"task": "dagparse", "file": str(dag_file)}
            run_worker(task, warm_env)  # fills the bytecode cache; not counted
            warm, cold = [], []
            for _ in range(DAG_REPEATS):
                warm.append(run_worker(task, warm_env))
                cold.append(run_worker(task, cold_env))
        finally:
            shutil.rmtree(home, ignore_errors=True)
        dags = warm[0].info.get("dags")
        name = dag_file.name
        bw, bc = best(warm), best(cold)
        with_sdk = min(warm, key=lambda r: r.info["with_sdk_seconds"])
        with_sdk_run = Run(seconds=with_sdk.info["with_sdk_seconds"], rss=with_sdk.rss, cpu=with_sdk.cpu,
                           wall=with_sdk.wall, load1=with_sdk.load1)
        report.detail(f"DAG {name} (warm bytecode, file only)", warm)
        report.detail(f"DAG {name} (no project bytecode, file only)", cold)
        report.details.append(f"- DAG {name}: import airflow.sdk alone: "
                              + ", ".join(f"{r.info['sdk_seconds']:.3f}s" for r in warm)
                              + f"; DAG objects found: {dags}")
        report.rows += [
            Row(f"5. DAG parse {name} (after `import airflow.sdk`)", bw, "—", None, "≤ 0.3 s", limit_seconds=0.3,
                error="" if dags else "no DAG object found"),
            Row(f"5. DAG parse {name}, no .pyc for project code", bc, "—", None, "≤ 0.3 s", limit_seconds=0.3),
            Row(f"5. DAG parse {name} incl. `import airflow.sdk`", with_sdk_run, "—", None, "(context)"),
        ]
        print(f"  dag {name}: file {bw.seconds:.3f}s (no pyc {bc.seconds:.3f}s), "
              f"incl. airflow.sdk {with_sdk_run.seconds:.3f}s", flush=True)
