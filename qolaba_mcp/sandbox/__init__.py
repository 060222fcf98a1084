"""A local, Qolaba-compatible image API for demos, tests and CI: no key, no network, real PNGs."""

from ._app import Fault, Sandbox, SandboxConfig
from ._server import SandboxServer, serve

__all__ = ["Fault", "Sandbox", "SandboxConfig", "SandboxServer", "serve"]
