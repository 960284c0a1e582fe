"""The export callback endpoint (plugins/braze_lytics/export_callback_app.py) over real HTTP.

Most tests serve the app with a real uvicorn server on loopback, mounted the way Airflow's API
server mounts plugin apps (this app first, the run report's ``/braze-lytics`` after it, behind
Airflow's own access-log middleware), against a real local state store. The last one goes through
a real ``airflow api-server`` loading the plugin from plugins/.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from braze_lytics.export_callback_app import URL_PREFIX, ExportCallbackApp
from include.clients.state_store import StateStore
from include.segments_to_lytics import export_callback as cb

pytestmark = [pytest.mark.airflow]


class Served:
    """A uvicorn server (access log on) in a thread, serving Airflow-like mounts of the app."""

    def __init__(self, app) -> None:
        import uvicorn
        from airflow.api_fastapi.common.http_access_log import HttpAccessLogMiddleware
        from fastapi import FastAPI
        from fastapi.responses import PlainTextResponse

        self.paths_logged: list[str] = []
        root = FastAPI()

        class RecordPaths:  # what an access log reads: scope["path"] once the request is done
            def __init__(inner, app):  # noqa: N805 - ASGI middleware shape
                inner.app = app

            async def __call__(inner, scope, receive, send):  # noqa: N805
                try:
                    await inner.app(scope, receive, send)
                finally:
                    if scope["type"] == "http":
                        self.paths_logged.append(scope["path"])

        root.add_middleware(HttpAccessLogMiddleware)
        root.add_middleware(RecordPaths)
        other = FastAPI()
        other.add_api_route("/{rest:path}", lambda rest: PlainTextResponse("run report"), methods=["GET", "POST"])
        root.mount(URL_PREFIX, app)
        root.mount("/braze-lytics", other)  # mounted after: must not shadow the callback
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self.server = uvicorn.Server(uvicorn.Config(root, host="127.0.0.1", port=port, access_log=True,
                                                    log_level="info", lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Served:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("BRAZE_LYTICS_STATE_URL", str(tmp_path / "state"))  # what the app opens by default
    return StateStore(str(tmp_path / "state"))


@pytest.fixture
def served(store):
    with Served(ExportCallbackApp()) as server:
        yield server


def register(store, served) -> tuple[str, cb.CallbackRequest]:
    req = cb.register(store, served.url, segment="vip", expires_in_seconds=600)
    assert req.endpoint.startswith(f"{served.url}{URL_PREFIX}/")
    return req.endpoint.rsplit("/", 1)[1], req


def test_braze_calling_back_is_recorded_once_and_answered_200(store, served, caplog, capfd):
    caplog.set_level(logging.INFO)
    token, req = register(store, served)
    r = requests.post(req.endpoint, json={"object_prefix": "p-1", "status": "completed",
                                          "url": "https://link.example/x?X-Amz-Signature=s3cr3tsig"}, timeout=10)
    assert r.status_code == 200 and r.json() == {"status": "received"}
    assert r.headers["Cache-Control"] == "no-store"
    first = cb.received(store, req.digest)
    assert first["object_prefix"] == "p-1" and first["url_given"] is True and "s3cr3tsig" not in str(first)
    # Idempotent: the same call again (or with an empty body, or in parallel) answers 200, changes nothing.
    with ThreadPoolExecutor(8) as pool:
        again = list(pool.map(lambda _: requests.post(req.endpoint, data=b"", timeout=10), range(16)))
    assert {a.status_code for a in again} == {200}
    assert cb.received(store, req.digest) == first
    # The token never reached a log: not uvicorn's access log, not Airflow's, not the app's own.
    assert served.paths_logged and all(p == f"{URL_PREFIX}/***" for p in served.paths_logged)
    out, err = capfd.readouterr()
    assert token not in caplog.text + out + err
    assert f"{URL_PREFIX}/***" in caplog.text + out + err  # the redacted path is what was logged
    assert cb.short_id(req.digest) in caplog.text


def test_an_empty_body_is_enough(store, served):
    _, req = register(store, served)
    assert requests.post(req.endpoint, timeout=10).status_code == 200
    assert cb.received(store, req.digest)["body"] == "empty"


@pytest.mark.parametrize("token", ["A" * 43, "not-a-token", "A" * 44, "%2e%2e%2fetc"])
def test_unknown_or_malformed_tokens_get_a_bare_404(store, served, token, capfd):
    register(store, served)
    r = requests.post(f"{served.url}{URL_PREFIX}/{token}", json={"object_prefix": "p-1"}, timeout=10)
    assert r.status_code == 404 and r.content == b""
    assert store.list(cb.STORE_PREFIX) and not [k for k in store.list(cb.STORE_PREFIX) if k.endswith(".done.json")]


def test_a_token_guessed_from_its_digest_or_a_forgotten_one_is_refused(store, served):
    token, req = register(store, served)
    assert requests.post(f"{served.url}{URL_PREFIX}/{req.digest[:43]}", timeout=10).status_code == 404
    cb.forget(store, req.digest)  # the export was completed (by the fallback): a late call is unknown
    assert requests.post(req.endpoint, timeout=10).status_code == 404


def test_other_methods_and_paths_tell_nothing(store, served):
    token, req = register(store, served)
    get = requests.get(req.endpoint, timeout=10)
    assert get.status_code == 405 and get.content == b"" and get.headers.get("allow") == "POST"
    nested = requests.post(f"{req.endpoint}/more", timeout=10)
    assert nested.status_code == 404 and nested.content == b""
    root = requests.post(f"{served.url}{URL_PREFIX}/", timeout=10)
    assert root.status_code == 404 and root.content == b""
    assert cb.received(store, req.digest) is None
    # The run report app still gets its own paths (mount order).
    assert requests.get(f"{served.url}/braze-lytics/dags/x/runs/y", timeout=10).text == "run report"


def test_a_body_over_the_cap_is_refused_with_or_without_a_length(store, served):
    _, req = register(store, served)
    big = b"x" * (cb.MAX_BODY_BYTES + 1)
    assert requests.post(req.endpoint, data=big, timeout=10).status_code == 413
    chunked = requests.post(req.endpoint, data=iter([big[:9000], big[9000:]]), timeout=10)  # no Content-Length
    assert chunked.status_code == 413
    assert cb.received(store, req.digest) is None
    assert requests.post(req.endpoint, data=b"x" * cb.MAX_BODY_BYTES, timeout=10).status_code == 200


def test_a_store_that_cannot_be_reached_is_a_bare_503(store, tmp_path):
    from include.common.errors import TransientError

    def broken():
        raise TransientError("state store unreachable")

    with Served(ExportCallbackApp(store_factory=broken)) as server:
        r = requests.post(f"{server.url}{URL_PREFIX}/{'A' * 43}", timeout=10)
    assert r.status_code == 503 and r.content == b""


@pytest.mark.slow
def test_through_a_real_airflow_api_server(store, airflow_db, tmp_path, monkeypatch):
    """The plugin as Airflow loads it: no login needed, the route wins over the run report's mount, the
    token is not in the API server's log."""
    from tests.dags.test_lytics_audiences_to_braze import AirflowApi

    (tmp_path / "api").mkdir()
    api = AirflowApi(tmp_path / "api")  # inherits BRAZE_LYTICS_STATE_URL from the environment
    try:
        api.ready()
        req = cb.register(store, api.url, segment="vip", expires_in_seconds=600)
        token = req.endpoint.rsplit("/", 1)[1]
        r = requests.post(req.endpoint, json={"object_prefix": "p-1"}, timeout=30)
        assert r.status_code == 200 and r.json() == {"status": "received"}, r.text
        assert cb.received(store, req.digest)["object_prefix"] == "p-1"
        unknown = requests.post(f"{api.url}{URL_PREFIX}/{'A' * 43}", timeout=30)
        assert unknown.status_code == 404 and unknown.content == b""
        # The run report is still behind Airflow's login.
        assert requests.get(f"{api.url}/braze-lytics/dags/x/runs/y", timeout=30).status_code == 401
    finally:
        api.stop()
    log = api.log.read_text(errors="replace")
    assert token not in log and f"{URL_PREFIX}/***" in log


# ------------------------------------------------------------------- the sensor's side (export_is_ready)
def link_export(store, req, prefix: str = "p-1") -> dict:
    return {"segment": "vip", "kind": "api", "braze_conn_id": "no_such_connection", "sealed_url": "sealed",
            "object_prefix": prefix, "output_format": "zip", "callback": {"id": req.digest, "store_url": store.url}}


def test_a_recorded_callback_completes_a_link_export_without_probing_the_link(store, caplog):
    from braze_lytics.tasks.segments_to_lytics import export_is_ready

    caplog.set_level(logging.INFO)
    req = cb.register(store, "https://airflow.example.com", segment="vip", expires_in_seconds=60)
    assert cb.record_callback(store, req.endpoint.rsplit("/", 1)[1], b'{"object_prefix": "p-1"}') == "recorded"
    export = link_export(store, req)
    assert export_is_ready(export) is True  # no Braze connection needed: the link was not probed
    assert "Braze export for vip: ready (Braze's callback arrived)" in caplog.text
    assert store.list(cb.STORE_PREFIX) == []  # done with: forgotten


def test_a_callback_naming_another_export_is_ignored(store, caplog):
    from braze_lytics.tasks.export_callback import callback_arrived

    req = cb.register(store, "https://airflow.example.com", segment="vip", expires_in_seconds=60)
    cb.record_callback(store, req.endpoint.rsplit("/", 1)[1], b'{"object_prefix": "someone-else"}')
    assert callback_arrived(link_export(store, req)) is None
    assert "names object prefix 'someone-else', not this export's 'p-1': ignored" in caplog.text
    assert callback_arrived({"segment": "vip", "callback": None}) is None  # no callback requested


def test_an_unreachable_callback_store_means_polling_only(tmp_path, monkeypatch, caplog):
    from braze_lytics.tasks.export_callback import callback_arrived, request_callback
    from include.segments_to_lytics.config import parse_config

    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    seg = parse_config({"segments": [{"name": "vip", "segment_id": "s", "columns": {"id": "external_id"},
                                      "callback_base_url": "https://airflow.example.com"}]}, "p.yaml").segments[0]
    monkeypatch.setenv("BRAZE_LYTICS_STATE_URL", str(blocker / "state"))  # under a file: cannot be written
    assert request_callback(seg) == (None, None)
    assert "could not register an export callback" in caplog.text and "polling only" in caplog.text
    export = {"segment": "vip", "callback": {"id": "0" * 64, "store_url": str(blocker / "state")}}
    assert callback_arrived(export) is None
