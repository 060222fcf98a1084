"""Fixtures for the browser tests: system Chromium, the built host page, and a real qolaba-mcp behind it.

These tests are left out of the default run (`make test`): they need npm installs and Chromium. They run with
QOLABA_BROWSER_TESTS=1, as `make browser` and `make interop` run them. A missing Chromium or host page skips them,
or fails them when CI=true.
"""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import pytest
from mcp import Client, StdioServerParameters
from playwright.async_api import Browser, expect

from ..conftest import server_env
from .host import CHROMIUM_NAMES, chromium, find_chromium, host_built, host_dir, serve_host_page, ui_extension

if os.environ.get("QOLABA_BROWSER_TESTS") != "1":
    collect_ignore_glob = ["test_*.py"]

IN_CI = os.environ.get("CI") in ("true", "1")
# Each step an app takes is a few messages and a paint, but this machine may be busy with other tests.
expect.set_options(timeout=15_000)


def unavailable(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: a failure, not a skip)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    """Session-wide, so one Chromium serves every test."""
    return "asyncio"


@pytest.fixture(scope="session")
def host_url() -> Iterator[str]:
    folder = host_dir()
    if not host_built(folder):
        unavailable(f"the MCP Apps host page is not built in {folder}: run `bash scripts/apps_host/build.sh {folder}`")
    with serve_host_page(folder) as url:
        yield url


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[Browser]:
    executable = find_chromium()
    if executable is None:
        unavailable(f"no Chromium on PATH ({', '.join(CHROMIUM_NAMES)}): install Debian's `chromium` package")
    assert executable is not None
    async with chromium(executable) as opened:
        yield opened


@asynccontextmanager
async def qolaba(base_url: str, **env: str | None) -> AsyncIterator[Client]:
    """The SDK Client on a qolaba-mcp stdio subprocess, advertising the MCP Apps extension as a host does."""
    params = StdioServerParameters(command=sys.executable, args=["-m", "qolaba_mcp"], env=server_env(base_url, **env))
    async with Client(params, extensions=[ui_extension()]) as client:
        yield client
