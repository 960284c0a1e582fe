"""The run report's FastAPI app, built by ``run_report_app.RunReportApp`` on its first request.

Access: every route depends on Airflow's own ``requires_access_dag`` (``GET`` on the DAG's runs and
XComs), which resolves the user like the rest of the API server: a ``Authorization: Bearer`` JWT,
else the ``_token`` cookie the UI sets at login (what the UI's "Run report" iframe sends, being
same-origin). No user: 401; a bad token or no access to the DAG: 403.

(No ``from __future__ import annotations`` here: FastAPI reads the handlers' annotations, which name
objects imported inside ``build_app``.)
"""

import logging

log = logging.getLogger(__name__)

# Personal data (ids) and state: never cached, never sniffed, the page runs no script.
PAGE_HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff",
                "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'self'"}
FILE_HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}


def build_app():
    from typing import Annotated

    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
    from airflow.api_fastapi.common.db.common import SessionDep
    from airflow.api_fastapi.core_api.security import requires_access_dag
    from fastapi import Depends, FastAPI, HTTPException, Path, Request
    from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    from braze_lytics.ui import run_report_data as data
    from braze_lytics.ui import run_report_files as files
    from braze_lytics.ui import run_report_html as html
    from include.common.errors import BrazeLyticsError, NotFoundError

    readable = [Depends(requires_access_dag(method="GET", access_entity=DagAccessEntity.RUN)),
                Depends(requires_access_dag(method="GET", access_entity=DagAccessEntity.XCOM))]
    app = FastAPI(title="Braze <-> Lytics run report", docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        """An HTML page for a browser (the UI's iframe), JSON for API clients."""
        if "text/html" in request.headers.get("accept", ""):
            return HTMLResponse(html.message_page(exc.status_code, str(exc.detail)), status_code=exc.status_code,
                                headers={**PAGE_HEADERS, **(exc.headers or {})})
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    @app.get("/dags/{dag_id}/runs/{run_id}", response_class=HTMLResponse, dependencies=readable)
    def run_report(dag_id: str, run_id: str, session: SessionDep) -> HTMLResponse:
        """The report of one run (any DAG; the Braze <-> Lytics DAGs have one)."""
        view = data.run_page(session, dag_id, run_id)
        if view is None:
            raise HTTPException(404, f"DAG {dag_id!r} has no run {run_id!r}")
        return HTMLResponse(html.render(view), headers=PAGE_HEADERS)

    @app.get("/dags/{dag_id}/runs/{run_id}/files/{name}", dependencies=readable)
    def audience_run_file(dag_id: str, run_id: str, session: SessionDep,
                          name: Annotated[str, Path(description=", ".join(files.AUDIENCE_FILES))]):
        """One of the audience run's files (plan, planned payloads, dead letters, parked users)."""
        key = files.audience_file_key(run_id, name)
        if key is None or dag_id != data.AUDIENCES_DAG:
            raise HTTPException(404, f"no file {name!r} for runs of {dag_id!r}")
        _, media_type, as_csv, _ = files.AUDIENCE_FILES[name]
        try:
            store = data.audience_store(session, dag_id, run_id)
            if store is None:
                raise HTTPException(404, f"DAG {dag_id!r} has no run {run_id!r}")
            if as_csv:
                if not store.exists(key):
                    raise NotFoundError(key)
                body = files.iter_parquet_as_csv(store, key)
            else:
                body = files.iter_pieces(files.open_store_file(store, key))
        except NotFoundError:
            raise HTTPException(404, f"this run has no {name}") from None
        except (files.UnservedStore, BrazeLyticsError) as exc:
            log.warning("Run report: %s of %s could not be read: %s", name, run_id, exc)
            raise HTTPException(503, f"the run's state store could not be read: {exc}") from None
        return StreamingResponse(body, media_type=media_type, headers={
            **FILE_HEADERS, "Content-Disposition": files.content_disposition(files.download_name(dag_id, run_id, name))})

    @app.get("/dags/{dag_id}/runs/{run_id}/quarantine/{segment}", dependencies=readable)
    def segment_quarantine_file(dag_id: str, run_id: str, segment: str, session: SessionDep):
        """The rows a segment of the run rejected (its quarantine CSV, on this server or in the shared store)."""
        try:
            opener = data.quarantine_file_of(session, dag_id, run_id, segment, files.quarantine_place())
            if opener is None:
                raise NotFoundError(segment)
            body = files.iter_pieces(opener())
        except NotFoundError:
            raise HTTPException(404, f"no quarantine file of segment {segment!r} in this run here") from None
        except BrazeLyticsError as exc:
            log.warning("Run report: the quarantine file of %s in %s could not be read: %s", segment, run_id, exc)
            raise HTTPException(503, f"the quarantine store could not be read: {exc}") from None
        name = files.download_name(dag_id, run_id, f"{segment}.quarantine.csv")
        return StreamingResponse(body, media_type=files.CSV,
                                 headers={**FILE_HEADERS, "Content-Disposition": files.content_disposition(name)})

    return app
