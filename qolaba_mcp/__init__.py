"""qolaba-mcp: an MCP server for Qolaba image generation, with an offline Qolaba-compatible sandbox.

The public names below load on first use, so ``import qolaba_mcp`` (and the pytest plugin) stays cheap.
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

try:
    __version__ = version("qolaba-mcp")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

if TYPE_CHECKING:
    from ._config import Settings, SettingsError
    from ._errors import (
        APIStatusError,
        APITimeoutError,
        AuthenticationError,
        BadRequestError,
        MissingApiKeyError,
        NetworkError,
        QolabaError,
        RateLimitError,
        ResponseFormatError,
        ServerError,
        TaskNotFoundError,
    )
    from .api._catalog import Catalog, ModelInfo
    from .api._client import QolabaClient
    from .api._wire import GenerateRequest, GenerateResult, ImageOutput, Task, TaskCreated, Usage
    from .server import build_server

_WHERE = {
    "APIStatusError": "._errors",
    "APITimeoutError": "._errors",
    "AuthenticationError": "._errors",
    "BadRequestError": "._errors",
    "Catalog": ".api._catalog",
    "GenerateRequest": ".api._wire",
    "GenerateResult": ".api._wire",
    "ImageOutput": ".api._wire",
    "MissingApiKeyError": "._errors",
    "ModelInfo": ".api._catalog",
    "NetworkError": "._errors",
    "QolabaClient": ".api._client",
    "QolabaError": "._errors",
    "RateLimitError": "._errors",
    "ResponseFormatError": "._errors",
    "ServerError": "._errors",
    "Settings": "._config",
    "SettingsError": "._config",
    "Task": ".api._wire",
    "TaskCreated": ".api._wire",
    "TaskNotFoundError": "._errors",
    "Usage": ".api._wire",
    "build_server": ".server",
}

__all__ = [
    "APIStatusError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "Catalog",
    "GenerateRequest",
    "GenerateResult",
    "ImageOutput",
    "MissingApiKeyError",
    "ModelInfo",
    "NetworkError",
    "QolabaClient",
    "QolabaError",
    "RateLimitError",
    "ResponseFormatError",
    "ServerError",
    "Settings",
    "SettingsError",
    "Task",
    "TaskCreated",
    "TaskNotFoundError",
    "Usage",
    "__version__",
    "build_server",
]


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(import_module(_WHERE[name], __name__), name)
    raise AttributeError(f"module 'qolaba_mcp' has no attribute {name!r}")
