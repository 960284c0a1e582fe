"""Credentials never travel in clear, and TLS certificates are always verified.

Braze and Lytics endpoints over plain ``http://`` are refused (ConfigError naming the connection) unless
the host is this machine (the sandboxes) or the connection sets ``"allow_insecure_http": true``; the same
holds for Braze's pre-signed download links (bearer secrets). Nothing in the project turns TLS
verification off: no ``verify=False`` in the code, the clients' sessions verify, and a server with a
self-signed certificate is refused.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import socket
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from include.common.errors import ConfigError
from include.common.http import is_loopback, require_tls

REPO = Path(__file__).resolve().parents[2]
KEY = "plain-http-test-key-123"


def set_conn(monkeypatch, conn_id: str, host: str, **extra) -> None:
    conn = {"conn_type": "http", "host": host, "password": KEY}
    if extra:
        conn["extra"] = extra
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(conn))


# ------------------------------------------------------------------------------------------------
# The rule
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "127.8.9.10", "::1", "[::1]", "LOCALHOST"])
def test_loopback_hosts(host):
    assert is_loopback(host)


@pytest.mark.parametrize("host", ["braze.example.com", "10.0.0.5", "192.0.2.2", "0.0.0.0", "127.0.0.1.nip.io",
                                  "localhost.evil.example", "evil.localhost", "::ffff:10.0.0.1", "", None])
def test_hosts_that_are_not_loopback(host):
    assert not is_loopback(host)


@pytest.mark.parametrize("url", ["https://rest.iad-01.braze.com", "http://127.0.0.1:8181", "http://localhost:9",
                                 "http://[::1]:80/x"])
def test_tls_or_loopback_is_accepted(url):
    assert require_tls(url, what="w") == url


@pytest.mark.parametrize("url", ["http://rest.iad-01.braze.com", "HTTP://api.lytics.io", "http://10.1.2.3:8181",
                                 "http://127.0.0.1.nip.io/", "http://user:pw@braze.example.com/?key=abc"])
def test_plain_http_to_another_machine_is_refused_without_showing_credentials(url):
    with pytest.raises(ConfigError) as err:
        require_tls(url, what="the Braze REST endpoint of connection 'x'")
    message = str(err.value)
    assert message.startswith("the Braze REST endpoint of connection 'x' is http")
    assert "allow_insecure_http" in message and "pw" not in message and "key=abc" not in message
    assert require_tls(url, what="w", allow_insecure_http=True) == url


# ------------------------------------------------------------------------------------------------
# Through the hooks: the connection is named, the extra allows it
# ------------------------------------------------------------------------------------------------
@pytest.fixture
def hooks(airflow_db):
    from braze_lytics.hooks.braze import BrazeHook
    from braze_lytics.hooks.lytics import LyticsHook

    return BrazeHook, LyticsHook


def braze_clients(hook):
    from include.common.rate_limit import RateLimiter

    return [hook.get_conn, lambda: hook.get_track_client(RateLimiter(10, 1.0)), hook.get_export_ids_client]


@pytest.mark.parametrize("host", ["http://rest.iad-01.braze.com", "http://192.0.2.2:8181"])
def test_braze_connection_over_plain_http_is_refused_naming_the_connection(hooks, monkeypatch, host):
    braze_hook, _ = hooks
    set_conn(monkeypatch, "braze_plain", host)
    for make in braze_clients(braze_hook("braze_plain")):
        with pytest.raises(ConfigError, match=r"the Braze REST endpoint of connection 'braze_plain' is http://"):
            make()


def test_braze_connection_with_http_schema_field_is_refused(hooks, monkeypatch):
    braze_hook, _ = hooks
    monkeypatch.setenv("AIRFLOW_CONN_BRAZE_SCHEMA", json.dumps(
        {"conn_type": "http", "host": "rest.iad-01.braze.com", "schema": "http", "password": KEY}))
    with pytest.raises(ConfigError, match="connection 'braze_schema'"):
        braze_hook("braze_schema").get_conn()


def test_lytics_connection_over_plain_http_is_refused_naming_the_connection(hooks, monkeypatch):
    _, lytics_hook = hooks
    set_conn(monkeypatch, "lytics_plain", "http://api.lytics.io")
    with pytest.raises(ConfigError, match=r"the Lytics API endpoint of connection 'lytics_plain' is http://api"):
        lytics_hook("lytics_plain").get_conn()


def test_webhook_kit_connection_over_plain_http_is_refused(airflow_db, monkeypatch):
    from braze_lytics.tasks.webhook_kit import kit_settings

    monkeypatch.setenv("AIRFLOW_CONN_LYTICS_KIT", json.dumps(
        {"conn_type": "http", "host": "http://api.lytics.io", "password": KEY, "extra": {"account_id": "1234"}}))
    with pytest.raises(ConfigError, match=r"the Lytics API endpoint of connection 'lytics_kit' is http://"):
        kit_settings("lytics_kit")


@pytest.mark.parametrize("flag", [True, "true", "yes", 1])
def test_the_connection_can_allow_plain_http_explicitly(hooks, monkeypatch, flag):
    braze_hook, lytics_hook = hooks
    set_conn(monkeypatch, "braze_lab", "http://braze-sandbox:8181", allow_insecure_http=flag)
    set_conn(monkeypatch, "lytics_lab", "http://lytics-sandbox:8282", allow_insecure_http=flag)
    assert braze_hook("braze_lab").get_conn().base_url == "http://braze-sandbox:8181"
    assert lytics_hook("lytics_lab").get_conn().base_url == "http://lytics-sandbox:8282"


@pytest.mark.parametrize("flag", [False, "false", "no", 0, ""])
def test_anything_but_an_explicit_true_keeps_plain_http_refused(hooks, monkeypatch, flag):
    braze_hook, _ = hooks
    set_conn(monkeypatch, "braze_lab", "http://braze-sandbox:8181", allow_insecure_http=flag)
    with pytest.raises(ConfigError, match="allow_insecure_http"):
        braze_hook("braze_lab").get_conn()


def test_https_and_loopback_connections_work(hooks, monkeypatch):
    braze_hook, lytics_hook = hooks
    set_conn(monkeypatch, "braze_tls", "https://rest.fra-01.braze.eu")
    set_conn(monkeypatch, "lytics_local", "http://127.0.0.1:8282")
    assert braze_hook("braze_tls").get_conn().base_url == "https://rest.fra-01.braze.eu"
    assert lytics_hook("lytics_local").get_conn().base_url == "http://127.0.0.1:8282"


def _non_loopback_address() -> str | None:
    """An address of this machine that is not loopback (traffic to it is 'the network' for the rule)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))  # no packet is sent: only picks the outgoing interface
            address = s.getsockname()[0]
    except OSError:
        return None
    return None if is_loopback(address) else address


@pytest.mark.sandbox
def test_a_real_braze_sandbox_on_a_network_address_gets_no_request_until_allowed(hooks, monkeypatch):
    """Against a real server on a non-loopback address: refused before anything is sent (the API key
    never leaves); with the extra set, the same connection works."""
    from sandbox.braze_server import BrazeSandbox
    from sandbox.braze_users import SegmentSpec

    address = _non_loopback_address()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address")
    braze_hook, _ = hooks
    with BrazeSandbox(KEY, [SegmentSpec("seg_net", 5)], host=address) as braze:
        assert braze.url.startswith(f"http://{address}:")
        set_conn(monkeypatch, "braze_net", braze.url)
        with pytest.raises(ConfigError, match="connection 'braze_net'"):
            braze_hook("braze_net").get_conn().start_segment_export("seg_net", ["external_id"])
        assert braze.requests == []  # nothing was sent, so neither was the key

        set_conn(monkeypatch, "braze_net", braze.url, allow_insecure_http=True)
        client = braze_hook("braze_net").get_conn()
        job = client.start_segment_export("seg_net", ["external_id"])
        assert [r[:2] for r in braze.requests] == [("POST", "/users/export/segment")]
        # The link Braze handed out is on the same plain-http host: allowed by the same extra.
        assert job.url.startswith(f"http://{address}:")
        client.export_ready(job.url)


def test_a_pre_signed_link_over_plain_http_is_refused_without_showing_its_signature(tmp_path):
    from include.clients.braze.export import BrazeExportClient

    client = BrazeExportClient("https://rest.iad-01.braze.com", KEY)
    link = "http://exports.example.com/segment-export/abc.zip?X-Amz-Signature=deadbeefcafe0123&X-Amz-Expires=60"
    for call in (lambda: client.export_ready(link), lambda: client.download(link, tmp_path / "x.zip")):
        with pytest.raises(ConfigError, match="the Braze export download link is http://exports.example.com") as err:
            call()
        assert "deadbeefcafe0123" not in str(err.value) and "X-Amz" not in str(err.value)
    assert not (tmp_path / "x.zip").exists()


# ------------------------------------------------------------------------------------------------
# TLS verification is never turned off
# ------------------------------------------------------------------------------------------------
_NO_VERIFY = re.compile(
    r"verify\s*=\s*False|\.verify\s*=\s*(False|0|None)\b|CERT_NONE|check_hostname\s*=\s*False|"
    r"_create_unverified_context|disable_warnings|PYTHONHTTPSVERIFY|CURL_CA_BUNDLE|REQUESTS_CA_BUNDLE|"
    r"InsecureRequestWarning|ssl_verify|verify_ssl"
)


def test_no_code_turns_tls_verification_off():
    offenders = []
    for folder in ("include", "plugins", "dags"):
        for path in sorted((REPO / folder).rglob("*.py")):
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if _NO_VERIFY.search(line):
                    offenders.append(f"{path.relative_to(REPO)}:{n}: {line.strip()}")
    assert offenders == []


def test_the_clients_sessions_verify_certificates(hooks, monkeypatch):
    from include.common.rate_limit import RateLimiter

    braze_hook, lytics_hook = hooks
    set_conn(monkeypatch, "braze_tls", "https://rest.iad-01.braze.com")
    set_conn(monkeypatch, "lytics_tls", "https://api.lytics.io")
    hook = braze_hook("braze_tls")
    sessions = [hook.get_conn().session, hook.get_track_client(RateLimiter(10, 1.0)).session,
                hook.get_export_ids_client().session, lytics_hook("lytics_tls").get_conn().session]
    for session in sessions:
        assert session.verify is True
        assert session.trust_env is True  # a CA bundle may be *added* (REQUESTS_CA_BUNDLE), never verification removed


@pytest.fixture
def self_signed_server(tmp_path):
    """An HTTPS server on loopback with a self-signed certificate for 127.0.0.1 (not trusted by anyone)."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .sign(key, hashes.SHA256()))
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                         serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption()))
    hits = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            hits.append(self.path)
            self.send_response(201)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"message": "success", "object_prefix": "p", "url": "https://127.0.0.1/x"}')

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"https://127.0.0.1:{server.server_address[1]}", hits
    server.shutdown()
    server.server_close()


def test_a_server_with_an_untrusted_certificate_is_refused(self_signed_server):
    from include.clients.braze.export import BrazeExportClient
    from include.common.errors import TransientError
    from include.common.retry import RetryPolicy

    url, hits = self_signed_server
    client = BrazeExportClient(url, KEY, policy=RetryPolicy(attempts=1))
    with pytest.raises(TransientError, match="SSLError"):
        client.start_segment_export("seg", ["external_id"])
    assert hits == []  # the TLS handshake failed: no request (and no API key) reached the server


def test_the_env_example_sandbox_connections_are_accepted_and_the_real_ones_need_tls(hooks, monkeypatch):
    """The commented connection lines of .env.example (what a team copies) work as written."""
    import re
    from pathlib import Path

    braze_hook, lytics_hook = hooks
    text = (Path(__file__).resolve().parents[2] / ".env.example").read_text()
    lines = re.findall(r"^# (AIRFLOW_CONN_(BRAZE|LYTICS)_DEFAULT)='(.*)'$", text, re.MULTILINE)
    assert len(lines) == 4, lines  # a real-account and a sandbox example of each
    for var, vendor, value in lines:
        conn = json.loads(value.replace("<", "").replace(">", ""))
        if vendor == "LYTICS":
            conn.setdefault("extra", {}).setdefault("account_id", "1234")
        monkeypatch.setenv(var, json.dumps(conn))
        hook = braze_hook("braze_default") if vendor == "BRAZE" else lytics_hook("lytics_default")
        client = hook.get_conn()
        assert client.base_url.startswith("https://") or conn["extra"].get("allow_insecure_http") is True
