"""MCP Tasks, measured through the SDK's Client over stdio (loaded by bench.py, scenario "tasks").

Three figures: the ``tasks/get`` round trip against ``get_task``'s on the same running task; the time to a
``CreateTaskResult`` against the API's own 202 for the same submission; and the polls a client makes per second when
it polls at the suggested ``pollIntervalMs``."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import anyio
import httpx2
from mcp import Client, StdioServerParameters
from mcp.client.extension import ClaimContext, ClientExtension, ResultClaim
from mcp.types import CallToolResult, Request, RequestParams, Result
from pydantic import ConfigDict

TASKS = "io.modelcontextprotocol/tasks"


class Created(Result):
    model_config = ConfigDict(extra="allow")
    result_type: Literal["task"] = "task"
    task_id: str


class State(Result):
    model_config = ConfigDict(extra="allow")
    task_id: str
    status: str
    poll_interval_ms: int | None = None


class TaskIdParams(RequestParams):
    task_id: str


class GetTask(Request[TaskIdParams, Literal["tasks/get"]]):
    method: Literal["tasks/get"] = "tasks/get"
    name_param: ClassVar[str | None] = "taskId"


class Tasks(ClientExtension):
    """Opts in; the bench handles the task itself (allow_claimed), so the resolver is never used."""

    identifier = TASKS

    def claims(self) -> Sequence[ResultClaim[Any]]:
        return (ResultClaim(result_type="task", model=Created, resolve=self.resolve),)

    async def resolve(self, created: Created, ctx: ClaimContext) -> CallToolResult:
        raise NotImplementedError


async def measure(
    params: StdioServerParameters,
    *,
    base_url: str,
    generate_path: str,
    model: str,
    calls: int,
    long_latency: float,
    configure: Any,
) -> dict[str, list[float]]:
    """Seconds per tasks/get, get_task, CreateTaskResult and direct 202; polls per second per task."""
    out: dict[str, list[float]] = {"tasks/get": [], "get_task": [], "create": [], "202": [], "polls/s": []}
    arguments = {"model": model, "prompt": "bench task"}
    async with (
        Client(params, extensions=[Tasks()]) as client,
        httpx2.AsyncClient(base_url=base_url, headers={"X-API-Key": "bench"}, timeout=30) as http,
    ):
        configure(latency=600)  # tasks that stay running while they are polled
        for i in range(calls + 3):
            started = time.perf_counter()
            created = await client.session.call_tool(
                "generate_image", {**arguments, "prompt": f"bench task {i}"}, allow_claimed=True
            )
            create = time.perf_counter() - started
            started = time.perf_counter()
            (
                await http.post(generate_path, json={"model": model, "prompt": f"bench {i}", "celery": True})
            ).raise_for_status()
            direct = time.perf_counter() - started
            assert isinstance(created, Created), created
            started = time.perf_counter()
            await client.session.send_request(GetTask(params=TaskIdParams(task_id=created.task_id)), State)
            get = time.perf_counter() - started
            await anyio.sleep(0.5)  # past the repeat window: the next tasks/get asks the API
            started = time.perf_counter()
            await client.call_tool("get_task", {"task_id": created.task_id, "wait_seconds": 0})
            tool = time.perf_counter() - started
            if i >= 3:  # warm-up
                for key, value in (("create", create), ("202", direct), ("tasks/get", get), ("get_task", tool)):
                    out[key].append(value)
        configure(latency=long_latency)
        for i in range(3):
            created = await client.session.call_tool("generate_image", {**arguments, "prompt": f"paced {i}"},
                                                     allow_claimed=True)  # fmt: skip
            assert isinstance(created, Created), created
            started, polls = time.perf_counter(), 0
            while True:
                state = await client.session.send_request(GetTask(params=TaskIdParams(task_id=created.task_id)), State)
                polls += 1
                if state.status != "working":
                    break
                await anyio.sleep((state.poll_interval_ms or 1000) / 1000)
            out["polls/s"].append(polls / (time.perf_counter() - started))
    return out
