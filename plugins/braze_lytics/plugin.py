"""Airflow plugin of the Braze <-> Lytics pipelines: the "Run report" tab on DAG-run pages.

* ``fastapi_apps``: the run report app (``braze_lytics/ui``), mounted by the API server under
  ``/braze-lytics``; its routes are access-checked by Airflow's auth manager;
* ``external_views``: a tab "Run report" on every DAG-run page
  (``/dags/<dag_id>/runs/<run_id>/plugin/run-report``) showing
  ``braze-lytics/dags/{DAG_ID}/runs/{RUN_ID}`` in an iframe. The UI fills in the placeholders
  (URL-encoded) and resolves the relative href against its base URL, so it also works when
  Airflow is served under a path prefix. The iframe is same-origin, so the browser sends the
  UI's login cookie with it.

Airflow's plugin loader imports this file in every process that loads plugins; it imports nothing
heavy (the FastAPI app is built on its first request, in the API server). See docs/run-report.md.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from braze_lytics.ui import run_report_app

RUN_REPORT_VIEW = {
    "name": "Run report",
    "href": run_report_app.URL_PREFIX.lstrip("/") + "/dags/{DAG_ID}/runs/{RUN_ID}",
    "destination": "dag_run",
    "url_route": "run-report",
}


class BrazeLyticsPlugin(AirflowPlugin):
    name = "braze_lytics"
    fastapi_apps = [{"app": run_report_app.app, "url_prefix": run_report_app.URL_PREFIX,
                     "name": "Braze <-> Lytics run report"}]
    external_views = [RUN_REPORT_VIEW]
