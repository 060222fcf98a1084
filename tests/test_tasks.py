"""MCP Tasks on the wire, in both eras: 2026-07-28 (the tasks extension) over real HTTP, 2025-11-25 over real stdio."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar, Literal

import anyio
import httpx2
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.context import ClientRequestContext
from mcp.client.extension import ClaimContext, ClientExtension, ResultClaim
from mcp.types import CallToolResult, ElicitRequestParams, ElicitResult, Request, RequestParams, Result
from pydantic import ConfigDict

from qolaba_mcp.sandbox import SandboxServer

from .conftest import HttpServer, server_env

HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
MODERN = "2026-07-28"
TASKS = "io.modelcontextprotocol/tasks"
PROMPT = {"model": "vertex/imagen-4-fast", "prompt": "a lighthouse at dusk"}
WIRE: list[str] = []  # the exchanges, printed with -s for the docs


def _meta(*, tasks: bool) -> dict[str, Any]:
    caps: dict[str, Any] = {"extensions": {TASKS: {}}} if tasks else {}
    return {
        "io.modelcontextprotocol/protocolVersion": MODERN,
        "io.modelcontextprotocol/clientInfo": {"name": "test", "version": "1"},
        "io.modelcontextprotocol/clientCapabilities": caps,
    }


class Modern:
    """Raw 2026-07-28 JSON-RPC over HTTP POSTs."""

    def __init__(self, server: HttpServer, **headers: str) -> None:
        self.server, self.headers, self.next_id = server, headers, 0

    def request(self, method: str, params: dict[str, Any], *, tasks: bool = True) -> dict[str, Any]:
        self.next_id += 1
        body = {
            "jsonrpc": "2.0",
            "id": self.next_id,
            "method": method,
            "params": {**params, "_meta": _meta(tasks=tasks)},
        }
        name = params.get("name") or params.get("taskId") or ""
        headers = {**HEADERS, "MCP-Protocol-Version": MODERN, "Mcp-Method": method, "Mcp-Name": str(name)}
        response = httpx2.post(self.server.url, json=body, headers={**headers, **self.headers}, timeout=30)
        text = response.text
        if text.startswith("event:") or "\ndata:" in text or text.startswith("data:"):
            text = [line[5:] for line in text.splitlines() if line.startswith("data:")][-1]
        answer = json.loads(text)
        WIRE.append(f"--> {json.dumps(body)}\n<-- {json.dumps(answer)}")
        return answer


@pytest.fixture
def server(sandbox: SandboxServer, tmp_path: Any) -> Iterator[HttpServer]:
    http = HttpServer(server_env(sandbox.base_url, QOLABA_LEDGER_URL=f"sqlite:///{tmp_path}/ledger.db"))
    yield http
    http.stop()


def _poll(client: Modern, task_id: str, *, timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        answer = client.request("tasks/get", {"taskId": task_id})["result"]
        if answer["status"] != "working" or time.monotonic() > deadline:
            return answer
        time.sleep(answer["pollIntervalMs"] / 1000)


def test_modern_task_life(server: HttpServer, sandbox: SandboxServer) -> None:
    sandbox.sandbox.state.config.latency = 2.0
    client = Modern(server)
    created = client.request("tools/call", {"name": "generate_image", "arguments": PROMPT})["result"]
    assert created["resultType"] == "task" and created["status"] == "working"
    assert created["pollIntervalMs"] >= 1000 and "ttlMs" in created
    working = client.request("tasks/get", {"taskId": created["taskId"]})["result"]
    assert working["resultType"] == "complete" and working["status"] in ("working", "completed")
    done = _poll(client, created["taskId"])
    assert done["status"] == "completed"
    assert done["result"]["structuredContent"]["status"] == "SUCCESS" and not done["result"].get("isError")
    assert done["result"]["structuredContent"]["task_id"] == created["taskId"]


def test_modern_without_opt_in_is_unchanged(server: HttpServer) -> None:
    client = Modern(server)
    answer = client.request("tools/call", {"name": "generate_image", "arguments": PROMPT}, tasks=False)["result"]
    assert answer.get("resultType") == "complete" and answer["structuredContent"]["status"] == "SUCCESS"


def test_modern_bad_ids_cancel_and_update(server: HttpServer, sandbox: SandboxServer) -> None:
    sandbox.sandbox.state.config.latency = 5.0
    client = Modern(server)
    for method in ("tasks/get", "tasks/cancel", "tasks/update"):
        error = client.request(method, {"taskId": "no-such-task", "inputResponses": {}})["error"]
        assert error["code"] == -32602 and "not found" in error["message"]
    error = client.request("tasks/get", {})["error"]
    assert error["code"] == -32602
    for method in ("tasks/get", "tasks/cancel", "tasks/update"):  # a request that did not declare the extension
        error = client.request(method, {"taskId": "no-such-task", "inputResponses": {}}, tasks=False)["error"]
        assert error["code"] == -32021 and error["data"]["requiredCapabilities"]["extensions"] == {TASKS: {}}
    created = client.request("tools/call", {"name": "generate_image", "arguments": PROMPT})["result"]
    update = client.request("tasks/update", {"taskId": created["taskId"], "inputResponses": {"never": {}}})
    assert update["result"]["resultType"] == "complete"
    assert client.request("tasks/cancel", {"taskId": created["taskId"]})["result"]["resultType"] == "complete"
    cancelled = client.request("tasks/get", {"taskId": created["taskId"]})["result"]
    assert cancelled["status"] == "cancelled" and "may still finish and be charged" in cancelled["statusMessage"]
    assert sandbox.sandbox.state.stats()["submit_requests"] == 1  # bad input never submitted anything


def test_polling_faster_than_asked_is_answered_without_asking_the_api(
    server: HttpServer, sandbox: SandboxServer
) -> None:
    sandbox.sandbox.state.config.latency = 30.0
    client = Modern(server)
    created = client.request("tools/call", {"name": "generate_image", "arguments": PROMPT})["result"]
    first = client.request("tasks/get", {"taskId": created["taskId"]})["result"]
    polls = sandbox.sandbox.state.stats()["polls"]
    again = [client.request("tasks/get", {"taskId": created["taskId"]})["result"] for _ in range(5)]
    assert all(state == first for state in again) and first["pollIntervalMs"] >= 1000
    assert sandbox.sandbox.state.stats()["polls"] == polls and sandbox.sandbox.state.stats()["submit_requests"] == 1


def test_another_callers_task_is_not_found(sandbox: SandboxServer, tmp_path: Any) -> None:
    env = server_env(sandbox.base_url, QOLABA_LEDGER_URL=f"sqlite:///{tmp_path}/ledger.db")
    http = HttpServer(env, "--allow-client-keys")
    try:
        mine, theirs = Modern(http, **{"X-Qolaba-Api-Key": "key-one"}), Modern(http, **{"X-Qolaba-Api-Key": "key-two"})
        sandbox.sandbox.state.config.latency = 3.0
        created = mine.request("tools/call", {"name": "generate_image", "arguments": PROMPT})["result"]
        for method in ("tasks/get", "tasks/cancel", "tasks/update"):
            error = theirs.request(method, {"taskId": created["taskId"], "inputResponses": {}})["error"]
            assert error["code"] == -32602 and "Task not found" in error["message"]
        assert mine.request("tasks/get", {"taskId": created["taskId"]})["result"]["taskId"] == created["taskId"]
    finally:
        http.stop()


def test_identical_opted_in_calls_join_one_task(sandbox: SandboxServer, tmp_path: Any) -> None:
    env = server_env(sandbox.base_url, QOLABA_LEDGER_URL=f"sqlite:///{tmp_path}/l.db", QOLABA_JOIN_WINDOW_SECONDS="600")
    http = HttpServer(env)
    try:
        sandbox.sandbox.state.config.latency = 3.0
        client = Modern(http)
        first = client.request("tools/call", {"name": "generate_image", "arguments": PROMPT})["result"]
        second = client.request("tools/call", {"name": "generate_image", "arguments": PROMPT})["result"]
        assert first["resultType"] == second["resultType"] == "task" and first["taskId"] == second["taskId"]
        assert _poll(client, first["taskId"])["status"] == "completed"
    finally:
        http.stop()


def test_a_task_survives_kill_9(sandbox: SandboxServer, tmp_path: Any) -> None:
    """SQLite: the process dies mid-task; the next one resumes following it on the next tasks/get."""
    env = server_env(sandbox.base_url, QOLABA_LEDGER_URL=f"sqlite:///{tmp_path}/ledger.db")
    sandbox.sandbox.state.config.latency = 2.0
    first = HttpServer(env)
    created = Modern(first).request("tools/call", {"name": "generate_image", "arguments": PROMPT})["result"]
    first.proc.kill()  # SIGKILL: no lifespan, no goodbye
    first.stop()
    second = HttpServer(env)
    try:
        done = _poll(Modern(second), created["taskId"])
        assert done["status"] == "completed" and done["result"]["structuredContent"]["status"] == "SUCCESS"
    finally:
        second.stop()


def test_any_replica_answers_a_task(sandbox: SandboxServer, postgres_url: str) -> None:
    """PostgreSQL shared by two stateless replicas: created on one, polled to the end on the other."""
    env = server_env(sandbox.base_url, QOLABA_LEDGER_URL=postgres_url)
    sandbox.sandbox.state.config.latency = 2.0
    one, two = HttpServer(env), HttpServer(env)
    try:
        created = Modern(one).request("tools/call", {"name": "generate_image", "arguments": PROMPT})["result"]
        assert Modern(two).request("tasks/get", {"taskId": created["taskId"]})["result"]["taskId"] == created["taskId"]
        done = _poll(Modern(two), created["taskId"])
        assert done["status"] == "completed" and done["result"]["structuredContent"]["status"] == "SUCCESS"
        again = Modern(one).request("tasks/get", {"taskId": created["taskId"]})["result"]
        assert again["status"] == "completed" and again["result"] == done["result"]
    finally:
        one.stop()
        two.stop()


class Legacy:
    """Raw 2025-11-25 JSON-RPC over a real stdio subprocess."""

    def __init__(self, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "qolaba_mcp"], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        self.next_id = 0
        self.notifications: list[dict[str, Any]] = []

    def request(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        self.next_id += 1
        body = {"jsonrpc": "2.0", "id": self.next_id, "method": method, "params": params}
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(body) + "\n")
        self.proc.stdin.flush()
        while True:
            answer = json.loads(self.proc.stdout.readline())
            if "id" not in answer:
                self.notifications.append(answer)
            if answer.get("id") == self.next_id:
                WIRE.append(f"--> {json.dumps(body)}\n<-- {json.dumps(answer)}")
                return answer

    def notify(self, method: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"jsonrpc": "2.0", "method": method}) + "\n")
        self.proc.stdin.flush()

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=10)


@pytest.fixture
def legacy(sandbox: SandboxServer, tmp_path: Any) -> Iterator[Legacy]:
    client = Legacy(server_env(sandbox.base_url, QOLABA_LEDGER_URL=f"sqlite:///{tmp_path}/ledger.db"))
    init = client.request(
        "initialize",
        {"protocolVersion": "2025-11-25", "capabilities": {"tasks": {}}, "clientInfo": {"name": "t", "version": "1"}},
    )["result"]
    assert init["capabilities"]["tasks"] == {"list": {}, "cancel": {}, "requests": {"tools": {"call": {}}}}
    client.notify("notifications/initialized")
    yield client
    client.close()


def test_legacy_task_life(legacy: Legacy, sandbox: SandboxServer) -> None:
    sandbox.sandbox.state.config.latency = 2.0
    listed = legacy.request("tools/list", {})["result"]["tools"]
    assert len(json.dumps(listed, separators=(",", ":")).encode()) <= 8 * 1024  # execution fits in the budget
    tools = {tool["name"]: tool for tool in listed}
    assert tools["generate_image"]["execution"] == {"taskSupport": "optional"}
    assert "execution" not in tools["list_models"]
    call = {"name": "generate_image", "arguments": PROMPT, "task": {"ttl": 60000}}
    task = legacy.request("tools/call", call)["result"]["task"]
    assert task["status"] == "working" and task["pollInterval"] >= 1000
    got = legacy.request("tasks/get", {"taskId": task["taskId"]})["result"]
    assert got["taskId"] == task["taskId"] and "result" not in got
    listed = legacy.request("tasks/list", {})["result"]["tasks"]
    assert listed[0]["taskId"] == task["taskId"]
    legacy.notifications.clear()
    result = legacy.request("tasks/result", {"taskId": task["taskId"], "_meta": {"progressToken": "p1"}})["result"]
    related = {"io.modelcontextprotocol/related-task": {"taskId": task["taskId"]}}
    progress = [n["params"] for n in legacy.notifications if n["method"] == "notifications/progress"]
    print("NOTES", legacy.notifications)
    assert progress and all(p["progressToken"] == "p1" and p["_meta"] == related for p in progress)
    status = [n["params"] for n in legacy.notifications if n["method"] == "notifications/tasks/status"]
    assert status and status[-1]["status"] == "completed" and status[-1]["taskId"] == task["taskId"]
    assert result["structuredContent"]["status"] == "SUCCESS"
    assert result["_meta"]["io.modelcontextprotocol/related-task"] == {"taskId": task["taskId"]}
    assert legacy.request("tasks/get", {"taskId": task["taskId"]})["result"]["status"] == "completed"


def test_legacy_bad_input(legacy: Legacy) -> None:
    for bad in ({"ttl": "soon"}, {"ttl": -1}, "task", {"ttl": 1, "extra": 2}):
        error = legacy.request("tools/call", {"name": "generate_image", "arguments": PROMPT, "task": bad})["error"]
        assert error["code"] == -32602
    assert legacy.request("tasks/get", {"taskId": "nope"})["error"]["code"] == -32602
    assert legacy.request("tasks/result", {"taskId": "nope"})["error"]["code"] == -32602
    assert legacy.request("tasks/list", {})["result"]["tasks"] == []  # nothing was submitted


def test_print_wire() -> None:
    """Run last with -s to see one task's exchange in each era."""
    for line in WIRE:
        print(line)


# -- the SDK's own client, with a tasks extension of its own: semantics, spend confirmation ------------------------


class CreatedTask(Result):
    model_config = ConfigDict(extra="allow")
    result_type: Literal["task"] = "task"
    task_id: str
    status: str
    poll_interval_ms: int | None = None


class TaskState(Result):
    model_config = ConfigDict(extra="allow")
    task_id: str
    status: str
    status_message: str | None = None
    poll_interval_ms: int | None = None
    result: dict[str, Any] | None = None


class TaskIdParams(RequestParams):
    task_id: str


class GetTask(Request[TaskIdParams, Literal["tasks/get"]]):
    method: Literal["tasks/get"] = "tasks/get"
    name_param: ClassVar[str | None] = "taskId"


class PollingTasks(ClientExtension):
    """Takes a task, polls tasks/get at the suggested pace to the end, and keeps what it saw."""

    identifier = TASKS

    def __init__(self) -> None:
        self.created: list[CreatedTask] = []
        self.states: list[TaskState] = []

    def claims(self) -> Sequence[ResultClaim[Any]]:
        return (ResultClaim(result_type="task", model=CreatedTask, resolve=self.resolve),)

    async def resolve(self, created: CreatedTask, ctx: ClaimContext) -> CallToolResult:
        self.created.append(created)
        while True:
            state = await ctx.session.send_request(GetTask(params=TaskIdParams(task_id=created.task_id)), TaskState)
            self.states.append(state)
            if state.status != "working":
                assert state.result is not None
                return CallToolResult.model_validate(state.result)
            await anyio.sleep((state.poll_interval_ms or 1000) / 1000)


@pytest.mark.anyio
@pytest.mark.parametrize("action", ["accept", "decline"])
async def test_confirmation_is_resolved_before_the_task(sandbox: SandboxServer, tmp_path: Any, action: str) -> None:
    """Above the threshold the user is asked first (input_required); a decline submits nothing and makes no task."""
    tasks = PollingTasks()
    questions: list[ElicitRequestParams] = []

    async def asker(context: ClientRequestContext, params: ElicitRequestParams) -> ElicitResult:
        questions.append(params)
        return (
            ElicitResult(action="accept", content={"approve": True})
            if action == "accept"
            else ElicitResult(action="decline")
        )

    env = server_env(
        sandbox.base_url, QOLABA_LEDGER_URL=f"sqlite:///{tmp_path}/l.db", QOLABA_CONFIRM_ABOVE_USD="0.000001"
    )
    target = StdioServerParameters(command=sys.executable, args=["-m", "qolaba_mcp"], env=env)
    async with Client(target, extensions=[tasks], elicitation_callback=asker) as client:
        assert client.protocol_version == MODERN
        result = await client.call_tool("generate_image", PROMPT)
    assert len(questions) == 1
    submissions = int(sandbox.sandbox.state.stats()["submit_requests"])
    if action == "accept":
        assert len(tasks.created) == 1 and tasks.states[-1].status == "completed"
        assert result.structured_content is not None and result.structured_content["status"] == "SUCCESS"
        assert submissions == 1
        working = [state for state in tasks.states if state.status == "working"]
        assert all(state.status_message and "elapsed" in state.status_message for state in working)
    else:
        assert result.is_error and tasks.created == [] and submissions == 0


@pytest.mark.anyio
async def test_a_client_without_the_extension_sees_todays_result(sandbox: SandboxServer, tmp_path: Any) -> None:
    env = server_env(sandbox.base_url, QOLABA_LEDGER_URL=f"sqlite:///{tmp_path}/l.db")
    async with Client(StdioServerParameters(command=sys.executable, args=["-m", "qolaba_mcp"], env=env)) as client:
        result = await client.call_tool("generate_image", PROMPT)
        tools = await client.list_tools()
        extensions = client.server_capabilities.extensions or {}
    assert result.structured_content is not None and result.structured_content["status"] == "SUCCESS"
    assert all(tool.execution is None for tool in tools.tools)
    assert extensions[TASKS] == {}
