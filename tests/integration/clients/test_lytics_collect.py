"""The collect client, the kit's test event and the command, against the Lytics sandbox over real HTTP.

PASS records the event with the template's fields; each FAIL gives its own sentence; the token never
shows in an exception, on stdout/stderr or in the log (nor in the command's output, run as a process).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from include.clients.lytics.collect import MAX_EVENT_BYTES, LyticsCollectClient, mask_key
from include.common.errors import AuthError, NotFoundError, PermanentError, TransientError
from include.common.retry import RetryPolicy
from include.webhook_kit import template
from include.webhook_kit.kit import TEST_BRAZE_ID, TEST_EMAIL, TEST_EVENT, KitSettings, send_test_event
from sandbox.lytics_server import LyticsSandbox

pytestmark = pytest.mark.sandbox

REPO = Path(__file__).resolve().parents[3]
TOKEN = "sk-THE-SECRET-lytics-token-0123456789-wxyz"
ACCOUNT = "4242"
FAST = RetryPolicy(attempts=2, base_delay=0.01, max_delay=0.05)


@pytest.fixture
def sb():
    with LyticsSandbox(TOKEN, accounts=[ACCOUNT]) as sandbox:
        yield sandbox


def _client(url, token=TOKEN, account=ACCOUNT):
    return LyticsCollectClient(url, token, account, policy=FAST, timeout=(2, 5))


def _assert_no_token(*texts: str) -> None:
    for text in texts:
        assert TOKEN not in text
        assert "0123456789-wxyz" not in text  # not even most of it


# ---------------------------------------------------------------------- a small misbehaving server
class _Odd(BaseHTTPRequestHandler):
    """Answers every POST with what the test put in ``server.answer``: (status, headers, body)."""

    def do_POST(self):  # noqa: N802 - stdlib name
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        status, headers, body = self.server.answer(self.path)
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def odd():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Odd)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def _odd_url(server) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------- the client
def test_pass_posts_the_webhook_event_with_the_key_in_the_query_and_it_is_recorded(sb):
    answer = _client(sb.url).send_webhook_event(dict(TEST_EVENT))
    assert answer == {"status": 200, "message": "success"}
    [event] = sb.collect.events("braze_users")
    assert (event.account, event.endpoint) == (ACCOUNT, "c")
    assert event.fields == TEST_EVENT
    assert set(event.fields) == {f.name for f in template.FIELDS}  # exactly what the Braze body sends
    assert sb.requests[-1] == ("POST", f"/c/{ACCOUNT}/braze_users", 200)


def test_collect_json_sends_the_token_as_the_authorization_header(sb):
    assert _client(sb.url).collect_json({"email": "x@example.com"}, "crm")["message"] == "success"
    assert sb.collect.events("crm")[0].endpoint == "collect_json"


def test_a_failed_try_is_retried_and_then_passes(sb):
    sb.fail_next(1, 503)
    _client(sb.url).send_webhook_event(dict(TEST_EVENT))
    assert [r[2] for r in sb.requests] == [503, 200]
    assert len(sb.collect.events()) == 1


def test_fail_bad_key_is_an_auth_error_naming_the_fix(sb, capsys, caplog):
    with caplog.at_level(logging.DEBUG), pytest.raises(AuthError) as err:
        _client(sb.url, token="sk-wrong-token-0000000000-zzzz").send_webhook_event(dict(TEST_EVENT))
    text = str(err.value)
    assert "401" in text and "refused the API token" in text and "Data Manager" in text
    assert "key=" not in text and "sk-wrong-token" not in text
    assert sb.collect.events() == []


def test_fail_unknown_account_is_not_found(sb):
    with pytest.raises(NotFoundError) as err:
        _client(sb.url, account="9999").send_webhook_event(dict(TEST_EVENT))
    assert "404" in str(err.value) and "no account '9999'" in str(err.value) and "Account Settings" in str(err.value)


def test_fail_unknown_stream_when_the_account_restricts_streams(sb):
    sb.collect.restrict_streams({"braze_users"})
    with pytest.raises(NotFoundError) as err:
        _client(sb.url).send_webhook_event(dict(TEST_EVENT), stream="braze_userz")
    assert "no stream 'braze_userz'" in str(err.value)


def test_fail_an_oversized_event_is_refused_before_sending(sb):
    with pytest.raises(PermanentError) as err:
        _client(sb.url).send_webhook_event({"email": "a@example.com", "pad": "x" * MAX_EVENT_BYTES})
    assert "at most 4,096 bytes" in str(err.value)
    assert sb.requests == []


def test_fail_network_error_is_transient_and_names_the_host_only(capsys, caplog):
    url = f"http://127.0.0.1:{_closed_port()}"
    with caplog.at_level(logging.DEBUG), pytest.raises(TransientError) as err:
        _client(url).send_webhook_event(dict(TEST_EVENT))
    text = str(err.value)
    assert "ConnectionError" in text and "still failing after 2 tries" in text and url in text
    out = capsys.readouterr()
    _assert_no_token(text, out.out, out.err, caplog.text)


def test_fail_persistent_5xx_is_transient(sb):
    sb.fail_next(10, 502)
    with pytest.raises(TransientError) as err:
        _client(sb.url).send_webhook_event(dict(TEST_EVENT))
    assert "502" in str(err.value) and "still failing after 2 tries" in str(err.value)


def test_fail_a_non_json_answer_says_the_base_url_is_not_lytics(odd):
    odd.answer = lambda path: (200, {"Content-Type": "text/html"}, b"<html>Sign in to the proxy</html>")
    with pytest.raises(PermanentError) as err:
        _client(_odd_url(odd)).send_webhook_event(dict(TEST_EVENT))
    assert "not JSON (text/html)" in str(err.value) and "does not point at the Lytics API" in str(err.value)


def test_fail_a_redirect_is_not_followed(odd):
    odd.answer = lambda path: (301, {"Location": f"https://api.example.com{path}"}, b"")
    with pytest.raises(PermanentError) as err:
        _client(_odd_url(odd)).send_webhook_event(dict(TEST_EVENT))
    text = str(err.value)
    assert "301" in text and "redirect to https://api.example.com/c/4242/braze_users" in text
    _assert_no_token(text)


def test_fail_a_json_answer_that_is_not_success(odd):
    odd.answer = lambda path: (200, {"Content-Type": "application/json"}, b'{"status": 500, "message": "oops"}')
    with pytest.raises(PermanentError, match="not success"):
        _client(_odd_url(odd)).send_webhook_event(dict(TEST_EVENT))


def test_a_server_that_echoes_the_key_never_gets_it_into_the_error(odd, capsys, caplog):
    """A proxy's error page repeating the request URL: the token is scrubbed from the message (and from
    the retry warnings in the log)."""
    odd.answer = lambda path: (400, {"Content-Type": "application/json"},
                               json.dumps({"message": f"bad request {path}"}).encode())
    with caplog.at_level(logging.DEBUG), pytest.raises(PermanentError) as err:
        _client(_odd_url(odd)).send_webhook_event(dict(TEST_EVENT))
    assert f"key={mask_key(TOKEN)}" in str(err.value)
    odd.answer = lambda path: (503, {"Content-Type": "application/json"},
                               json.dumps({"message": f"down {path}"}).encode())
    with caplog.at_level(logging.DEBUG), pytest.raises(TransientError) as err2:
        _client(_odd_url(odd)).send_webhook_event(dict(TEST_EVENT))
    out = capsys.readouterr()
    _assert_no_token(str(err.value), str(err2.value), out.out, out.err, caplog.text)
    assert "down /c/4242/braze_users?key=****wxyz" in caplog.text  # the retry warning, scrubbed


def test_the_client_repr_holds_no_token():
    _assert_no_token(repr(_client("https://api.lytics.io")))


# ---------------------------------------------------------------------- the kit's test event
def _settings(url, token=TOKEN, account=ACCOUNT) -> KitSettings:
    return KitSettings(url, account, token)


def test_send_test_event_pass(sb, capsys):
    outcome = send_test_event(_settings(sb.url), client=_client(sb.url))
    assert outcome.passed, outcome.reason
    assert outcome.line().startswith("PASS: Lytics accepted the test event at ")
    assert f"/c/{ACCOUNT}/braze_users?key=****wxyz" in outcome.reason
    assert TEST_EMAIL in outcome.reason and TEST_BRAZE_ID in outcome.reason
    fields = sb.collect.events()[0].fields
    assert (fields["email"], fields["braze_id"]) == (TEST_EMAIL, TEST_BRAZE_ID)
    _assert_no_token(outcome.reason, *capsys.readouterr())


@pytest.mark.parametrize("case, words", [
    ("bad key", ["FAIL:", "401", "refused the API token"]),
    ("unknown account", ["FAIL:", "404", "no account '9999'"]),
    ("network", ["FAIL:", "ConnectionError"]),
    ("5xx", ["FAIL:", "503", "still failing"]),
])
def test_send_test_event_fail_sentences(sb, case, words, capsys, caplog):
    token, account, url = TOKEN, ACCOUNT, sb.url
    if case == "bad key":
        token = "sk-another-token-that-is-wrong-9999"
    elif case == "unknown account":
        account = "9999"
    elif case == "network":
        url = f"http://127.0.0.1:{_closed_port()}"
    else:
        sb.fail_next(10, 503)
    with caplog.at_level(logging.DEBUG):
        outcome = send_test_event(_settings(url, token, account), client=_client(url, token, account))
    assert not outcome.passed
    line = outcome.line()
    assert all(w in line for w in words), line
    assert "Traceback" not in line and "\n" not in line
    out = capsys.readouterr()
    _assert_no_token(line, out.out, out.err, caplog.text)
    assert token not in line


def test_send_test_event_never_raises():
    class Broken:
        def send_webhook_event(self, event, stream):
            raise RuntimeError(f"boom with {TOKEN}")

    outcome = send_test_event(_settings("https://api.lytics.io"), client=Broken())
    assert not outcome.passed and "unexpected RuntimeError" in outcome.reason
    _assert_no_token(outcome.reason)


# ---------------------------------------------------------------------- the command, as a process
def _run(*args: str, token: str | None = TOKEN, env_extra: dict | None = None, module: bool = True):
    env = {k: v for k, v in os.environ.items() if k != "LYTICS_API_TOKEN"}
    if token is not None:
        env["LYTICS_API_TOKEN"] = token
    env.update(env_extra or {})
    cmd = [sys.executable, "-m", "include.webhook_kit", *args] if module else \
        [sys.executable, "-c", "import sys; from include.webhook_kit.cli import main; sys.exit(main())", *args]
    return subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=120)


def test_cli_pass_exits_0_prints_the_masked_url_body_and_pass(sb):
    out = _run("--base-url", sb.url, "--account", ACCOUNT, "--send-test-event")
    assert out.returncode == 0, out.stderr
    assert f"{sb.url}/c/{ACCOUNT}/braze_users?key=****wxyz" in out.stdout
    assert "Content-Type: application/json" in out.stdout and '"email": "{{${email_address} | json_escape}}"' in out.stdout
    assert "Test event: PASS: Lytics accepted the test event" in out.stdout
    _assert_no_token(out.stdout, out.stderr)
    assert sb.collect.events()[0].fields == TEST_EVENT


def test_cli_without_the_test_event_sends_nothing_and_show_key_prints_the_full_url(sb):
    out = _run("--base-url", sb.url, "--account", ACCOUNT, "--show-key", module=False)
    assert out.returncode == 0, out.stderr
    assert f"{sb.url}/c/{ACCOUNT}/braze_users?key={TOKEN}" in out.stdout
    assert "Test event: not sent" in out.stdout and sb.requests == []


@pytest.mark.parametrize("case, words", [
    ("bad key", ["Test event: FAIL:", "401"]),
    ("unknown account", ["Test event: FAIL:", "404", "no account '9999'"]),
])
def test_cli_fail_exits_1_with_the_reason_and_no_traceback(sb, case, words):
    token, account = (("sk-another-token-that-is-wrong-9999", ACCOUNT) if case == "bad key" else (TOKEN, "9999"))
    out = _run("--base-url", sb.url, "--account", account, "--send-test-event", token=token)
    assert out.returncode == 1, out.stdout + out.stderr
    assert all(w in out.stdout for w in words), out.stdout
    assert "Traceback" not in out.stdout + out.stderr
    assert token not in out.stdout + out.stderr and TOKEN not in out.stdout + out.stderr


def test_cli_bad_settings_exit_2_with_one_line():
    out = _run("--account", ACCOUNT, token=None)
    assert out.returncode == 2 and "LYTICS_API_TOKEN is not set" in out.stderr and "Traceback" not in out.stderr
    out = _run("--account", ACCOUNT, "--token", TOKEN)
    assert out.returncode == 2 and "never taken on the command line" in out.stderr
    _assert_no_token(out.stdout, out.stderr)


@pytest.mark.airflow
def test_cli_reads_an_airflow_connection_with_conn_id(sb):
    conn = {"conn_type": "http", "host": sb.url, "password": TOKEN, "extra": {"account_id": ACCOUNT}}
    out = _run("--conn-id", "lytics_kit_cli", "--send-test-event", token=None,
               env_extra={"AIRFLOW_CONN_LYTICS_KIT_CLI": json.dumps(conn)})
    assert out.returncode == 0, out.stdout + out.stderr
    assert "from Airflow connection 'lytics_kit_cli'" in out.stdout and "Test event: PASS" in out.stdout
    _assert_no_token(out.stdout, out.stderr)
    assert urlsplit(sb.url).port and len(sb.collect.events()) == 1
    out = _run("--conn-id", "no_such_conn", token=None)
    assert out.returncode == 2 and "Airflow has no connection 'no_such_conn'" in out.stderr
