"""Webhook URL building and key masking (include.clients.lytics.collect), settings validation (kit)."""

from __future__ import annotations

import pytest

from include.clients.lytics.collect import (
    DEFAULT_BASE_URL,
    mask_key,
    validate_account,
    validate_base_url,
    webhook_url,
)
from include.common.errors import ConfigError
from include.webhook_kit.kit import KitSettings, render

TOKEN = "at.0123456789abcdefSECRETabcd"


def test_the_url_is_the_one_lytics_documents_for_braze():
    assert webhook_url(DEFAULT_BASE_URL, "1234", TOKEN, show_key=True) == \
        f"https://api.lytics.io/c/1234/braze_users?key={TOKEN}"
    assert webhook_url("https://api.lytics.io/", " 1234 ", TOKEN, "other_stream", show_key=True) == \
        f"https://api.lytics.io/c/1234/other_stream?key={TOKEN}"


def test_the_url_is_masked_by_default_showing_only_the_last_4_characters():
    url = webhook_url(DEFAULT_BASE_URL, "1234", TOKEN)
    assert url == "https://api.lytics.io/c/1234/braze_users?key=****abcd"
    assert TOKEN not in url and "SECRET" not in url


def test_masking_short_tokens_shows_nothing():
    assert mask_key("x" * 15) == "****"
    assert mask_key("y" * 15 + "tail") == "****tail"


def test_a_token_with_url_characters_is_percent_encoded():
    token = "abc+/=def&ghi?jklmnop"
    assert webhook_url("http://127.0.0.1:8282", "1", token, show_key=True).endswith(
        "?key=abc%2B%2F%3Ddef%26ghi%3Fjklmnop")


@pytest.mark.parametrize("base", ["api.lytics.io", "ftp://api.lytics.io", "https://", "https://api.lytics.io?key=x",
                                  "https://user:pw@api.lytics.io", "http://host:notaport"])
def test_bad_base_urls_are_config_errors(base):
    with pytest.raises(ConfigError):
        validate_base_url(base)


@pytest.mark.parametrize("account", ["", None, "12/34", "12 34", "a" * 65])
def test_bad_accounts_are_config_errors(account):
    with pytest.raises(ConfigError):
        validate_account(account)


@pytest.mark.parametrize("token, words", [("", "empty"), ("Bearer abcdefghijklmnopqrst", "Bearer"),
                                          ("abc defghijklmnopqrst", "spaces")])
def test_bad_tokens_are_config_errors_that_do_not_repeat_them(token, words):
    with pytest.raises(ConfigError) as err:
        KitSettings(DEFAULT_BASE_URL, "1234", token)
    assert words in str(err.value)
    if token:
        assert "defghijklmnopqrst" not in str(err.value)


def test_settings_hide_the_token_and_render_masks_it():
    s = KitSettings("https://api.lytics.io/", "1234", TOKEN)
    assert TOKEN not in repr(s) and s.base_url == "https://api.lytics.io"
    text = render(s)
    assert TOKEN not in text and "key=****abcd" in text and "--show-key" in text
    assert f"key={TOKEN}" in render(s, show_key=True)


def test_http_to_another_host_is_flagged():
    assert KitSettings("http://lytics.internal", "1", TOKEN).key_travels_in_clear()
    assert "unencrypted" in render(KitSettings("http://lytics.internal", "1", TOKEN))
    assert not KitSettings("http://127.0.0.1:8282", "1", TOKEN).key_travels_in_clear()
    assert not KitSettings(DEFAULT_BASE_URL, "1", TOKEN).key_travels_in_clear()
