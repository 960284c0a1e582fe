"""Airflow plugin of the Braze <-> Lytics pipelines: the "Run report" tab on DAG-run pages, and
the endpoint Braze calls when a segment export is ready (``export_callback_app.py``, mounted under
``/braze-lytics/export-callback``, no login: a per-export secret token; docs/export-callback.md).

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

from braze_lytics import export_callback_app
from braze_lytics.ui import run_report_app

RUN_REPORT_VIEW = {
    "name": "Run report",
    "href": run_report_app.URL_PREFIX.lstrip("/") + "/dags/{DAG_ID}/runs/{RUN_ID}",
    "destination": "dag_run",
    "url_route": "run-report",
}


class BrazeLyticsPlugin(AirflowPlugin):
    name = "braze_lytics"
    # The callback app first: the API server mounts apps in this order and the run report's
    # prefix (/braze-lytics) would otherwise also match /braze-lytics/export-callback/...
    fastapi_apps = [{"app": export_callback_app.app, "url_prefix": export_callback_app.URL_PREFIX,
                     "name": "Braze export callback"},
                    {"app": run_report_app.app, "url_prefix": run_report_app.URL_PREFIX,
                     "name": "Braze <-> Lytics run report"}]
    external_views = [RUN_REPORT_VIEW]
