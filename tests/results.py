"""Reading tool results in tests: the text blocks, and the structured content (which must be there)."""

from __future__ import annotations

from typing import Any

from mcp.types import CallToolResult, TextContent


def text(result: CallToolResult) -> str:
    return "\n".join(block.text for block in result.content if isinstance(block, TextContent))


def data(result: CallToolResult) -> dict[str, Any]:
    assert result.structured_content is not None, text(result)
    return result.structured_content
