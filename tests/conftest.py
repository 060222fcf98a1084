from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp import Client, StdioServerParameters
from mcp.server.mcpserver import MCPServer

from qolaba_mcp._config import Settings
from qolaba_mcp.images._delivery import default_data_dir
from qolaba_mcp.sandbox import SandboxConfig, SandboxServer
from qolaba_mcp.server import build_server

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
    config.addinivalue_line(
        "markers", "soak: waits out a production constant over real processes; left to `make soak` (-m soak)"
    )
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


def polls_settle(sandbox: SandboxServer, *, quiet: float = 1.5, within: float = 15) -> int | None:
    """The sandbox's poll count once it has held still for ``quiet`` seconds (three of the 0.5 s longest poll
    interval ``server_env`` sets: a live loop would have polled), or None if it never did within ``within``."""
    deadline = time.monotonic() + within
    count, since = sandbox.stats()["polls"], time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.05)
        now = sandbox.stats()["polls"]
        if now != count:
            count, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return int(count)
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _listening(pid: int, port: int) -> bool:
    """Whether process ``pid`` holds a socket listening on loopback ``port`` (Linux; elsewhere assumed so)."""
    try:
        with open("/proc/net/tcp") as table:
            rows = [line.split() for line in table.readlines()[1:]]
        inodes = {row[9] for row in rows if row[1].endswith(f":{port:04X}") and row[3] == "0A"}
        return any(
            os.readlink(f"/proc/{pid}/fd/{fd}") in {f"socket:[{i}]" for i in inodes}
            for fd in os.listdir(f"/proc/{pid}/fd")
        )
    except FileNotFoundError:
        return sys.platform != "linux"
    except OSError:
        return False


class HttpServer:
    """``qolaba-mcp --transport http`` in a subprocess on a free loopback port.

    Ready once that process itself listens there and answers: a port found free can be taken by another test's
    server before this one binds it (its requests would reach the other server). Then it starts again on another."""

    def __init__(self, env: dict[str, str], *args: str, port: int | None = None) -> None:
        for _ in range(3):
            if self._start(env, args, port):
                return
        raise RuntimeError("the HTTP server could not bind a free port three times")

    def _start(self, env: dict[str, str], args: tuple[str, ...], port: int | None) -> bool:
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
                err = self.stop()[1]
                if "address already in use" in err.lower():
                    return False
                raise RuntimeError(f"the HTTP server exited: {err}")
            if _listening(self.proc.pid, self.port):
                try:
                    httpx2.get(f"http://127.0.0.1:{self.port}/", timeout=1)
                    return True
                except httpx2.TransportError:
                    pass
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


# A raw initialize request over HTTP (the SDK client always negotiates its newest era), and the headers it needs.
INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
}
HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


class RawStdio:
    """``qolaba-mcp`` over stdio driven by raw JSON-RPC lines: for what the SDK client hides (kill -9 mid-call,
    SIGTERM, a client leaving, an old protocol version). Initialized unless ``protocol`` is None."""

    def __init__(self, env: dict[str, str], *, stderr: Any = subprocess.DEVNULL, protocol: str | None = "2025-11-25"):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "qolaba_mcp"], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr
        )
        self._id = 0
        self.hello: dict[str, Any] = {}
        if protocol is not None:
            self.hello = self.request(
                "initialize",
                {"protocolVersion": protocol, "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}},
            )
            self.send({"jsonrpc": "2.0", "method": "notifications/initialized"})

    def send(self, message: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(message) + "\n").encode())
        self.proc.stdin.flush()

    def until(self, wanted: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        """The first message from the server for which ``wanted(message)`` holds."""
        assert self.proc.stdout is not None
        while True:
            line = self.proc.stdout.readline()
            assert line, "the server closed its output"
            if wanted(message := json.loads(line)):
                return dict(message)

    def send_call(self, tool: str, arguments: dict[str, Any], meta: dict[str, Any] | None = None) -> int:
        params: dict[str, Any] = {"name": tool, "arguments": arguments}
        if meta is not None:
            params["_meta"] = meta
        self._id += 1
        self.send({"jsonrpc": "2.0", "id": self._id, "method": "tools/call", "params": params})
        return self._id

    def reply(self, wanted: int) -> dict[str, Any]:
        return dict(self.until(lambda message: message.get("id") == wanted)["result"])

    def request(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        self._id += 1
        self.send({"jsonrpc": "2.0", "id": self._id, "method": method, "params": params})
        return self.reply(self._id)

    def call(self, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
        return self.reply(self.send_call(tool, arguments))

    def kill(self) -> None:
        """kill -9."""
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="session")
def http_server(shared_sandbox: SandboxServer) -> Iterator[HttpServer]:
    server = HttpServer(server_env(shared_sandbox.base_url))
    yield server
    server.stop()


TRANSPORTS = ("memory", "stdio", "http")  # "memory": in this process, for what is not about the transport


def memory_server(base_url: str, **env: str | None) -> MCPServer:
    """qolaba-mcp built in this process as ``qolaba-mcp`` over stdio builds it (saving on by default, local-file
    inputs allowed), with the settings a subprocess would read from ``server_env(base_url, **env)``.

    The one difference: code that reads ``os.environ`` itself (the default data folder) sees this process's
    environment, which the suite has already pointed at a temporary folder."""
    return build_server(Settings.from_env(server_env(base_url, **env)), transport="stdio")


@asynccontextmanager
async def connect(
    transport: str,
    mode: str,
    *,
    base_url: str,
    http_url: str | None = None,
    options: dict[str, Any] | None = None,
    **env: str | None,
) -> AsyncIterator[Client]:
    """An SDK Client on qolaba-mcp: in this process through the SDK's in-memory transport ("memory", for tool
    semantics: a fraction of a second), over a real stdio subprocess ("stdio"), or over real HTTP ("http", the
    server at ``http_url``). ``options`` go to the Client (callbacks, extensions); ``env`` to the server."""
    target: Any
    if transport == "memory":
        target = memory_server(base_url, **env)
    elif transport == "stdio":
        target = StdioServerParameters(
            command=sys.executable, args=["-m", "qolaba_mcp"], env=server_env(base_url, **env)
        )
    elif transport == "http":
        target = http_url
    else:
        raise ValueError(f"unknown transport {transport!r}: one of {TRANSPORTS}")
    async with Client(target, mode=mode, **(options or {})) as client:  # type: ignore[arg-type]
        yield client
