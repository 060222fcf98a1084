"""Shared by the artifact tests (the wheel, the sdist, the .mcpb): finding tools, uv's cache, one generation."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest
from mcp import Client, StdioServerParameters
from mcp.types import CallToolResult, TextContent

ROOT = Path(__file__).parent.parent
FLASH = "vertex/nano-banana-flash"  # $0.03 an image in the sandbox
# uv's downloads survive between runs here, so only the first run waits for PyPI
UV_CACHE = ROOT / ".cache" / "uv"
FIRST_START = 600.0  # seconds: a first start may resolve and download every dependency from PyPI


def tool(name: str) -> str:
    """The path of a command-line tool (the venv's first); skips without it, fails under CI."""
    found = shutil.which(name, path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    if found is None:
        message = f"{name} is not installed: the release artifacts cannot be built or run here"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment minus QOLABA_* and any active venv, plus uv's cache and these."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("QOLABA_") and k != "VIRTUAL_ENV"}
    env.update(UV_CACHE_DIR=str(UV_CACHE), **extra)
    return env


def text(result: CallToolResult) -> str:
    return "\n".join(block.text for block in result.content if isinstance(block, TextContent))


async def generate(params: StdioServerParameters) -> tuple[list[str], CallToolResult]:
    """The tool names the server lists, and the result of one sandbox-priced generation."""
    async with Client(params, read_timeout_seconds=FIRST_START) as client:
        names = [t.name for t in (await client.list_tools()).tools]
        result = await client.call_tool(
            "generate_image", {"model": FLASH, "prompt": "a lighthouse at dusk", "wait_seconds": 30}
        )
    return names, result
