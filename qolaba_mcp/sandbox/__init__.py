"""A local, Qolaba-compatible image API for demos, tests and CI: no key, no network, real PNGs.

Names load on first use: the pytest plugin in this package is imported by every pytest run where qolaba-mcp is
installed, and must cost nothing until a test asks for the sandbox.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._config import Fault, SandboxConfig
    from ._routes import Sandbox
    from ._server import SandboxServer, serve

_WHERE = {
    "Fault": "._config",
    "Sandbox": "._routes",
    "SandboxConfig": "._config",
    "SandboxServer": "._server",
    "serve": "._server",
}

__all__ = ["Fault", "Sandbox", "SandboxConfig", "SandboxServer", "serve"]


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(import_module(_WHERE[name], __name__), name)
    raise AttributeError(f"module 'qolaba_mcp.sandbox' has no attribute {name!r}")
