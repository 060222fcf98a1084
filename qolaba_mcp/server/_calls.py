"""Per-call plumbing of the tools: the app context, the caller's key, progress, links, errors as tool text."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import CallToolResult
from pydantic import SecretStr

from .._config import Settings
from .._errors import QolabaError, ResponseFormatError
from .._identity import Person, act_as
from ..generations._pacing import ProgressFn
from ..generations._rows import Recorded
from ..money._spend import SpendRefusedError
from ._context import AppContext
from ._disconnect import while_connected
from ._results import explain, generation_result

log = logging.getLogger("qolaba_mcp.server")


CLIENT_KEY_HEADER = "x-qolaba-api-key"


def links_allowed(ctx: Context[AppContext]) -> bool:
    """Whether results carry resource_link blocks: the operator allows them (QOLABA_RESOURCE_LINKS) and the
    client's protocol has them (from 2025-06-18 on; versions are dates)."""
    version = ctx.protocol_version
    return app_of(ctx).settings.resource_links == "on" and (version is None or version >= "2025-06-18")


def app_of(ctx: Context[AppContext]) -> AppContext:
    app = ctx.request_context.lifespan_context
    assert isinstance(app, AppContext)
    return app


async def run_call(
    ctx: Context[AppContext],
    start: Callable[[ProgressFn, SecretStr | None], Awaitable[Recorded]],
    *,
    task_id: str | None = None,
    model: str | None = None,
    data_uris: bool = False,
) -> Recorded:
    """Run a job for a tool call: the caller's key, progress to the caller, stop if it leaves, errors as text."""
    app = app_of(ctx)
    gauge = app.ops.metrics.in_flight if app.ops.metrics is not None else None
    try:
        if gauge is not None:
            gauge.inc()
        return await while_connected(ctx, start(progress_sender(ctx), client_key(ctx, app.settings)))
    except QolabaError as exc:
        exc.task_id = exc.task_id or task_id
        if isinstance(exc, SpendRefusedError):
            app.ops.refused("budget")
        elif isinstance(exc, ResponseFormatError):
            app.ops.api_malformed()
        app.ops.generation_ended(model, outcome="ERROR", task_id=exc.task_id)
        raise ToolError(explain(exc, app.catalog, model=model, data_uris=data_uris)) from exc
    finally:
        if gauge is not None:
            gauge.dec()


def client_key(ctx: Context[AppContext], settings: Settings) -> SecretStr | None:
    """The caller's own Qolaba key from X-Qolaba-Api-Key, where the operator allows it; used for this call only.

    Also who the caller is for the rest of the call: under OAuth, the person the verified token names (their
    principal scopes the ledger, spend and saved files), else nobody in particular (the key's hash is used)."""
    act_as(signed_in(ctx))
    value = (ctx.headers or {}).get(CLIENT_KEY_HEADER, "").strip()
    if not value:
        return None
    if not settings.mcp_allow_client_keys:
        raise ToolError(
            "This server does not accept a Qolaba key in the X-Qolaba-Api-Key header; remove the header, or ask "
            "its operator to enable QOLABA_MCP_ALLOW_CLIENT_KEYS."
        )
    if not (value.isascii() and value.isprintable()):  # never echoed: it is someone's key
        raise ToolError(
            "The X-Qolaba-Api-Key header holds characters a Qolaba API key never has (a key is printable ASCII); "
            "send the key exactly as the Qolaba dashboard shows it."
        )
    return SecretStr(value)


def signed_in(ctx: Context[AppContext]) -> Person | None:
    """The person the HTTP transport's OAuth gate verified for this request (``_oauth``), if any."""
    scope = getattr(ctx.request_context.request, "scope", None) or {}
    user = scope.get("user")
    if not isinstance(user, AuthenticatedUser) or not user.access_token.subject:
        return None
    issuer = (user.access_token.claims or {}).get("iss")
    return Person(issuer=str(issuer), subject=user.access_token.subject) if issuer else None


def progress_sender(ctx: Context[AppContext]) -> ProgressFn:
    broken = False

    async def send(progress: float, total: float | None, message: str) -> None:
        nonlocal broken
        if broken:
            return
        try:
            await ctx.report_progress(progress, total, message)
        except Exception:  # a host that went away must not fail the generation it paid for
            broken = True
            log.debug("progress notification failed; no more will be sent for this call", exc_info=True)

    return send


async def finished_result(
    ctx: Context[AppContext], generation: Recorded, *, save: bool | None, wait_seconds: float, started: float
) -> CallToolResult:
    """A generation's tool result, once the domain has delivered its images and recorded that the caller has it."""
    app = app_of(ctx)
    generation, delivered = await app.generations.finish(
        generation, save=save, wait_seconds=wait_seconds, started=started
    )
    app.links.add(image.url for image in generation.images)
    app.ops.generation_ended(
        generation.model,
        outcome=generation.status,
        task_id=generation.task_id,
        images=len(generation.images),
        cost_usd=generation.usage.cost_usd if generation.usage is not None else None,
        notes=delivered.notes if delivered is not None else (),
    )
    return generation_result(
        generation,
        delivered,
        wait_seconds=wait_seconds,
        max_wait=app.settings.max_wait_seconds,
        links=links_allowed(ctx),
    )
