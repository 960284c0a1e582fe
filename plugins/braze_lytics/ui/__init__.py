"""The "Run report" tab of DAG-run pages in the Airflow UI (registered by ``braze_lytics/plugin.py``).

* ``run_report_app.py`` - the ASGI app the plugin mounts under ``/braze-lytics``; it builds the
  FastAPI app (``run_report_routes.py``) on its first request, so the Airflow processes that only
  load plugins (scheduler, task runners) never import FastAPI or the API server's security code;
* ``run_report_data.py`` - what a page shows: the run, its task states and XComs (metadata DB) and,
  for the audience sync, the run's plan and progress (state store);
* ``run_report_files.py`` - the run's files that can be downloaded, located from the run alone;
* ``run_report_html.py`` - the page itself (server-rendered HTML, no script).

Airflow's plugin loader imports every ``.py`` file under ``plugins/`` as a top-level module named
after the file, so these modules import only the standard library and ``include`` at module level
and use absolute imports. See docs/run-report.md.
"""
