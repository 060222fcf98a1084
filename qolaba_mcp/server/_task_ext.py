"""MCP Tasks on the ledger, in both protocol eras: a task is a generation's ledger row, its id Qolaba's task id.

- 2026-07-28: the ``io.modelcontextprotocol/tasks`` extension. A ``tools/call`` whose per-request client
  capabilities list the extension is answered with a ``CreateTaskResult`` once its generation is submitted and
  recorded; ``tasks/get`` inlines the tool's own result when it ends; ``tasks/update`` and ``tasks/cancel``.
- 2025-11-25: ``capabilities.tasks``, ``params.task`` on ``tools/call``, ``tasks/get``, ``tasks/result``,
  ``tasks/list`` and ``tasks/cancel`` (the SDK leaves them out of its method tables, so they are served here).

Nothing is kept in this process that a task needs: any replica on the ledger, or this server after a restart,
answers it. A cancel is kept in the ledger too: Qolaba cannot cancel, so the generation goes on (get_task and
list_generations follow it), but the task is ``cancelled`` from then on, everywhere. A 2025-11-25 ``ttl`` is kept
with the task and reported as asked: the ledger keeps every row, so any retention asked for is honoured.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.extension import Extension, MethodBinding
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.shared.exceptions import MCPError
from mcp.types import (
    INVALID_PARAMS,
    CallToolRequestParams,
    CallToolResult,
    RequestParams,
    ToolExecution,
)
from mcp.types import Tool as ListedTool
from pydantic import BaseModel, Field, SecretStr

from .._errors import QolabaError, TaskNotFoundError
from ..api._wire import is_safe_task_id
from ..generations._pacing import ProgressFn
from ..generations._rows import Recorded
from ..ledger import ACTIVE_STATES, LedgerError, LedgerRow, Query
from ._calls import app_of, client_key
from ._context import AppContext
from ._task_views import (
    LEGACY,
    MAX_POLL_S,
    MODERN,
    TaskView,
    cancelled_result,
    cancelled_view,
    listed_view,
    progress_text,
)

log = logging.getLogger("qolaba_mcp.server")

EXTENSION = "io.modelcontextprotocol/tasks"
CLIENT_CAPABILITIES = "io.modelcontextprotocol/clientCapabilities"
RELATED_TASK = "io.modelcontextprotocol/related-task"
MISSING_CAPABILITY = -32021  # the spec's Missing Required Client Capability
TASK_TOOLS = frozenset({"generate_image", "get_task"})
RESULT_SLICE_S = 5.0  # a waiting tasks/result looks at the ledger (for a cancel) at least this often


@dataclass
class TaskSlot:
    """Set around a tool call that may become a task: the tool notes its unfinished generation here."""

    generation: Recorded | None = None


_slot: ContextVar[TaskSlot | None] = ContextVar("qolaba_task_slot", default=None)


def task_slot() -> TaskSlot | None:
    """The slot of the tool call running now, when it may become a task (its caller opted in)."""
    return _slot.get()


def note_task(slot: TaskSlot | None, generation: Recorded) -> None:
    """Offer a generation as the call's task: only one recorded in the ledger and still running becomes one."""
    running = generation.status in ("PENDING", "PROCESSING")
    if slot is not None and running and generation.row_id is not None and generation.task_id:
        slot.generation = generation


class TaskIdParams(RequestParams):
    task_id: str = Field(alias="taskId")


class UpdateParams(TaskIdParams):
    input_responses: dict[str, Any] | None = Field(default=None, alias="inputResponses")


class ListParams(RequestParams):
    cursor: str | None = None


@dataclass
class _Seen:
    at: float
    view: TaskView


@dataclass
class TasksExtension(Extension):
    """The tasks extension (2026-07-28) and the 2025-11-25 task methods, over the generations ledger."""

    identifier = EXTENSION
    _server: MCPServer | None = None
    _seen: dict[tuple[str, str], _Seen] = field(default_factory=dict)  # the last answer, for a too-quick poll

    def bind(self, server: MCPServer) -> None:
        """The server whose get_task tool shapes a finished task's result (the SDK hands extensions none)."""
        self._server = server
        server.middleware.append(self.legacy_middleware)

    def methods(self) -> Sequence[MethodBinding]:
        both = frozenset({LEGACY, MODERN})
        return (
            MethodBinding("tasks/get", TaskIdParams, self._get, both),
            MethodBinding("tasks/cancel", TaskIdParams, self._cancel, both),
            MethodBinding("tasks/update", UpdateParams, self._update, frozenset({MODERN})),
            MethodBinding("tasks/result", TaskIdParams, self._result, frozenset({LEGACY})),
            MethodBinding("tasks/list", ListParams, self._list, frozenset({LEGACY})),
        )

    async def intercept_tool_call(
        self, params: CallToolRequestParams, ctx: ServerRequestContext[Any, Any], call_next: CallNext
    ) -> HandlerResult:
        """2026-07-28: a task for a caller that listed the extension in this request's capabilities."""
        if params.name not in TASK_TOOLS or ctx.protocol_version != MODERN or not _opted_in(ctx.params):
            return await call_next(ctx)
        result, generation = await _as_task(ctx, call_next)
        view = None if generation is None else await self._created(ctx, generation, ttl_ms=None)
        if view is None:
            return result
        return {"resultType": "task", **view.fields(MODERN)}

    async def legacy_middleware(self, ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        """2025-11-25: ``capabilities.tasks`` in initialize, and ``tools/call`` with ``params.task``."""
        if ctx.method == "initialize":
            result = await call_next(ctx)
            if isinstance(result, dict) and result.get("protocolVersion") == LEGACY:
                capabilities = result.setdefault("capabilities", {})
                capabilities["tasks"] = {"list": {}, "cancel": {}, "requests": {"tools": {"call": {}}}}
            return result
        params = ctx.params if isinstance(ctx.params, Mapping) else {}
        if ctx.method != "tools/call" or ctx.protocol_version != LEGACY or "task" not in params:
            return await call_next(ctx)
        task = params["task"]
        if not isinstance(task, Mapping) or not _valid_ttl(task.get("ttl")) or set(task) - {"ttl"}:
            raise MCPError(
                code=INVALID_PARAMS, message="params.task must be an object with an optional ttl (milliseconds >= 0)"
            )
        if params.get("name") not in TASK_TOOLS:
            return await call_next(ctx)
        result, generation = await _as_task(ctx, call_next)
        view = None if generation is None else await self._created(ctx, generation, ttl_ms=task.get("ttl"))
        if view is None:
            return result
        return {"task": view.fields(LEGACY)}

    async def _created(
        self, ctx: ServerRequestContext[Any, Any], generation: Recorded, *, ttl_ms: int | None
    ) -> TaskView | None:
        """The new task's first view, its ttl recorded first; None when the call joined a task its creator has
        cancelled (answered as a plain call: its result names the generation for get_task)."""
        assert generation.task_id is not None
        now = time.time()
        view = TaskView(
            task_id=generation.task_id,
            status="working",
            created_at=now - generation.elapsed_seconds,
            updated_at=now,
            message=f"{generation.status}: submitted to Qolaba; poll tasks/get for progress and the images.",
        )
        context = self._context(ctx)
        row = await _row(context, generation.task_id)
        if row is not None and ttl_ms is not None:
            row = await _keep_ttl(context, row, ttl_ms)
        if row is not None:
            if row.cancelled_at is not None:
                return None
            view.created_at, view.updated_at, view.ttl_ms = row.created_at, row.updated_at, row.task_ttl_ms
        return view

    # --- the methods -------------------------------------------------------------------------------------------

    async def _get(self, ctx: ServerRequestContext[Any, Any], params: TaskIdParams) -> dict[str, Any]:
        era = _declared(ctx)
        view = await self._view(ctx, params.task_id)
        out = view.fields(era)
        if era == MODERN and view.result is not None:
            out["result"] = view.result
        return out

    async def _cancel(self, ctx: ServerRequestContext[Any, Any], params: TaskIdParams) -> dict[str, Any]:
        """A working task becomes ``cancelled`` in the ledger before the answer; a terminal one keeps its status."""
        era = _declared(ctx)
        context = self._context(ctx)
        row = await _row(context, params.task_id)
        if row is None:
            raise _not_found(params.task_id)
        terminal: str | None = "cancelled"
        if row.cancelled_at is None:
            terminal = (await self._view(ctx, params.task_id)).status
            if terminal == "working":
                row = await _record_cancel(context, row)
                self._seen.pop((row.principal, params.task_id), None)
                # Cancelled by this call or by another at the same moment; else the generation ended meanwhile.
                terminal = None if row.cancelled_at is not None else "completed"
        if era == MODERN:  # an empty acknowledgement, whatever happened (the spec's eventual consistency)
            return {}
        if terminal is not None:
            raise MCPError(
                code=INVALID_PARAMS,
                message=f"Task {params.task_id[:80]!r} is already {terminal}: a task that ended cannot be cancelled",
            )
        return cancelled_view(row).fields(LEGACY)

    async def _update(self, ctx: ServerRequestContext[Any, Any], params: UpdateParams) -> dict[str, Any]:
        # No task of ours ever asks for input, so every response is to a key never issued: ignored, as the spec says.
        _declared(ctx)
        if await _row(self._context(ctx), params.task_id) is None:
            raise _not_found(params.task_id)
        return {}

    async def _result(self, ctx: ServerRequestContext[Any, Any], params: TaskIdParams) -> dict[str, Any]:
        """2025-11-25: wait until the task ends, then the tool's own result (a cancelled task's: a tool error that
        says so and names the generation, which get_task still follows)."""
        context = self._context(ctx)
        app = app_of(context)
        progress = _related_progress(ctx, params.task_id)
        while True:
            view = await self._view(ctx, params.task_id)
            if view.status != "working":
                break
            # The wait is the domain's: it polls at the task's pace; the next view says what is known. It waits in
            # slices, so a cancel (from any replica) ends this wait within one slice.
            with contextlib.suppress(QolabaError):
                await app.generations.get(
                    params.task_id,
                    wait_seconds=min(app.settings.max_wait_seconds, RESULT_SLICE_S),
                    on_progress=progress,
                    api_key=_key(context),
                )
            for mark in [mark for mark in self._seen if mark[1] == params.task_id]:
                del self._seen[mark]
        await _notify(ctx, "notifications/tasks/status", view.fields(LEGACY))
        if view.status == "cancelled":
            result = cancelled_result(params.task_id)
        else:
            result = view.result or await self._tool_result(ctx, params.task_id)
        meta = dict(result.get("_meta") or {})
        meta[RELATED_TASK] = {"taskId": params.task_id}
        return {**result, "_meta": meta}

    async def _list(self, ctx: ServerRequestContext[Any, Any], params: ListParams) -> dict[str, Any]:
        """2025-11-25: the caller's own tasks, newest first."""
        context = self._context(ctx)
        app = app_of(context)
        key = _key(context)
        try:
            rows, cursor = await app.generations.history(Query(cursor=params.cursor, limit=50), api_key=key)
        except (LedgerError, ValueError, QolabaError) as exc:
            raise MCPError(code=INVALID_PARAMS, message=f"Tasks cannot be listed: {exc}") from exc
        tasks = [listed_view(row).fields(LEGACY) for row in rows if row.task_id is not None]
        return {"tasks": tasks, **({"nextCursor": cursor} if cursor else {})}

    # --- one task's state --------------------------------------------------------------------------------------

    async def _view(self, ctx: ServerRequestContext[Any, Any], task_id: str) -> TaskView:
        context = self._context(ctx)
        app = app_of(context)
        key = _key(context)
        row = await _row(context, task_id)
        if row is None:
            raise _not_found(task_id)
        if row.cancelled_at is not None:
            return cancelled_view(row)  # from the ledger, forever: the API is not asked
        mark = (row.principal, task_id)
        seen = self._seen.get(mark)
        if seen is not None and time.monotonic() - seen.at < seen.view.poll_s / 2:
            return seen.view  # polled faster than asked: the last answer again, without asking the API
        messages: list[tuple[float, float | None, str]] = []

        async def progress(done: float, total: float | None, message: str) -> None:
            messages.append((done, total, message))

        view = TaskView(task_id, "working", row.created_at, time.time(), ttl_ms=row.task_ttl_ms)
        try:
            generation = await app.generations.get(task_id, wait_seconds=0, on_progress=progress, api_key=key)
        except TaskNotFoundError:
            raise _not_found(task_id) from None
        except QolabaError as exc:  # a poll failed: still working, as far as anyone knows
            view.message = f"Could not reach Qolaba this time ({exc.message}); the generation goes on. Poll again."
            view.poll_s = MAX_POLL_S
            return view
        if generation.done and row.state in ACTIVE_STATES:
            # Its end was recorded just now. A cancel lands only while the row is active, so one that is there now
            # landed first, and wins: a client may have been told "cancelled" already.
            latest = await _row(context, task_id)
            if latest is not None and latest.cancelled_at is not None:
                return cancelled_view(latest)
        if generation.done or generation.status == "UNKNOWN":
            view.status = "completed"  # a failed generation is a tool error: completed, with isError
            view.result = await self._tool_result(ctx, task_id)
            view.message = f"{generation.status} after {time.time() - row.created_at:.0f} s."
        else:
            view.message, view.poll_s = progress_text(generation, messages, time.time() - row.created_at)
        self._seen[mark] = _Seen(time.monotonic(), view)
        return view

    async def _tool_result(self, ctx: ServerRequestContext[Any, Any], task_id: str) -> dict[str, Any]:
        """Exactly what get_task answers for a task that has ended (generate_image's result for it)."""
        assert self._server is not None
        call = CallToolRequestParams(name="get_task", arguments={"task_id": task_id})
        result = await self._server._handle_call_tool(ctx, call)
        assert isinstance(result, CallToolResult)
        return result.model_dump(by_alias=True, exclude_none=True, mode="json")

    def _context(self, ctx: ServerRequestContext[Any, Any]) -> Context[AppContext]:
        return Context(request_context=ctx, mcp_server=self._server)


async def _as_task(ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> tuple[HandlerResult, Recorded | None]:
    """Run the tool with a slot: its result, and the unfinished generation it noted (None: answer normally)."""
    slot = TaskSlot()
    token = _slot.set(slot)
    try:
        result = await call_next(ctx)
    finally:
        _slot.reset(token)
    return result, slot.generation


class _Notification(BaseModel):
    method: str
    params: dict[str, Any]


async def _notify(ctx: ServerRequestContext[Any, Any], method: str, params: dict[str, Any]) -> None:
    """A notification on the request's own stream, where the session can carry one (never fails the request)."""
    try:
        await ctx.session.send_notification(_Notification(method=method, params=params), ctx.request_id)  # type: ignore[arg-type]
    except Exception:
        log.debug("the %s notification could not be sent", method, exc_info=True)


def _related_progress(ctx: ServerRequestContext[Any, Any], task_id: str) -> ProgressFn:
    """Progress for a tasks/result wait: on the caller's progress token, marked as the task's (2025-11-25)."""
    token = (ctx.meta or {}).get("progress_token")  # the SDK lifts _meta.progressToken to this key
    last = -1.0

    async def send(done: float, total: float | None, message: str) -> None:
        nonlocal last
        if token is None or done <= last:  # each wait starts its count again: only ever forwards
            return
        last = done
        params: dict[str, Any] = {"progressToken": token, "progress": done, "total": total, "message": message}
        params["_meta"] = {RELATED_TASK: {"taskId": task_id}}
        await _notify(ctx, "notifications/progress", {k: v for k, v in params.items() if v is not None})

    return send


def _opted_in(params: Mapping[str, Any] | None) -> bool:
    meta = (params or {}).get("_meta")
    capabilities = meta.get(CLIENT_CAPABILITIES) if isinstance(meta, Mapping) else None
    extensions = capabilities.get("extensions") if isinstance(capabilities, Mapping) else None
    return isinstance(extensions, Mapping) and isinstance(extensions.get(EXTENSION), Mapping)


def _valid_ttl(ttl: Any) -> bool:
    return ttl is None or (isinstance(ttl, int) and not isinstance(ttl, bool) and ttl >= 0)


def _era(ctx: ServerRequestContext[Any, Any]) -> str:
    return MODERN if ctx.protocol_version >= MODERN else LEGACY


def _declared(ctx: ServerRequestContext[Any, Any]) -> str:
    """The request's era, once a 2026-07-28 request has declared the extension (the spec's -32021 otherwise)."""
    era = _era(ctx)
    if era == MODERN and not _opted_in(ctx.params):
        raise MCPError(
            code=MISSING_CAPABILITY,
            message="Missing required client capability",
            data={"requiredCapabilities": {"extensions": {EXTENSION: {}}}},
        )
    return era


def _key(context: Context[AppContext]) -> SecretStr | None:
    try:
        return client_key(context, app_of(context).settings)
    except ToolError as exc:
        raise MCPError(code=INVALID_PARAMS, message=str(exc)) from exc


async def _row(context: Context[AppContext], task_id: str) -> LedgerRow | None:
    """The caller's row for the task; another caller's is None, exactly as one that does not exist."""
    if not is_safe_task_id(task_id):
        return None
    try:
        return await app_of(context).generations.task_row(task_id, api_key=_key(context))
    except LedgerError as exc:
        raise MCPError(code=-32603, message=f"The task ledger cannot be read now ({exc}); retry shortly.") from exc


async def _record_cancel(context: Context[AppContext], row: LedgerRow) -> LedgerRow:
    """Cancel the row's task in the ledger, written before the caller is answered; -32603 when it cannot be."""
    try:
        cancelled, _ = await app_of(context).generations.cancel_task(row.id, now=time.time())
    except (LedgerError, QolabaError) as exc:
        raise MCPError(
            code=-32603, message=f"The cancellation could not be recorded ({exc}); the task goes on. Retry shortly."
        ) from exc
    return cancelled


async def _keep_ttl(context: Context[AppContext], row: LedgerRow, ttl_ms: int) -> LedgerRow:
    """Record a new task's requested ttl. If the ledger cannot take it now, the task is still returned (its paid
    generation is under way), reporting the ttl the ledger holds: none, as every row is kept without limit."""
    try:
        return await app_of(context).generations.keep_task_ttl(row.id, ttl_ms=ttl_ms)
    except (LedgerError, QolabaError) as exc:
        log.warning("the ttl of task %s could not be recorded (%s); it is reported as unlimited", row.task_id, exc)
        return row


def _not_found(task_id: str) -> MCPError:
    return MCPError(code=INVALID_PARAMS, message=f"Failed to retrieve task: Task not found ({task_id[:80]!r})")


def with_task_support(tool: ListedTool) -> ListedTool:
    """A tool as a 2025-11-25 client sees it: the two that can run as tasks say so."""
    if tool.name not in TASK_TOOLS:
        return tool
    return tool.model_copy(update={"execution": ToolExecution(task_support="optional")})
