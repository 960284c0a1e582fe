"""The command's argument handling, in process and without a network (sending is tested against the sandbox
in tests/integration/clients/test_lytics_collect.py)."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from include.webhook_kit import cli

REPO = Path(__file__).resolve().parents[3]
TOKEN = "at.cli-unit-token-0123456789-qrst"


def test_prints_the_kit_with_the_key_masked(monkeypatch, capsys):
    monkeypatch.setenv(cli.TOKEN_ENV, TOKEN)
    assert cli.main(["--account", "1234"]) == cli.EXIT_OK
    out, err = capsys.readouterr()
    assert "https://api.lytics.io/c/1234/braze_users?key=****qrst" in out
    assert "HTTP method: POST" in out and "Content-Type: application/json" in out
    body = out[out.index("{\n"):out.index("\n}\n") + 2]
    assert set(json.loads(body)) >= {"email", "braze_id", "date_of_birth"}
    assert "Test event: not sent" in out
    assert TOKEN not in out + err


def test_show_key_prints_the_full_url(monkeypatch, capsys):
    monkeypatch.setenv(cli.TOKEN_ENV, TOKEN)
    assert cli.main(["--account", "1234", "--base-url", "https://eu.example.invalid", "--show-key"]) == 0
    assert f"https://eu.example.invalid/c/1234/braze_users?key={TOKEN}" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["--account", "1", "--token", TOKEN], ["--account", "1", f"--key={TOKEN}"],
                                  ["--token", TOKEN]])
def test_a_token_on_the_command_line_is_refused_without_being_repeated(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == cli.EXIT_CONFIG
    out, err = capsys.readouterr()
    assert "never taken on the command line" in err and cli.TOKEN_ENV in err
    assert TOKEN not in out + err


@pytest.mark.parametrize("argv, env, words", [
    (["--account", "1234"], None, "LYTICS_API_TOKEN is not set"),
    ([], TOKEN, "--account is missing"),
    (["--account", "12/34"], TOKEN, "account number '12/34' is not valid"),
    (["--account", "1234", "--base-url", "api.lytics.io"], TOKEN, "not an http(s) URL"),
    (["--conn-id", "x", "--account", "1"], TOKEN, "either --conn-id or --base-url/--account"),
    (["--account", "1234"], "Bearer " + TOKEN, "starts with 'Bearer '"),
])
def test_bad_settings_exit_2_with_one_line_on_stderr(argv, env, words, monkeypatch, capsys):
    monkeypatch.delenv(cli.TOKEN_ENV, raising=False)
    if env is not None:
        monkeypatch.setenv(cli.TOKEN_ENV, env)
    assert cli.main(argv) == cli.EXIT_CONFIG
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("ERROR: ") and words in err and err.count("\n") == 1
    assert TOKEN not in err


def test_the_console_script_points_at_main():
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["braze-lytics-webhook-kit"] == "include.webhook_kit.cli:main"
