"""The kit itself: where Braze must send (URL, masked), what (method, headers, body), and a test event.

Shared by the command (`include.webhook_kit.cli`) and the DAG (`lytics_webhook_kit`): both build
:class:`KitSettings`, print :func:`render`, and optionally call :func:`send_test_event`, which
never raises: it answers PASS or FAIL with one sentence saying why, free of the token.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urlsplit

from include.clients.lytics import collect
from include.webhook_kit import template

TEST_EMAIL = "webhook-kit-test@example.invalid"  # .invalid: a domain that can never receive mail (RFC 2606)
TEST_BRAZE_ID = "webhook-kit-test"
TEST_EVENT: dict[str, str] = {
    "city": "Webhook Kit Test",
    "country": "Webhook Kit Test",
    "first_name": "Webhook Kit",
    "gender": "O",
    "language": "en",
    "last_name": "Test Event",
    "date_of_birth": "19700101",
    "phone_number": "",  # empty: a made-up number could merge the test profile into someone's
    "time_zone": "UTC",
    "twitter_handle": "",  # likewise (tw_uid is a unique id)
    "email": TEST_EMAIL,
    "braze_id": TEST_BRAZE_ID,
}


@dataclass(frozen=True)
class KitSettings:
    """Where the webhook goes: Lytics base URL, account number, API token, stream.

    ``source`` says where they came from (an Airflow connection, the command line), for messages.
    Validated on creation (ConfigError); the token is left out of ``repr``.
    """

    base_url: str
    account: str
    token: str = field(repr=False)
    stream: str = collect.BRAZE_USERS_STREAM
    source: str = "the command line"

    def __post_init__(self) -> None:
        object.__setattr__(self, "base_url", collect.validate_base_url(self.base_url))
        object.__setattr__(self, "account", collect.validate_account(self.account))
        object.__setattr__(self, "token", collect.validate_token(self.token))
        object.__setattr__(self, "stream", collect.validate_stream(self.stream))

    def url(self, *, show_key: bool = False) -> str:
        return collect.webhook_url(self.base_url, self.account, self.token, self.stream, show_key=show_key)

    def masked_url(self) -> str:
        return self.url(show_key=False)

    def key_travels_in_clear(self) -> bool:
        """An http:// URL to anything but this machine sends the key unencrypted."""
        parts = urlsplit(self.base_url)
        return parts.scheme == "http" and parts.hostname not in ("localhost", "127.0.0.1", "::1")


@dataclass(frozen=True)
class TestOutcome:
    """The test event's verdict and the one sentence that explains it."""

    passed: bool
    reason: str

    def line(self) -> str:
        return f"{'PASS' if self.passed else 'FAIL'}: {self.reason}"

    def to_dict(self) -> dict:
        return {"passed": self.passed, "reason": self.reason}


def send_test_event(settings: KitSettings, *, client: collect.LyticsCollectClient | None = None) -> TestOutcome:
    """POST :data:`TEST_EVENT` to the webhook URL, as Braze would; PASS or FAIL with the reason. Never raises."""
    from include.common.errors import BrazeLyticsError

    try:
        client = client or collect.LyticsCollectClient(settings.base_url, settings.token, settings.account)
        client.send_webhook_event(dict(TEST_EVENT), settings.stream)
    except BrazeLyticsError as exc:
        return TestOutcome(False, _without_token(str(exc), settings.token))
    except Exception as exc:  # noqa: BLE001 - a check answers FAIL, it never shows a traceback
        return TestOutcome(False, f"unexpected {type(exc).__name__} while sending the test event: "
                                  f"{_without_token(str(exc), settings.token)[:300]}")
    return TestOutcome(True, f"Lytics accepted the test event at {settings.masked_url()}. It lands in stream "
                             f"{settings.stream!r} as a user with email {TEST_EMAIL} and braze_id {TEST_BRAZE_ID}; "
                             f"delete that profile in Lytics if you do not want to keep it.")


def render(settings: KitSettings, *, show_key: bool = False, outcome: TestOutcome | None = None) -> str:
    """Everything a person needs to set up the Braze webhook step, as text."""
    url = settings.url(show_key=show_key)
    lines = [
        f"Lytics webhook for Braze (account {settings.account}, stream {settings.stream}; from {settings.source})",
        "",
        "1. Webhook URL (Braze webhook step: Compose > Webhook URL):",
        f"   {url}",
    ]
    if show_key:
        lines.append("   This URL holds the API token: paste it into Braze only, and keep it out of tickets and chats.")
    else:
        lines.append("   The key is masked. Print the full URL with --show-key where nobody is looking over your "
                     "shoulder, or build it from the token yourself.")
    if settings.key_travels_in_clear():
        lines.append("   WARNING: this URL is http://, so the key would cross the network unencrypted; use https://.")
    lines += [
        "",
        "2. HTTP method and request headers (Braze: Settings):",
        f"   HTTP method: {template.HTTP_METHOD}",
        *(f"   {line}" for line in template.header_lines()),
        "",
        "3. Request body (Braze: Compose > Request body > Raw text):",
        template.body_template(),
        "",
        f"Fields and where Lytics' default mapping of stream {collect.BRAZE_USERS_STREAM!r} puts them:",
        *(f"   {line}" for line in template.mapping_lines()),
        "",
    ]
    if outcome is None:
        lines.append("Test event: not sent (ask for one with --send-test-event, or the DAG's send_test_event).")
    else:
        lines.append(f"Test event: {outcome.line()}")
    return _without_token("\n".join(lines), settings.token) if not show_key else "\n".join(lines)


def _without_token(text: str, token: str) -> str:
    """``text`` with any trace of the token replaced by its masked form."""
    from urllib.parse import quote

    for secret in {token, quote(token, safe=""), quote(token)}:
        if secret:
            text = text.replace(secret, collect.mask_key(token))
    return text
