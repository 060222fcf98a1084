"""One task's life in each protocol era over each transport: stdio, stateful HTTP and stateless HTTP.

Raw JSON-RPC, so what is checked is what a host sends and sees: a 2026-07-28 request that declares the tasks
extension (no handshake), and a 2025-11-25 session that asks with ``params.task`` after ``initialize``."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx2
import pytest

from qolaba_mcp.sandbox import SandboxServer

from .conftest import HttpServer, server_env

MODERN, LEGACY = "2026-07-28", "2025-11-25"
TASKS = "io.modelcontextprotocol/tasks"
PROMPT = {"model": "vertex/imagen-4-fast", "prompt": "a harbour at dawn"}
MODERN_META = {
    "io.modelcontextprotocol/protocolVersion": MODERN,
    "io.modelcontextprotocol/clientInfo": {"name": "transports-test", "version": "1"},
    "io.modelcontextprotocol/clientCapabilities": {"extensions": {TASKS: {}}},
}


class Peer:
    """A raw JSON-RPC peer of the server: ``request`` returns the whole response object (result or error)."""

    era: str

    def request(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def notify(self, method: str) -> None:
        raise NotImplementedError

    def call(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        if self.era == MODERN:
            params = {**params, "_meta": {**MODERN_META, **params.get("_meta", {})}}
        return self.request(method, params)


class StdioPeer(Peer):
    def __init__(self, env: dict[str, str], era: str) -> None:
        self.era, self.next_id = era, 0
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "qolaba_mcp"], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )

    def _send(self, body: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(body) + "\n")
        self.proc.stdin.flush()

    def request(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        self.next_id += 1
        self._send({"jsonrpc": "2.0", "id": self.next_id, "method": method, "params": params})
        assert self.proc.stdout is not None
        while True:  # notifications (progress, status) come first; the answer carries our id
            line = self.proc.stdout.readline()
            assert line, "the server closed stdout"
            answer = json.loads(line)
            if answer.get("id") == self.next_id:
                return answer

    def notify(self, method: str) -> None:
        self._send({"jsonrpc": "2.0", "method": method})

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=15)


class HttpPeer(Peer):
    def __init__(self, server: HttpServer, era: str) -> None:
        self.server, self.era, self.next_id = server, era, 0
        self.session: str | None = None

    def _post(self, body: dict[str, Any]) -> httpx2.Response:
        headers = {"Accept": "application/json, text/event-stream", "MCP-Protocol-Version": self.era}
        if self.era == MODERN:
            params = body.get("params") or {}
            headers.update(
                {"Mcp-Method": body["method"], "Mcp-Name": str(params.get("name") or params.get("taskId") or "")}
            )
        if self.session:
            headers["Mcp-Session-Id"] = self.session
        return httpx2.post(self.server.url, json=body, headers=headers, timeout=60)

    def request(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        self.next_id += 1
        response = self._post({"jsonrpc": "2.0", "id": self.next_id, "method": method, "params": params})
        self.session = response.headers.get("mcp-session-id") or self.session
        text = response.text
        if "data:" in text and not text.lstrip().startswith("{"):  # an SSE stream: the answer is its last data line
            answers = [json.loads(line[5:]) for line in text.splitlines() if line.startswith("data:")]
            return next(a for a in reversed(answers) if a.get("id") == self.next_id)
        return json.loads(text)

    def notify(self, method: str) -> None:
        self._post({"jsonrpc": "2.0", "method": method})


TRANSPORTS = ["stdio", "http", "http-stateless"]


@pytest.fixture(
    params=[(era, transport) for era in (MODERN, LEGACY) for transport in TRANSPORTS], ids=lambda p: f"{p[0]}-{p[1]}"
)
def peer(request: pytest.FixtureRequest, sandbox: SandboxServer, tmp_path: Any) -> Iterator[Peer]:
    era, transport = request.param
    sandbox.sandbox.state.config.latency = 0.5  # long enough that the submission answers before the images exist
    env = server_env(sandbox.base_url, QOLABA_LEDGER_URL=f"sqlite:///{tmp_path}/ledger.db")
    if transport == "stdio":
        stdio = StdioPeer(env, era)
        yield initialized(stdio)
        stdio.close()
        return
    http = HttpServer(env, *(["--stateless"] if transport == "http-stateless" else []))
    try:
        yield initialized(HttpPeer(http, era))
    finally:
        http.stop()


def initialized(peer: Peer) -> Peer:
    if peer.era == LEGACY:
        capabilities = {"tasks": {}}
        init = peer.request(
            "initialize",
            {"protocolVersion": LEGACY, "capabilities": capabilities, "clientInfo": {"name": "t", "version": "1"}},
        )
        assert init["result"]["capabilities"]["tasks"]["requests"] == {"tools": {"call": {}}}
        peer.notify("notifications/initialized")
    return peer


def _poll(peer: Peer, task_id: str) -> dict[str, Any]:
    """tasks/get at the suggested interval until the task is no longer working (the sandbox ends it in ~0.5 s)."""
    deadline = time.monotonic() + 30
    while True:
        got = peer.call("tasks/get", {"taskId": task_id})["result"]
        if got["status"] != "working" or time.monotonic() > deadline:
            return got
        time.sleep((got.get("pollIntervalMs") or got.get("pollInterval")) / 1000)


def test_a_task_is_created_polled_and_answered_and_a_plain_call_is_not_one(peer: Peer) -> None:
    if peer.era == MODERN:
        created = peer.call("tools/call", {"name": "generate_image", "arguments": PROMPT})["result"]
        assert created["resultType"] == "task" and created["status"] == "working"
        task_id = created["taskId"]
        done = _poll(peer, task_id)
        assert done["status"] == "completed"
        result = done["result"]
    else:
        created = peer.call("tools/call", {"name": "generate_image", "arguments": PROMPT, "task": {}})["result"]
        task_id = created["task"]["taskId"]
        assert created["task"]["status"] == "working"
        assert _poll(peer, task_id)["status"] == "completed"
        result = peer.call("tasks/result", {"taskId": task_id})["result"]
        assert result["_meta"]["io.modelcontextprotocol/related-task"] == {"taskId": task_id}
        assert task_id in [task["taskId"] for task in peer.call("tasks/list", {})["result"]["tasks"]]
    assert result["structuredContent"]["status"] == "SUCCESS" and result["structuredContent"]["task_id"] == task_id
    assert any(block["type"] == "resource_link" for block in result["content"])
    # the same task through the tool every host has
    same = peer.call("tools/call", {"name": "get_task", "arguments": {"task_id": task_id}})["result"]
    assert same["structuredContent"]["images"] == result["structuredContent"]["images"]
    assert peer.call("tasks/get", {"taskId": "task_0_nothere"})["error"]["code"] == -32602
    # a call that does not ask for a task (2026-07-28: declares nothing) is today's call: the images, no task
    plain: dict[str, Any] = {"name": "generate_image", "arguments": {**PROMPT, "prompt": "a plain call"}}
    if peer.era == MODERN:
        plain["_meta"] = {"io.modelcontextprotocol/clientCapabilities": {}}
    answered = peer.call("tools/call", plain)["result"]
    assert "task" not in answered and answered.get("resultType", "complete") == "complete"
    assert answered["structuredContent"]["status"] == "SUCCESS"
