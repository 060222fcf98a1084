"""The floor for bench/bench.py: a bare MCP SDK stdio server with one one-line tool.

    .venv/bin/python bench/floor_server.py

Nothing but the SDK's own start-up, dispatch and memory: no Python MCP server can start faster, answer a call
sooner or sit in less memory than this one.
"""

from mcp.server.mcpserver import MCPServer

server = MCPServer("floor")


@server.tool()
def echo(text: str) -> str:
    """Return the text unchanged."""
    return text


if __name__ == "__main__":
    server.run("stdio")
