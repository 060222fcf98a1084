"""The HTTP transport's defences and behaviour, against real server processes on loopback."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from qolaba_mcp.sandbox import SandboxServer

from .conftest import HEADERS, INIT, HttpServer, RawStdio, polls_settle, server_env

TOKEN = "mcp-token-7d1c0a9b"
CAT = {"model": "vertex/nano-banana-flash", "prompt": "A cat", "wait_seconds": 10}


def start_secured(base_url: str) -> HttpServer:
    return HttpServer(
        server_env(base_url, QOLABA_MCP_AUTH_TOKEN=TOKEN, QOLABA_API_KEY="server-key"),
        "--allowed-host",
        "mcp.example.test",
        "--allowed-origin",
        "https://app.example.test",
        "--allow-client-keys",
    )


@pytest.fixture(autouse=True)
def _sandbox_at_its_defaults(sandbox: SandboxServer) -> None:
    """This module's servers use the worker's shared sandbox: each test starts from its defaults, whatever the
    test before it on this worker set (a long latency or a fault there would hold this test's generations)."""


@pytest.fixture(scope="module")
def secured(shared_sandbox: SandboxServer) -> Iterator[HttpServer]:
    """One server for the tests of what it lets in: they only send requests that need no generation."""
    server = start_secured(shared_sandbox.base_url)
    yield server
    server.stop()


def post(server: HttpServer, body: Any, **headers: str) -> httpx2.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx2.post(server.url, content=content, headers={**HEADERS, **headers}, timeout=10)


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        ({"Authorization": "Bearer wrong"}, 401),
        ({"Authorization": TOKEN}, 401),
        ({"Authorization": f"Bearer {TOKEN}x"}, 401),
        ({"Authorization": f"Bearer {TOKEN}"}, 200),
    ],
)
def test_bearer_token(secured: HttpServer, headers: dict[str, str], status: int) -> None:
    response = post(secured, INIT, **headers)
    assert response.status_code == status
    if status == 401:
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert "QOLABA_MCP_AUTH_TOKEN" in response.json()["message"]


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"Host": "evil.example"}, 421),
        ({"Host": "mcp.example.test"}, 200),
        ({"Origin": "https://evil.example"}, 403),
        ({"Origin": "https://app.example.test"}, 200),
        ({"Origin": "http://localhost:3000"}, 200),
    ],
)
def test_host_and_origin_checks(secured: HttpServer, headers: dict[str, str], status: int) -> None:
    assert post(secured, INIT, Authorization=f"Bearer {TOKEN}", **headers).status_code == status


def test_body_size_limit(secured: HttpServer) -> None:
    huge = json.dumps({**INIT, "padding": "x" * (3 * 1024 * 1024)}).encode()
    assert post(secured, huge, Authorization=f"Bearer {TOKEN}").status_code == 413


def test_non_loopback_bind_needs_a_token(sandbox: SandboxServer) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "qolaba_mcp", "--transport", "http", "--host", "0.0.0.0", "--port", "9"],
        env=server_env(sandbox.base_url),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert "QOLABA_MCP_AUTH_TOKEN" in done.stderr and "--insecure-no-auth" in done.stderr


async def _call_with(url: str, headers: dict[str, str], arguments: dict[str, Any]) -> Any:
    http = httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30, read=60))
    async with http, Client(streamable_http_client(url, http_client=http)) as client:
        return await client.call_tool("generate_image", arguments)


@pytest.mark.anyio
async def test_per_request_keys_stay_with_their_request(sandbox: SandboxServer) -> None:
    sandbox.configure(latency=0.5, api_keys=["alice-key"])
    secured = start_secured(sandbox.base_url)  # its own: its log is read once it has stopped
    auth = {"Authorization": f"Bearer {TOKEN}"}
    results: dict[str, Any] = {}

    async def run(name: str, headers: dict[str, str]) -> None:
        results[name] = await _call_with(secured.url, {**auth, **headers}, {**CAT, "prompt": name})

    try:
        async with anyio.create_task_group() as group:
            group.start_soon(run, "alice", {"X-Qolaba-Api-Key": "alice-key"})
            group.start_soon(run, "bob", {"X-Qolaba-Api-Key": "bob-key"})
            group.start_soon(run, "nobody", {})
    finally:
        _, err = secured.stop()
    assert not results["alice"].is_error
    assert results["bob"].is_error and "401" in results["bob"].content[0].text
    assert results["nobody"].is_error and "401" in results["nobody"].content[0].text  # the server's key is refused
    assert "alice-key" not in err and "bob-key" not in err


@pytest.mark.anyio
async def test_client_keys_are_refused_unless_enabled(sandbox: SandboxServer, http_server: HttpServer) -> None:
    result = await _call_with(http_server.url, {"X-Qolaba-Api-Key": "k"}, CAT)
    assert result.is_error and "QOLABA_MCP_ALLOW_CLIENT_KEYS" in result.content[0].text
    assert sandbox.stats()["submit_requests"] == 0


@pytest.mark.anyio
async def test_stateless_replicas_share_nothing_but_the_api(sandbox: SandboxServer) -> None:
    sandbox.configure(latency=1.0)
    first = HttpServer(server_env(sandbox.base_url), "--stateless")
    second = HttpServer(server_env(sandbox.base_url), "--stateless")
    try:
        async with Client(first.url) as client:
            started = await client.call_tool("generate_image", {**CAT, "wait_seconds": 0})
        task_id = started.structured_content["task_id"]  # type: ignore[index]
        async with Client(second.url, mode="legacy") as client:
            finished = await client.call_tool("get_task", {"task_id": task_id, "wait_seconds": 10})
    finally:
        first.stop()
        second.stop()
    assert finished.structured_content["status"] == "SUCCESS"  # type: ignore[index]
    assert sandbox.stats()["submissions"] == 1


@pytest.mark.anyio
async def test_a_stateless_replica_sends_mode_sync_as_async_so_any_replica_can_finish_it(
    sandbox: SandboxServer,
) -> None:
    """A synchronous request's answer reaches only the process holding it: a replica that dies with it loses a paid
    result. Stateless replicas submit mode "sync" in async mode, so it has a task id another replica can follow."""
    sandbox.configure(latency=1.0)
    first = HttpServer(server_env(sandbox.base_url), "--stateless")
    second = HttpServer(server_env(sandbox.base_url), "--stateless")
    try:
        async with Client(first.url) as client:
            started = await client.call_tool("generate_image", {**CAT, "mode": "sync", "wait_seconds": 0})
        task_id = started.structured_content["task_id"]  # type: ignore[index]
        assert not task_id.startswith("sync-"), task_id
        async with Client(second.url) as client:
            finished = await client.call_tool("get_task", {"task_id": task_id, "wait_seconds": 10})
    finally:
        first.stop()
        second.stop()
    assert finished.structured_content["status"] == "SUCCESS"  # type: ignore[index]
    assert sandbox.stats()["submissions"] == 1


def _polls_after_close(sandbox: SandboxServer, close: Any) -> tuple[int, int | None]:
    """Poll counts when the client vanishes, and once they have settled (None: polling never stopped)."""
    deadline = time.monotonic() + 10
    while sandbox.stats()["polls"] < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    close()
    return sandbox.stats()["polls"], polls_settle(sandbox)


def test_stdio_server_stops_polling_and_exits_when_stdin_closes(sandbox: SandboxServer) -> None:
    sandbox.configure(latency=60)
    server = RawStdio(server_env(sandbox.base_url), stderr=subprocess.PIPE)
    proc = server.proc
    server.send_call("generate_image", CAT)
    closed_at = 0.0

    def close() -> None:
        nonlocal closed_at
        closed_at = time.monotonic()
        proc.stdin.close()  # type: ignore[union-attr]

    at_close, settled = _polls_after_close(sandbox, close)
    code = proc.wait(10)
    assert code == 0, proc.stderr.read().decode()  # type: ignore[union-attr]
    assert settled is not None and settled <= at_close + 1, (at_close, settled)  # at most the poll under way


@pytest.mark.parametrize("stateless", [False, True], ids=["stateful", "stateless"])
def test_http_polling_stops_when_the_response_stream_closes(sandbox: SandboxServer, stateless: bool) -> None:
    sandbox.configure(latency=60)
    server = HttpServer(server_env(sandbox.base_url), *(["--stateless"] if stateless else []))
    try:
        with httpx2.Client(headers=HEADERS, timeout=10) as http:
            init = http.post(server.url, json=INIT)
            session = {"mcp-session-id": init.headers["mcp-session-id"]} if not stateless else {}
            http.post(server.url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=session)
            call = {
                "jsonrpc": "2.0",
                "id": 2,
                "method": "tools/call",
                "params": {"name": "generate_image", "arguments": CAT, "_meta": {"progressToken": 1}},
            }
            with http.stream("POST", server.url, json=call, headers=session) as response:
                assert response.status_code == 200
                lines = response.iter_lines()
                while "notifications/progress" not in next(lines):
                    pass
                at_close, settled = _polls_after_close(sandbox, response.close)
    finally:
        server.stop()
    assert settled is not None and settled <= at_close + 1, (at_close, settled)  # at most the poll under way
