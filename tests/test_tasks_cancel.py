"""A task's cancel and ttl are the ledger's, not a process's: every replica, and a restarted server, sees them, and a
cancelled task stays cancelled while its paid generation is still followed and recorded.

2026-07-28 through the SDK's own Client in this process (a server rebuilt on the same SQLite file is a restart);
2025-11-25 as raw JSON-RPC over real stdio (the SDK client has no 2025 task calls); replicas as real HTTP processes
on the real PostgreSQL the suite starts.
"""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any, ClassVar, Literal

import anyio
import pytest
from mcp import Client
from mcp.client.extension import ClaimContext, ClientExtension, ResultClaim
from mcp.types import CallToolResult, Request, Result
from pydantic import ConfigDict

from qolaba_mcp.sandbox import SandboxServer
from qolaba_mcp.server._task_views import CANCEL_NOTE

from .conftest import HttpServer, memory_server, server_env
from .test_tasks import PROMPT, CreatedTask, Legacy, Modern, TaskIdParams
from .test_tasks_transports import LEGACY, HttpPeer, initialized

WAIT_S = 30.0  # the longest any state here may take to arrive


class Answer(Result):
    model_config = ConfigDict(extra="allow")


class GetTask(Request[TaskIdParams, Literal["tasks/get"]]):
    method: Literal["tasks/get"] = "tasks/get"
    name_param: ClassVar[str | None] = "taskId"


class CancelTask(Request[TaskIdParams, Literal["tasks/cancel"]]):
    method: Literal["tasks/cancel"] = "tasks/cancel"
    name_param: ClassVar[str | None] = "taskId"


class KeptTasks(ClientExtension):
    """Opts in to tasks; the test holds each task itself (``allow_claimed``), so nothing is ever resolved here."""

    identifier = "io.modelcontextprotocol/tasks"

    def claims(self) -> tuple[ResultClaim[Any], ...]:
        return (ResultClaim(result_type="task", model=CreatedTask, resolve=self.resolve),)

    async def resolve(self, created: CreatedTask, ctx: ClaimContext) -> CallToolResult:
        raise AssertionError("the tests take their tasks with allow_claimed")


class Tasks:
    """One 2026-07-28 client on an in-process server: tasks made, got, cancelled."""

    def __init__(self, client: Client) -> None:
        self.client = client

    async def create(self) -> str:
        created = await self.client.session.call_tool("generate_image", PROMPT, allow_claimed=True)
        assert isinstance(created, CreatedTask) and created.status == "working"
        return created.task_id

    async def get(self, task_id: str) -> dict[str, Any]:
        answer = await self.client.session.send_request(GetTask(params=TaskIdParams(task_id=task_id)), Answer)
        return answer.model_dump(by_alias=True, exclude={"meta"})

    async def cancel(self, task_id: str) -> dict[str, Any]:
        answer = await self.client.session.send_request(CancelTask(params=TaskIdParams(task_id=task_id)), Answer)
        return answer.model_dump(by_alias=True, exclude={"meta"})

    async def finished(self, task_id: str) -> dict[str, Any]:
        """get_task (never waiting, so never itself a task) until the generation has ended: its result."""
        deadline = time.monotonic() + WAIT_S
        while True:
            result = await self.client.call_tool("get_task", {"task_id": task_id, "wait_seconds": 0})
            assert result.structured_content is not None
            if result.structured_content["status"] not in ("PENDING", "PROCESSING") or time.monotonic() > deadline:
                return result.structured_content
            await anyio.sleep(0.1)


@asynccontextmanager
async def modern(sandbox: SandboxServer, ledger: Path) -> AsyncIterator[Tasks]:
    """A server in this process on the SQLite ledger at ``ledger``: a new one each time, as after a restart."""
    server = memory_server(sandbox.base_url, QOLABA_LEDGER_URL=f"sqlite:///{ledger}")
    async with Client(server, extensions=[KeptTasks()]) as client:
        yield Tasks(client)


def until(check: Callable[[], Any], *, timeout: float = WAIT_S) -> Any:
    """``check()`` once it is truthy (a state arrived), polled; its last value at the deadline."""
    deadline = time.monotonic() + timeout
    while not (value := check()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return value


def cancelled(task: dict[str, Any]) -> bool:
    return task["status"] == "cancelled" and task["statusMessage"] == CANCEL_NOTE


# -- 2026-07-28 ---------------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_cancel_survives_a_restart(sandbox: SandboxServer, tmp_path: Path) -> None:
    sandbox.sandbox.state.config.latency = 30.0
    async with modern(sandbox, tmp_path / "ledger.db") as first:
        task_id = await first.create()
        working = await first.get(task_id)
        assert working["status"] == "working" and working["ttlMs"] is None  # 2026-07-28 asks for no ttl
        assert await first.cancel(task_id) == {"resultType": "complete"}
    async with modern(sandbox, tmp_path / "ledger.db") as second:
        after = await second.get(task_id)
        assert cancelled(after) and after["ttlMs"] is None


@pytest.mark.anyio
async def test_a_cancelled_task_stays_cancelled_and_its_paid_generation_is_still_recorded(
    sandbox: SandboxServer, tmp_path: Path
) -> None:
    sandbox.sandbox.state.config.latency = 1.5
    async with modern(sandbox, tmp_path / "ledger.db") as tasks:
        task_id = await tasks.create()
        await tasks.cancel(task_id)
        polls = sandbox.sandbox.state.stats()["polls"]
        assert cancelled(await tasks.get(task_id)) and cancelled(await tasks.get(task_id))
        assert sandbox.sandbox.state.stats()["polls"] == polls  # a cancelled task is answered without the API
        finished = await tasks.finished(task_id)  # get_task still follows the generation to its end
        assert finished["status"] == "SUCCESS" and finished["images"] and finished["task_id"] == task_id
        after = await tasks.get(task_id)
        assert cancelled(after) and "result" not in after
        listed = await tasks.client.call_tool("list_generations", {})
        assert listed.structured_content is not None
        (row,) = [row for row in listed.structured_content["generations"] if row["task_id"] == task_id]
        assert row["status"] == "SUCCESS" and row["images"] == len(finished["images"])  # the paid result is kept
    async with modern(sandbox, tmp_path / "ledger.db") as restarted:
        assert cancelled(await restarted.get(task_id))


@pytest.mark.anyio
async def test_cancelling_a_completed_task_is_acknowledged_and_changes_nothing(
    sandbox: SandboxServer, tmp_path: Path
) -> None:
    sandbox.sandbox.state.config.latency = 0.5
    async with modern(sandbox, tmp_path / "ledger.db") as tasks:
        task_id = await tasks.create()
        assert (await tasks.finished(task_id))["status"] == "SUCCESS"
        done = await tasks.get(task_id)
        assert done["status"] == "completed"
        assert await tasks.cancel(task_id) == {"resultType": "complete"}
        again = await tasks.get(task_id)
        assert again["status"] == "completed" and again["result"] == done["result"]


# -- replicas on one PostgreSQL, and callers, over real HTTP --------------------------------------------------------


def test_a_cancel_on_one_replica_is_seen_by_another(sandbox: SandboxServer, postgres_url: str) -> None:
    env = server_env(sandbox.base_url, QOLABA_LEDGER_URL=postgres_url)
    sandbox.sandbox.state.config.latency = 2.0
    one, two = HttpServer(env), HttpServer(env)
    try:
        created = Modern(one).request("tools/call", {"name": "generate_image", "arguments": PROMPT})["result"]
        task_id = created["taskId"]
        assert Modern(one).request("tasks/cancel", {"taskId": task_id})["result"]["resultType"] == "complete"
        assert cancelled(Modern(two).request("tasks/get", {"taskId": task_id})["result"])

        # The generation ends (get_task on the other replica follows it there); both replicas still say cancelled.
        def finished() -> bool:
            call = {"name": "get_task", "arguments": {"task_id": task_id, "wait_seconds": 0}}
            answer = Modern(two).request("tools/call", call, tasks=False)["result"]
            return bool(answer["structuredContent"]["status"] == "SUCCESS")

        assert until(finished)
        for replica in (one, two):
            assert cancelled(Modern(replica).request("tasks/get", {"taskId": task_id})["result"])
    finally:
        one.stop()
        two.stop()


def test_another_callers_cancel_is_not_found_and_cancels_nothing(sandbox: SandboxServer, tmp_path: Path) -> None:
    env = server_env(sandbox.base_url, QOLABA_LEDGER_URL=f"sqlite:///{tmp_path}/ledger.db")
    http = HttpServer(env, "--allow-client-keys")
    try:
        mine, theirs = Modern(http, **{"X-Qolaba-Api-Key": "key-one"}), Modern(http, **{"X-Qolaba-Api-Key": "key-two"})
        sandbox.sandbox.state.config.latency = 30.0
        task_id = mine.request("tools/call", {"name": "generate_image", "arguments": PROMPT})["result"]["taskId"]
        error = theirs.request("tasks/cancel", {"taskId": task_id})["error"]
        assert error["code"] == -32602 and "Task not found" in error["message"]
        assert mine.request("tasks/get", {"taskId": task_id})["result"]["status"] == "working"
    finally:
        http.stop()


# -- 2025-11-25 ---------------------------------------------------------------------------------------------------


@contextmanager
def legacy(sandbox: SandboxServer, ledger: Path) -> Iterator[Legacy]:
    """A 2025-11-25 stdio server on the SQLite ledger at ``ledger``, initialized with tasks."""
    client = Legacy(server_env(sandbox.base_url, QOLABA_LEDGER_URL=f"sqlite:///{ledger}"))
    try:
        hello = {
            "protocolVersion": "2025-11-25",
            "capabilities": {"tasks": {}},
            "clientInfo": {"name": "t", "version": "1"},
        }
        assert client.request("initialize", hello)["result"]["capabilities"]["tasks"]["cancel"] == {}
        client.notify("notifications/initialized")
        yield client
    finally:
        client.close()


def legacy_task(client: Legacy, **task: int) -> dict[str, Any]:
    answer = client.request("tools/call", {"name": "generate_image", "arguments": PROMPT, "task": task})
    return dict(answer["result"]["task"])


def test_legacy_cancel_answers_the_cancelled_task_and_a_second_cancel_is_refused(
    sandbox: SandboxServer, tmp_path: Path
) -> None:
    sandbox.sandbox.state.config.latency = 30.0
    with legacy(sandbox, tmp_path / "ledger.db") as client:
        task_id = legacy_task(client)["taskId"]
        answer = client.request("tasks/cancel", {"taskId": task_id})["result"]
        assert cancelled(answer) and answer["taskId"] == task_id
        error = client.request("tasks/cancel", {"taskId": task_id})["error"]
        assert error["code"] == -32602 and "already cancelled" in error["message"]
        assert [task["status"] for task in client.request("tasks/list", {})["result"]["tasks"]] == ["cancelled"]
        result = client.request("tasks/result", {"taskId": task_id})["result"]
        assert result["isError"] and CANCEL_NOTE in result["content"][0]["text"]
        assert result["_meta"]["io.modelcontextprotocol/related-task"] == {"taskId": task_id}
    with legacy(sandbox, tmp_path / "ledger.db") as restarted:
        assert cancelled(restarted.request("tasks/get", {"taskId": task_id})["result"])
        assert cancelled(restarted.request("tasks/list", {})["result"]["tasks"][0])


def test_legacy_cancel_of_a_completed_task_is_invalid_params_and_changes_nothing(
    sandbox: SandboxServer, tmp_path: Path
) -> None:
    sandbox.sandbox.state.config.latency = 0.5
    with legacy(sandbox, tmp_path / "ledger.db") as client:
        task_id = legacy_task(client)["taskId"]
        assert client.request("tasks/result", {"taskId": task_id})["result"]["structuredContent"]["status"] == "SUCCESS"
        error = client.request("tasks/cancel", {"taskId": task_id})["error"]
        assert error["code"] == -32602 and "already completed" in error["message"] and task_id in error["message"]
        assert client.request("tasks/get", {"taskId": task_id})["result"]["status"] == "completed"


def test_legacy_ttl_is_kept_and_reported_after_a_restart(sandbox: SandboxServer, tmp_path: Path) -> None:
    sandbox.sandbox.state.config.latency = 30.0
    with legacy(sandbox, tmp_path / "ledger.db") as client:
        asked = legacy_task(client, ttl=60000)
        assert asked["ttl"] == 60000
        plain = legacy_task(client)  # asked for none: kept without limit
        assert plain["ttl"] is None
    with legacy(sandbox, tmp_path / "ledger.db") as restarted:
        assert restarted.request("tasks/get", {"taskId": asked["taskId"]})["result"]["ttl"] == 60000
        assert restarted.request("tasks/get", {"taskId": plain["taskId"]})["result"]["ttl"] is None
        listed = {task["taskId"]: task["ttl"] for task in restarted.request("tasks/list", {})["result"]["tasks"]}
        assert listed == {asked["taskId"]: 60000, plain["taskId"]: None}


def test_a_waiting_tasks_result_ends_soon_after_a_cancel_from_another_replica(
    sandbox: SandboxServer, postgres_url: str
) -> None:
    """tasks/result waits in slices and looks at the ledger between them: a cancel made on another replica ends it
    long before its 30 s wait (QOLABA_MAX_WAIT_SECONDS in the tests) or the generation (120 s) would have."""
    sandbox.sandbox.state.config.latency = 120.0
    env = server_env(sandbox.base_url, QOLABA_LEDGER_URL=postgres_url)
    one, two = HttpServer(env, "--stateless"), HttpServer(env, "--stateless")
    try:
        waiter, canceller = initialized(HttpPeer(one, LEGACY)), initialized(HttpPeer(two, LEGACY))
        created = waiter.request("tools/call", {"name": "generate_image", "arguments": PROMPT, "task": {}})["result"]
        task_id = created["task"]["taskId"]
        answers: list[dict[str, Any]] = []
        polls = sandbox.sandbox.state.stats()["polls"]
        thread = threading.Thread(target=lambda: answers.append(waiter.request("tasks/result", {"taskId": task_id})))
        thread.start()
        deadline = time.monotonic() + 30
        while sandbox.sandbox.state.stats()["polls"] == polls:  # tasks/result is waiting: it polls the API
            assert time.monotonic() < deadline, "tasks/result never started waiting"
            time.sleep(0.05)
        cancelled_at = time.monotonic()
        assert cancelled(canceller.request("tasks/cancel", {"taskId": task_id})["result"])
        thread.join(timeout=60)
        ended_after = time.monotonic() - cancelled_at
        (answer,) = answers
        result = answer["result"]
        assert result["isError"] and CANCEL_NOTE in result["content"][0]["text"]
        assert ended_after < 20, f"tasks/result ended {ended_after:.1f} s after the cancel"  # one slice is 5 s
    finally:
        one.stop()
        two.stop()
