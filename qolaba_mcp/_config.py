"""Settings: every knob, read once from the environment (``QOLABA_*``) and overridable by CLI flags."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

from ._errors import QolabaError

DEFAULT_BASE_URL = "https://api.platform.qolaba.ai"
ENV_PREFIX = "QOLABA_"
# The most a spend setting may say, in USD: a larger (or infinite) figure is a typo, and would switch its limit off.
MAX_SPEND_SETTING_USD = 1_000_000.0


class SettingsError(QolabaError):
    """A QOLABA_* variable holds a value that cannot be used; the message names it, never echoes it."""


class Settings(BaseModel):
    """Process-wide configuration; build it once at start-up (``Settings.from_env()``) and pass it down.

    Plain pydantic rather than pydantic-settings: reading a dozen variables is a few lines, and the library's
    import cost a measurable share of the server's cold start.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    api_key: SecretStr | None = Field(
        default=None,
        description="Qolaba API key; sent as X-API-Key and Authorization: Bearer.",
    )
    api_base_url: str = Field(
        default=DEFAULT_BASE_URL,
        description="Base URL of the Qolaba API (point it at the sandbox for offline use).",
    )
    connect_timeout: float = Field(default=10.0, gt=0, le=120, description="Seconds to open a connection to the API.")
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

    models_file: Path | None = Field(
        default=None,
        description="JSON file of models that adds to or overrides the built-in catalogue.",
    )
    max_wait_seconds: float = Field(
        default=50.0,
        ge=0,
        le=3600,
        description="Upper bound for a tool call's wait_seconds (keep it under your host's tool timeout).",
    )
    poll_min_interval: float = Field(default=0.25, gt=0, le=60, description="Seconds between the first task polls.")
    poll_max_interval: float = Field(default=2.0, gt=0, le=300, description="Longest gap between task polls.")
    save: Literal["auto", "on", "off"] = Field(
        default="auto",
        description="Save generated images to disk by default: auto = on for stdio, off for HTTP.",
    )
    output_dir: Path | None = Field(
        default=None, description="Folder for saved images (default: a per-user data folder)."
    )
    preview: Literal["on", "off", "full"] = Field(
        default="on",
        description="Inline previews in results: on (JPEG/WebP, long side <= 512 px), off, or full "
        "(the original bytes when they fit the budget).",
    )
    resource_links: Literal["on", "off"] = Field(
        default="on",
        description="resource_link blocks in results: on, or off (the image URLs in the text only, for clients "
        "that fail on a resource_link); previews and text are the same either way.",
    )
    preview_max_bytes: int = Field(
        default=100_000, ge=1_000, le=700_000, description="Byte budget shared by one result's previews."
    )
    download_max_bytes: int = Field(
        default=50 * 1024 * 1024, ge=1024, le=1024**3, description="Largest image this server downloads."
    )
    download_allow_private: bool = Field(
        default=False,
        description="Download images from loopback, private and other non-public addresses "
        "(the API's own origin always is).",
    )
    input_roots: str | None = Field(
        default=None,
        description="stdio: the folders (separated like PATH) whose image files generate_image may read as inputs; "
        "default: Desktop, Documents, Downloads and Pictures in the home folder, and the output folder; off: none.",
    )
    input_max_bytes: int = Field(
        default=10_485_760,
        ge=1,
        le=10_485_760,
        description="The largest image input read from a local file or a data: URI, in bytes.",
    )
    ledger_url: str | None = Field(
        default=None,
        description="Where the generation ledger lives: sqlite:///<path> (default: ledger.db in the per-user data "
        "folder), sqlite:///:memory:, postgresql://user@host/db (shared by replicas), or off.",
    )
    join_window_seconds: float = Field(
        default=900.0,
        ge=0,
        le=86_400,
        description="A generate_image call identical to one made within this many seconds, still running or "
        "not yet delivered, joins it instead of paying again (0 turns joining off).",
    )
    max_cost_per_call_usd: float | None = Field(
        default=None,
        ge=0,
        le=MAX_SPEND_SETTING_USD,
        allow_inf_nan=False,
        description="Refuse a generate_image call whose estimated price passes this many USD (unset: no cap).",
    )
    daily_budget_usd: float | None = Field(
        default=None,
        ge=0,
        le=MAX_SPEND_SETTING_USD,
        allow_inf_nan=False,
        description="Refuse a generate_image call that would take a caller's spend over the last 24 hours past "
        "this many USD (unset: no budget; 0 refuses every paid call).",
    )
    confirm_above_usd: float | None = Field(
        default=None,
        ge=0,
        le=MAX_SPEND_SETTING_USD,
        allow_inf_nan=False,
        description="Ask the user to confirm a generate_image call estimated above this many USD (unset: never ask).",
    )
    mcp_auth_token: SecretStr | None = Field(
        default=None,
        description="HTTP transport: the bearer token every request must carry (required off loopback).",
    )
    mcp_allowed_hosts: list[str] = Field(
        default_factory=list,
        description="HTTP transport: Host header values accepted besides loopback (comma-separated).",
    )
    mcp_allowed_origins: list[str] = Field(
        default_factory=list,
        description="HTTP transport: Origin header values accepted besides loopback (comma-separated).",
    )
    mcp_max_body_bytes: int = Field(
        default=2 * 1024 * 1024,
        ge=1024,
        le=64 * 1024 * 1024,
        description="HTTP transport: largest request body.",
    )
    mcp_allow_client_keys: bool = Field(
        default=False,
        description="HTTP transport: accept a per-request Qolaba key in the X-Qolaba-Api-Key header.",
    )
    mcp_oauth_issuer: str | None = Field(
        default=None,
        description="HTTP transport: the OAuth 2.1 authorization server (its issuer URL) whose access tokens "
        "identify callers; turns OAuth on (see docs/oauth.md).",
    )
    mcp_public_url: str | None = Field(
        default=None,
        description="HTTP transport: this server's public https URL of /mcp, the resource tokens must be issued "
        "for (their audience); required with QOLABA_MCP_OAUTH_ISSUER.",
    )
    mcp_oauth_introspection_url: str | None = Field(
        default=None,
        description="HTTP transport: the issuer's RFC 7662 introspection endpoint, for opaque (non-JWT) access "
        "tokens (default: the one the issuer's metadata names).",
    )
    mcp_oauth_introspection_client_id: str | None = Field(
        default=None,
        description="HTTP transport: the client id this server introspects opaque tokens with.",
    )
    mcp_oauth_introspection_client_secret: SecretStr | None = Field(
        default=None,
        description="HTTP transport: the client secret this server introspects opaque tokens with.",
    )

    mcp_metrics_host: str = Field(
        default="127.0.0.1",
        description="HTTP transport: address of the --metrics-port listener (loopback unless set).",
    )
    trace_prompts: bool = Field(
        default=False,
        description="Put prompts in OpenTelemetry spans (off: spans carry no prompt).",
    )

    @field_validator("mcp_allowed_hosts", "mcp_allowed_origins", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @model_validator(mode="after")
    def _budget_needs_ledger(self) -> Settings:
        if self.daily_budget_usd is not None and (self.ledger_url or "").strip().lower() == "off":
            raise ValueError(
                "QOLABA_DAILY_BUDGET_USD needs the ledger to count spend, but QOLABA_LEDGER_URL is off: unset one"
            )
        return self

    @model_validator(mode="after")
    def _oauth_complete(self) -> Settings:
        if self.mcp_oauth_issuer is None:
            return self
        if self.mcp_auth_token is not None:
            raise ValueError(
                "QOLABA_MCP_OAUTH_ISSUER and QOLABA_MCP_AUTH_TOKEN are both set: with OAuth every caller signs in, "
                "so a shared static token would let anyone act as nobody in particular; unset QOLABA_MCP_AUTH_TOKEN"
            )
        if self.mcp_public_url is None:
            raise ValueError(
                "QOLABA_MCP_OAUTH_ISSUER needs QOLABA_MCP_PUBLIC_URL: the public https URL of /mcp that tokens are "
                "issued for (e.g. https://mcp.example.com/mcp)"
            )
        for name in ("mcp_oauth_issuer", "mcp_public_url", "mcp_oauth_introspection_url"):
            problem = _url_problem(getattr(self, name))
            if problem:
                raise ValueError(f"{ENV_PREFIX}{name.upper()}: {problem}")
        return self

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Settings from ``QOLABA_<FIELD>`` variables (empty ones count as unset), then ``overrides``."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name in cls.model_fields:
            value = env.get(f"{ENV_PREFIX}{name.upper()}", "").strip()
            if value:
                values[name] = value
        try:
            return cls.model_validate({**values, **overrides})
        except ValidationError as exc:
            problems = "; ".join(
                f"{ENV_PREFIX}{str(err['loc'][0]).upper()}: {err['msg']}"
                if err["loc"]
                else str(err["msg"]).removeprefix("Value error, ")
                for err in exc.errors(include_input=False, include_url=False)
            )
            raise SettingsError(f"invalid configuration: {problems}") from None


def _url_problem(url: str | None) -> str | None:
    """Why an OAuth URL cannot be trusted, or None: plain http is for loopback (a test issuer) only."""
    if url is None:
        return None
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname or parts.query or parts.fragment:
        return "must be an https URL without a query or fragment"
    if parts.scheme == "http" and not _loopback(parts.hostname):
        return "must use https off loopback (tokens and keys would travel in the clear)"
    return None


def _loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
