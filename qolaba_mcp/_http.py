"""Streamable HTTP: the MCP server as an ASGI app at /mcp, served by uvicorn."""

from __future__ import annotations

import uvicorn
from mcp.server.mcpserver import MCPServer
from starlette.types import ASGIApp

MCP_PATH = "/mcp"


def http_app(server: MCPServer, *, host: str, stateless: bool) -> ASGIApp:
    """The ASGI app; responses stream as SSE so progress notifications reach HTTP clients too."""
    return server.streamable_http_app(
        streamable_http_path=MCP_PATH,
        stateless_http=stateless,
        json_response=False,
        host=host,
    )


def serve_http(server: MCPServer, *, host: str, port: int, stateless: bool, log_level: str) -> None:
    uvicorn.run(
        http_app(server, host=host, stateless=stateless),
        host=host,
        port=port,
        log_level=log_level.lower(),
        access_log=log_level.upper() == "DEBUG",
        log_config=None,  # our stderr logging, never stdout
    )
