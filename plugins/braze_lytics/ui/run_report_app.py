"""The ASGI app the plugin mounts under ``/braze-lytics``: the run report and the run's files.

Routes (``run_report_routes.py``), all ``GET``, all access-checked by Airflow's auth manager:

    /braze-lytics/dags/{dag_id}/runs/{run_id}                      the report (HTML)
    /braze-lytics/dags/{dag_id}/runs/{run_id}/files/{name}         a file of an audience run
    /braze-lytics/dags/{dag_id}/runs/{run_id}/quarantine/{segment} a segment's rejected rows (CSV)

Every Airflow process that loads plugins (scheduler, DAG processor, each task) imports the plugin
and therefore this module. The FastAPI app is built on the first request instead, which only the
API server receives, so those processes never import FastAPI routes or the API server's security
dependencies.
"""

from __future__ import annotations

import threading

URL_PREFIX = "/braze-lytics"


class RunReportApp:
    """An ASGI app that builds the real FastAPI app (``run_report_routes.build_app``) when first called."""

    def __init__(self) -> None:
        self._app = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<RunReportApp under {URL_PREFIX}>"

    async def __call__(self, scope, receive, send) -> None:
        app = self._app
        if app is None:
            with self._lock:
                if self._app is None:
                    from braze_lytics.ui.run_report_routes import build_app

                    self._app = build_app()
                app = self._app
        await app(scope, receive, send)


app = RunReportApp()
