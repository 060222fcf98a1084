"""Settings come from QOLABA_* variables; a missing key is an error only where a key is needed."""

from __future__ import annotations

import anyio
import pytest
from pydantic import ValidationError

from qolaba_mcp._client import QolabaClient
from qolaba_mcp._config import DEFAULT_BASE_URL, Settings
from qolaba_mcp._errors import MissingApiKeyError

KEY = "qk_test_do_not_print_1234"


def test_defaults_without_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("QOLABA_API_KEY", "QOLABA_API_BASE_URL", "QOLABA_REQUEST_TIMEOUT"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings()
    assert settings.api_base_url == DEFAULT_BASE_URL == "https://api.platform.qolaba.ai"
    assert settings.api_key is None
    client = QolabaClient(base_url=settings.api_base_url, api_key=settings.api_key)
    with pytest.raises(MissingApiKeyError, match="QOLABA_API_KEY"):
        anyio.run(client.get_task, "t1")


def test_environment_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QOLABA_API_KEY", KEY)
    monkeypatch.setenv("QOLABA_API_BASE_URL", "http://127.0.0.1:8765")
    monkeypatch.setenv("QOLABA_REQUEST_TIMEOUT", "12.5")
    settings = Settings()
    assert settings.api_key is not None and settings.api_key.get_secret_value() == KEY
    assert settings.api_base_url == "http://127.0.0.1:8765" and settings.request_timeout == 12.5
    assert KEY not in repr(settings) and KEY not in str(settings.model_dump())


def test_bad_values_are_refused_without_echoing_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QOLABA_REQUEST_TIMEOUT", "-3")
    with pytest.raises(ValidationError) as caught:
        Settings()
    assert "request_timeout" in str(caught.value) and "-3" not in str(caught.value)
