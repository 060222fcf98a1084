from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp import Client, StdioServerParameters

from qolaba_mcp.images._delivery import default_data_dir
from qolaba_mcp.sandbox import SandboxConfig, SandboxServer

pytest_plugins = ["tests.pg"]  # the postgres_url fixture: a real PostgreSQL server the tests start

SERVER_KEY = "qk_test_server_key_5f2c9e1d"
_OUTPUT_DIR: list[str] = []  # the session's folder for images saved by servers under test


# --- the user's own data folder is never touched ------------------------------------------------------------------
# Every server a test starts, in this process or as a subprocess, finds its per-user data folder (default ledger,
# saved images) under a temporary folder: the suite points XDG_DATA_HOME, LOCALAPPDATA and (on macOS) HOME there
# before any test runs, and xdist workers inherit it. The controller remembers the real folder as it was, and fails
# the run if it changed.

TEST_DATA_HOME = "QOLABA_TESTS_DATA_HOME"  # set once the suite has moved the data folder (workers inherit it)
_REAL_DATA: list[tuple[Path, dict[str, tuple[int, int]] | None]] = []


def _snapshot(folder: Path) -> dict[str, tuple[int, int]] | None:
    """Each file under ``folder`` with its size and modification time; None when there is no such folder."""
    if not folder.is_dir():
        return None
    found = {}
    for path in folder.rglob("*"):
        if path.is_file():
            stat = path.stat()
            found[path.relative_to(folder).as_posix()] = (stat.st_size, stat.st_mtime_ns)
    return found


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get(TEST_DATA_HOME):  # an xdist worker: its controller has moved it already
        return
    real = default_data_dir()
    _REAL_DATA.append((real, _snapshot(real)))
    home = tempfile.mkdtemp(prefix="qolaba-tests-home-")
    os.environ.update(
        {
            TEST_DATA_HOME: home,
            "XDG_DATA_HOME": os.path.join(home, "share"),
            "LOCALAPPDATA": os.path.join(home, "AppData", "Local"),
        }
    )
    if sys.platform == "darwin":  # Application Support is found from the home folder alone
        os.environ["HOME"] = home


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if not _REAL_DATA:
        return
    real, before = _REAL_DATA[0]
    if _snapshot(real) != before:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        message = f"the suite changed the user's own data folder {real}: a test wrote outside its temporary folders"
        if reporter is not None:
            reporter.write_line(f"FAILED {message}", red=True, bold=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    shutil.rmtree(os.environ[TEST_DATA_HOME], ignore_errors=True)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session", autouse=True)
def _saved_images_stay_in_tmp(tmp_path_factory: pytest.TempPathFactory) -> None:
    _OUTPUT_DIR.append(str(tmp_path_factory.mktemp("saved-images")))


@pytest.fixture(scope="session")
def shared_sandbox() -> Iterator[SandboxServer]:
    with SandboxServer() as server:
        yield server


@pytest.fixture
def sandbox(shared_sandbox: SandboxServer) -> SandboxServer:
    """The session's sandbox, back at its defaults with empty counters (fast generations)."""
    # plain pictures: a gradient costs nothing to draw, and most tests need an image, not its caption
    shared_sandbox.sandbox.state.config = SandboxConfig(latency=0.5, pictures="plain")
    shared_sandbox.sandbox.state.reset()
    return shared_sandbox


def server_env(base_url: str, **extra: str | None) -> dict[str, str]:
    """The environment for a qolaba-mcp subprocess: this one's, minus any QOLABA_* settings, plus these."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("QOLABA_")}
    env.update(
        QOLABA_API_BASE_URL=base_url,
        QOLABA_API_KEY=SERVER_KEY,
        QOLABA_MAX_WAIT_SECONDS="30",
        QOLABA_POLL_MAX_INTERVAL="0.5",
        QOLABA_OUTPUT_DIR=_OUTPUT_DIR[0],
        QOLABA_LEDGER_URL="sqlite:///:memory:",  # each server its own: tests never share generations
        QOLABA_JOIN_WINDOW_SECONDS="0",  # and each call is its own generation, unless a test is about joining
    )
    for key, value in extra.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class HttpServer:
    """``qolaba-mcp --transport http`` in a subprocess on a free loopback port."""

    def __init__(self, env: dict[str, str], *args: str, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}/mcp"
        # Files, not pipes: a chatty server must never block on a full pipe nobody reads.
        self._out, self._err = tempfile.TemporaryFile(), tempfile.TemporaryFile()  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "qolaba_mcp", "--transport", "http", "--port", str(self.port), *args],
            env=env,
            stdout=self._out,
            stderr=self._err,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the HTTP server exited: {self.stop()[1]}")
            try:
                httpx2.get(f"http://127.0.0.1:{self.port}/", timeout=1)
                return
            except httpx2.TransportError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("the HTTP server did not start in 30 s")

    def stderr(self) -> str:
        """What the running server has written to stderr so far."""
        self._err.seek(0)
        return self._err.read().decode(errors="replace")

    def stop(self) -> tuple[str, str]:
        """Stop the server; its stdout and stderr."""
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        texts = []
        for file in (self._out, self._err):
            file.seek(0)
            texts.append(file.read().decode(errors="replace"))
        return texts[0], texts[1]


@pytest.fixture(scope="session")
def http_server(shared_sandbox: SandboxServer) -> Iterator[HttpServer]:
    server = HttpServer(server_env(shared_sandbox.base_url))
    yield server
    server.stop()


@asynccontextmanager
async def connect(
    transport: str, mode: str, *, base_url: str, http_url: str | None = None, **env: str | None
) -> AsyncIterator[Client]:
    """An SDK Client on qolaba-mcp over a real stdio subprocess or real HTTP."""
    target: Any
    if transport == "stdio":
        target = StdioServerParameters(
            command=sys.executable, args=["-m", "qolaba_mcp"], env=server_env(base_url, **env)
        )
    else:
        target = http_url
    async with Client(target, mode=mode) as client:  # type: ignore[arg-type]
        yield client
