"""The MCP surface: the server, its tools, resources, results and the gallery app's parts."""

from ._server import build_server

__all__ = ["build_server"]
