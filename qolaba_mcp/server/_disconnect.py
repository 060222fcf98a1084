"""The disconnect wait: an HTTP client that leaves stops its call (the HTTP transport sets the signal)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from typing import Any, TypeVar

import anyio
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .._errors import QolabaError

log = logging.getLogger("qolaba_mcp.server")

T = TypeVar("T")


DISCONNECTED = "qolaba_mcp.disconnected"  # request-state key: an anyio.Event set when an HTTP client leaves


async def while_connected(ctx: Context[Any], work: Awaitable[T]) -> T:
    """Run ``work`` but stop it as soon as the HTTP client that asked for it disconnects."""
    request = ctx.request_context.request
    gone = getattr(request, "scope", {}).get("state", {}).get(DISCONNECTED)
    if gone is None:  # stdio: the SDK cancels the call itself when the client goes
        return await work
    done: list[T] = []
    failure: list[QolabaError] = []
    async with anyio.create_task_group() as group:

        async def watch() -> None:
            await gone.wait()
            log.info("the client disconnected; stopping its call")
            group.cancel_scope.cancel()

        group.start_soon(watch)
        try:
            done.append(await work)
        except QolabaError as exc:  # raised after the group, not wrapped in an ExceptionGroup
            failure.append(exc)
        group.cancel_scope.cancel()
    if failure:
        raise failure[0]
    if not done:
        raise ToolError("The client disconnected before the call finished.")
    return done[0]


class DisconnectSignal:
    """Puts an event in each HTTP request's state that is set once its client disconnects.

    In stateful mode the SDK keeps serving a request after its response stream closes (for resumable streams,
    which this server does not offer); the tools wait on this event to stop polling for a client that left.
    """

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        gone = anyio.Event()
        scope.setdefault("state", {})[DISCONNECTED] = gone

        async def watched_receive() -> Message:
            message = await receive()
            if message["type"] == "http.disconnect":
                gone.set()
            return message

        try:
            await self._app(scope, watched_receive, send)
        except OSError:
            gone.set()
            raise
