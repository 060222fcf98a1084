"""Settings come from QOLABA_* variables; a missing key is an error only where a key is needed."""

from __future__ import annotations

import os
import subprocess
import sys

import anyio
import pytest

from qolaba_mcp._config import DEFAULT_BASE_URL, Settings, SettingsError
from qolaba_mcp._errors import MissingApiKeyError
from qolaba_mcp.api._client import QolabaClient

KEY = "qk_test_do_not_print_1234"


def test_defaults_without_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("QOLABA_API_KEY", "QOLABA_API_BASE_URL", "QOLABA_REQUEST_TIMEOUT"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings.from_env()
    assert settings.api_base_url == DEFAULT_BASE_URL == "https://api.platform.qolaba.ai"
    assert settings.api_key is None
    client = QolabaClient(base_url=settings.api_base_url, api_key=settings.api_key)
    with pytest.raises(MissingApiKeyError, match="QOLABA_API_KEY"):
        anyio.run(client.get_task, "t1")


def test_environment_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QOLABA_API_KEY", KEY)
    monkeypatch.setenv("QOLABA_API_BASE_URL", "http://127.0.0.1:8765")
    monkeypatch.setenv("QOLABA_REQUEST_TIMEOUT", "12.5")
    settings = Settings.from_env()
    assert settings.api_key is not None and settings.api_key.get_secret_value() == KEY
    assert settings.api_base_url == "http://127.0.0.1:8765" and settings.request_timeout == 12.5
    assert KEY not in repr(settings) and KEY not in str(settings.model_dump())


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("QOLABA_REQUEST_TIMEOUT", "-3"),
        ("QOLABA_SAVE", "sometimes"),
        ("QOLABA_PREVIEW_MAX_BYTES", "lots"),
        # a spend limit that is infinite, not a number, negative or absurd would switch itself off
        ("QOLABA_DAILY_BUDGET_USD", "inf"),
        ("QOLABA_MAX_COST_PER_CALL_USD", "1e999"),
        ("QOLABA_CONFIRM_ABOVE_USD", "nan"),
        ("QOLABA_DAILY_BUDGET_USD", "-0.5"),
        ("QOLABA_MAX_COST_PER_CALL_USD", "2000000"),
    ],
)
def test_bad_values_name_the_variable_without_echoing_them(name: str, value: str) -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({name: value})
    assert name in str(caught.value) and value not in str(caught.value)


def test_spend_limits_may_be_zero_and_up_to_a_million() -> None:
    settings = Settings.from_env({"QOLABA_DAILY_BUDGET_USD": "0", "QOLABA_MAX_COST_PER_CALL_USD": "1e6"})
    assert (settings.daily_budget_usd, settings.max_cost_per_call_usd) == (0, 1_000_000)


def test_lists_are_comma_separated_and_empty_means_unset() -> None:
    settings = Settings.from_env(
        {"QOLABA_MCP_ALLOWED_HOSTS": "a.example, b.example:*", "QOLABA_MODELS_FILE": "", "QOLABA_SAVE": " "}
    )
    assert settings.mcp_allowed_hosts == ["a.example", "b.example:*"]
    assert settings.models_file is None and settings.save == "auto"


@pytest.mark.parametrize(
    ("bad", "named"),
    [
        ({"QOLABA_MAX_WAIT_SECONDS": "forever"}, "QOLABA_MAX_WAIT_SECONDS"),
        # a budget is counted in the ledger: without one it could not be kept
        ({"QOLABA_DAILY_BUDGET_USD": "1", "QOLABA_LEDGER_URL": "off"}, "QOLABA_DAILY_BUDGET_USD needs the ledger"),
        ({"QOLABA_DAILY_BUDGET_USD": "inf"}, "QOLABA_DAILY_BUDGET_USD: Input should be a finite number"),
    ],
)
def test_bad_environment_stops_the_server_with_the_variable_named(bad: dict[str, str], named: str) -> None:
    env = {**os.environ, **bad}
    done = subprocess.run(
        [sys.executable, "-m", "qolaba_mcp"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 2 and named in done.stderr and done.stdout == ""
