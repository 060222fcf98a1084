"""The HTTP server under abuse and restarts: stalled connections, connection floods, SIGTERM mid-call, auth spelling.

Real ``qolaba-mcp --transport http`` processes and real sockets on 127.0.0.1.
"""

from __future__ import annotations

import json
import signal
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import anyio
import httpx2
import pytest

from qolaba_mcp._http import HEADER_TIMEOUT, MAX_CONNECTIONS, SHUTDOWN_GRACE
from qolaba_mcp.sandbox import SandboxServer

from .conftest import HEADERS, INIT, HttpServer, connect, server_env

TOKEN = "mcp-token-3f9a1c7e"
STALLS = 200


@pytest.fixture(autouse=True)
def _sandbox_at_its_defaults(sandbox: SandboxServer) -> None:
    """This module's servers use the worker's shared sandbox: each test starts from its defaults, whatever the
    test before it on this worker set (a long latency or a fault there would hold this test's generations)."""


@pytest.fixture
def server(shared_sandbox: SandboxServer) -> Iterator[HttpServer]:
    started = HttpServer(server_env(shared_sandbox.base_url))
    yield started
    started.stop()


def initialize(server: HttpServer, **headers: str) -> httpx2.Response:
    return httpx2.post(server.url, content=json.dumps(INIT).encode(), headers={**HEADERS, **headers}, timeout=10)


def opened(server: HttpServer, first_bytes: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    if first_bytes:
        sock.sendall(first_bytes)
    return sock


def read_until_closed(sock: socket.socket, deadline: float) -> bytes | None:
    """All the server sends until it closes the connection; None if it is still open at ``deadline``."""
    received = b""
    while True:
        sock.settimeout(max(deadline - time.monotonic(), 0.01))
        try:
            chunk = sock.recv(4096)
        except TimeoutError:
            return None
        except ConnectionResetError:
            return received
        if not chunk:
            return received
        received += chunk


def test_stalled_connections_are_closed_and_do_not_starve_the_server(server: HttpServer) -> None:
    partials = [
        b"",  # connects and says nothing
        b"POST /mcp HT",  # half a request line
        b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: applic",  # half the headers
    ]
    sent = [partials[i % len(partials)] for i in range(STALLS)]
    stalled = [opened(server, first_bytes) for first_bytes in sent]
    # A slowloris that keeps dribbling bytes, so an idle timer alone would never fire.
    dribbler = opened(server, b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    stop_dribbling = threading.Event()

    def dribble() -> None:
        number = 0
        while not stop_dribbling.wait(0.5):
            number += 1
            try:
                dribbler.sendall(f"X-{number}: y\r\n".encode())
            except OSError:
                return

    dribbling = threading.Thread(target=dribble, daemon=True)
    dribbling.start()
    opened_at = time.monotonic()
    try:
        started = time.monotonic()
        assert initialize(server).status_code == 200
        assert time.monotonic() - started < 5  # promptly, with all of them hanging on

        deadline = opened_at + HEADER_TIMEOUT + 10
        endings = [read_until_closed(sock, deadline) for sock in [*stalled, dribbler]]
        assert all(ending is not None for ending in endings), f"{endings.count(None)} connections still open"
        for first_bytes, ending in zip([*sent, b"dribbled"], endings, strict=True):
            # A partial request is told why it was cut off; a connection that sent nothing is just closed.
            assert ending is not None
            assert ending.startswith(b"HTTP/1.1 408 ") if first_bytes else ending == b"", (first_bytes, ending)
        assert initialize(server).status_code == 200  # and it still serves
    finally:
        stop_dribbling.set()
        dribbling.join()
        for sock in [*stalled, dribbler]:
            sock.close()


def test_connections_over_the_limit_get_a_quick_503(server: HttpServer) -> None:
    # Idle connections up to the limit (the kernel hands them to the server in order, before the next ones).
    held = [opened(server, b"") for _ in range(MAX_CONNECTIONS - 1)]
    try:
        started = time.monotonic()
        # One more is answered and closed at once: it does not sit there until the header deadline.
        with opened(server, b"") as extra:
            ending = read_until_closed(extra, started + HEADER_TIMEOUT / 2)
        assert ending is not None and ending.startswith(b"HTTP/1.1 503 "), ending
        refused = initialize(server)  # a client that sends its request at once reads the answer too
        assert refused.status_code == 503 and "retry" in refused.text
        assert time.monotonic() - started < HEADER_TIMEOUT / 2
        for sock in held[:10]:
            sock.close()
        deadline = time.monotonic() + 10
        while (status := initialize(server).status_code) == 503 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert status == 200  # a limit, not a wedge: freed connections are usable again
    finally:
        for sock in held:
            sock.close()


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("mode", "flags"),
    [("auto", []), ("legacy", []), ("legacy", ["--stateless"])],
    ids=["auto", "legacy-session", "legacy-stateless"],
)
async def test_sigterm_returns_the_task_id_of_a_call_in_flight_and_exits_0(
    sandbox: SandboxServer, mode: str, flags: list[str]
) -> None:
    sandbox.configure(latency=20)
    server = HttpServer(server_env(sandbox.base_url), *flags)
    arguments = {"model": "vertex/nano-banana-flash", "prompt": "A rolling restart", "wait_seconds": 25}
    signalled_at = 0.0

    async def terminate_once_submitted() -> None:
        nonlocal signalled_at
        while (await anyio.to_thread.run_sync(sandbox.stats))["submissions"] < 1:
            await anyio.sleep(0.05)
        while (await anyio.to_thread.run_sync(sandbox.stats))["polls"] < 1:  # well into the wait: it has polled
            await anyio.sleep(0.05)
        signalled_at = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)

    try:
        async with connect("http", mode, base_url=sandbox.base_url, http_url=server.url) as client:
            await client.list_tools()  # as hosts do: the client checks results against the schemas listed here
            async with anyio.create_task_group() as group:
                group.start_soon(terminate_once_submitted)
                with anyio.fail_after(15):  # the generation itself takes 20 s
                    result = await client.call_tool("generate_image", arguments)
            returned_after = time.monotonic() - signalled_at
        code = server.proc.wait(timeout=SHUTDOWN_GRACE + 5)
    finally:
        _, err = server.stop()
    assert not result.is_error, result.content
    data: Any = result.structured_content
    assert data["status"] == "PENDING" and data["task_id"], data
    assert "get_task" in json.dumps(data)  # the next step is named
    assert returned_after < SHUTDOWN_GRACE + 1, returned_after
    assert code == 0, err


@pytest.fixture(scope="module")
def secured(shared_sandbox: SandboxServer) -> Iterator[HttpServer]:
    started = HttpServer(server_env(shared_sandbox.base_url, QOLABA_MCP_AUTH_TOKEN=TOKEN))
    yield started
    started.stop()


@pytest.mark.parametrize(
    ("authorization", "status"),
    [
        (f"Bearer {TOKEN}", 200),
        (f"bearer {TOKEN}", 200),
        (f"BEARER {TOKEN}", 200),
        (f"bEaReR {TOKEN}", 200),
        (f"Bearer    {TOKEN}", 200),
        (f"Bearer \t {TOKEN}", 200),
        (f"Bearer {TOKEN}x", 401),
        (f"Bearer {TOKEN[:-1]}", 401),
        (f"Basic {TOKEN}", 401),
        (f"Bearer{TOKEN}", 401),
        (TOKEN, 401),
        ("Bearer", 401),
        ("", 401),
    ],
)
def test_bearer_scheme_is_case_insensitive(secured: HttpServer, authorization: str, status: int) -> None:
    assert initialize(secured, Authorization=authorization).status_code == status
