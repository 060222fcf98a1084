"""qolaba-mcp: an MCP server for Qolaba image generation, with an offline Qolaba-compatible sandbox."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("qolaba-mcp")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

__all__ = ["__version__"]
