"""Settings: every knob, read once from the environment (``QOLABA_*``) and overridable by CLI flags."""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from ._errors import MissingApiKeyError

DEFAULT_BASE_URL = "https://api.platform.qolaba.ai"


class Settings(BaseSettings):
    """Process-wide configuration; build it once at start-up and pass it down."""

    model_config = SettingsConfigDict(
        env_prefix="QOLABA_",
        extra="ignore",
        frozen=True,
        hide_input_in_errors=True,
    )

    api_key: SecretStr | None = Field(
        default=None,
        description="Qolaba API key; sent as X-API-Key and Authorization: Bearer.",
    )
    api_base_url: str = Field(
        default=DEFAULT_BASE_URL,
        description="Base URL of the Qolaba API (point it at the sandbox for offline use).",
    )
    connect_timeout: float = Field(
        default=10.0, gt=0, le=120, description="Seconds to open a connection to the API."
    )
    request_timeout: float = Field(
        default=30.0,
        gt=0,
        le=600,
        description="Seconds to wait for one API response (task polls, async submissions).",
    )
    sync_timeout: float = Field(
        default=120.0,
        gt=0,
        le=900,
        description="Seconds to wait for a synchronous (celery=false) generation response.",
    )

    def require_api_key(self) -> str:
        """The key's value, or a MissingApiKeyError naming the variable to set."""
        if self.api_key is None or not self.api_key.get_secret_value().strip():
            raise MissingApiKeyError(
                "No Qolaba API key is configured: set the QOLABA_API_KEY environment variable "
                "(or point QOLABA_API_BASE_URL at the sandbox, which accepts any key)."
            )
        return self.api_key.get_secret_value().strip()
