"""The ASGI app the plugin mounts under ``/braze-lytics/export-callback``: Braze's export callback.

    POST /braze-lytics/export-callback/{token}    Braze says an export is ready (no auth but the token)

Braze calls ``callback_endpoint`` without credentials, so the per-export token in the path is the
only credential (include/segments_to_lytics/export_callback.py). The endpoint:

* answers 200 ``{"status": "received"}`` once the call is recorded in the callback store, and the
  same for a repeated call (idempotent: the first record stays);
* answers a bare 404 (no body, no detail) for a malformed, unknown or expired token, and for any
  other path; 405 for another method; 413 for a body over 16 KiB; 503 when the store cannot be
  reached (Braze does not retry: the sensor's fallback completes the export);
* hides the token from access logs: once the route has matched, the request's path is rewritten to
  ``.../export-callback/***`` before the response starts, so uvicorn's and Airflow's access logs
  (which read the path from the same ASGI scope) never print it.

Not behind Airflow's login (Braze has none): only the token protects it, and all it can do is mark
one registered export as ready earlier than polling would. Like ``run_report_app.py``, the FastAPI
app is built on the first request (only the API server receives any), so processes that merely
load plugins never import FastAPI. The store is the one of ``BRAZE_LYTICS_STATE_URL`` (shared with
the workers); see docs/export-callback.md.
"""

# (No ``from __future__ import annotations``: FastAPI reads the handler's annotations, which name
# objects imported inside ``build_app``.)
import logging
import threading

URL_PREFIX = "/braze-lytics/export-callback"  # = include.segments_to_lytics.export_callback.CALLBACK_PATH
_MARK = "/export-callback/"
_REDACTED = "***"

log = logging.getLogger(__name__)


def redact_scope(scope) -> None:
    """Replace the token in the scope's path (and raw path) with ``***``, in place."""
    path = scope.get("path")
    if isinstance(path, str) and _MARK in path:
        scope["path"] = path[: path.rindex(_MARK) + len(_MARK)] + _REDACTED
    raw = scope.get("raw_path")
    if isinstance(raw, bytes) and _MARK.encode() in raw:
        scope["raw_path"] = raw[: raw.rindex(_MARK.encode()) + len(_MARK)] + _REDACTED.encode()


class ExportCallbackApp:
    """An ASGI app that builds the FastAPI app (:func:`build_app`) when first called and keeps the
    token out of every access log."""

    def __init__(self, store_factory=None) -> None:
        self._app = None
        self._lock = threading.Lock()
        self._store_factory = store_factory

    def __repr__(self) -> str:
        return f"<ExportCallbackApp under {URL_PREFIX}>"

    async def __call__(self, scope, receive, send) -> None:
        app = self._app
        if app is None:
            with self._lock:
                if self._app is None:
                    self._app = build_app(self._store_factory)
                app = self._app
        if scope.get("type") != "http":
            await app(scope, receive, send)
            return

        async def send_redacted(message) -> None:
            if message.get("type") == "http.response.start":
                redact_scope(scope)  # routing is done: from here on, loggers see no token
            await send(message)

        try:
            await app(scope, receive, send_redacted)
        finally:
            redact_scope(scope)


class _StoreCache:
    """The callback store of the deployment (``BRAZE_LYTICS_STATE_URL``), opened once per URL."""

    def __init__(self) -> None:
        self._stores: dict[str, object] = {}
        self._lock = threading.Lock()

    def __call__(self):
        from braze_lytics.tasks.export_callback import callback_store
        from include.common import settings

        url = settings.default_state_url()
        with self._lock:
            if url not in self._stores:
                self._stores[url] = callback_store(url)
            return self._stores[url]


def build_app(store_factory=None):
    """The FastAPI app; `store_factory()` gives the callback store (default: the deployment's)."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, Response
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException as StarletteHTTPException

    from include.common.errors import BrazeLyticsError
    from include.segments_to_lytics.export_callback import (
        MAX_BODY_BYTES,
        TOKEN_RE,
        record_callback,
        short_id,
        token_digest,
    )

    store_factory = store_factory or _StoreCache()
    headers = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}
    app = FastAPI(title="Braze export callback", docs_url=None, redoc_url=None, openapi_url=None)

    def bare(status: int, extra: dict | None = None) -> Response:
        return Response(status_code=status, headers={**headers, **(extra or {})})

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        """No detail for anything that is not a recorded callback (404 for unknown paths, 405, ...)."""
        return bare(exc.status_code, {k: v for k, v in (exc.headers or {}).items() if k.lower() == "allow"})

    @app.post("/{token}")
    async def export_callback(token: str, request: Request) -> Response:
        if not TOKEN_RE.match(token):
            return bare(404)
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
            return bare(413)
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY_BYTES:
                return bare(413)
        try:
            store = await run_in_threadpool(store_factory)
            outcome = await run_in_threadpool(record_callback, store, token, bytes(body))
        except BrazeLyticsError as exc:
            log.warning("Export callback (%s) could not be recorded: %s", short_id(token_digest(token)), exc)
            return bare(503)
        if outcome == "unknown":
            log.info("Export callback refused: unknown or expired token")
            return bare(404)
        log.info("Export callback %s (%s)", "recorded" if outcome == "recorded" else "repeated",
                 short_id(token_digest(token)))
        return JSONResponse({"status": "received"}, headers=headers)

    return app


app = ExportCallbackApp()
