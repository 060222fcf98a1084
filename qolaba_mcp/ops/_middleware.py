"""mcp.server.operation.duration: every MCP request timed, with the MCP semantic conventions' attributes.

The span of each request is the SDK's own (its OpenTelemetryMiddleware, first in the chain, parents it on the
caller's ``_meta.traceparent``); this middleware runs inside it and only measures."""

from __future__ import annotations

import time
from typing import Any, Literal

from mcp.server.context import CallNext, HandlerResult, ServerMiddleware, ServerRequestContext
from mcp.shared.exceptions import MCPError
from mcp.types import CallToolResult
from pydantic import ValidationError

from ._ops import Ops

# Method names and protocol versions come from the caller: only these become label values.
_METHODS = frozenset(
    {
        "initialize", "ping", "tools/list", "tools/call", "resources/list", "resources/read",
        "resources/templates/list", "prompts/list", "prompts/get", "completion/complete", "logging/setLevel",
        "notifications/initialized", "notifications/cancelled", "notifications/progress",
        "notifications/roots/list_changed", "tasks/get", "tasks/result", "tasks/list", "tasks/cancel",
    }
)  # fmt: skip
_VERSIONS = frozenset({"2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25", "2026-07-28"})


class OperationDuration(ServerMiddleware[Any]):
    def __init__(self, ops: Ops, *, transport: Literal["pipe", "tcp"]) -> None:
        self._ops, self._transport = ops, transport

    async def __call__(self, ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        started = time.monotonic()
        error = ""
        try:
            result = await call_next(ctx)
        except MCPError as exc:
            error = str(exc.error.code)
            raise
        except ValidationError:
            error = "invalid_params"
            raise
        except Exception as exc:
            error = type(exc).__qualname__ if type(exc).__module__.startswith(("mcp", "builtins")) else "exception"
            raise
        else:
            match result:
                case CallToolResult(is_error=True) | {"isError": True}:
                    error = "tool_error"
                case _:
                    pass
            return result
        finally:
            self._observe(ctx, error, time.monotonic() - started)

    def _observe(self, ctx: ServerRequestContext[Any, Any], error: str, seconds: float) -> None:
        metrics = self._ops.metrics
        if metrics is None:
            return
        tool = self._ops.tool_label(ctx.params.get("name")) if ctx.method == "tools/call" and ctx.params else ""
        version = ctx.protocol_version if ctx.protocol_version in _VERSIONS else "other"
        metrics.operation_duration.labels(
            ctx.method if ctx.method in _METHODS else "other", tool, error, self._transport, version
        ).observe(seconds)
