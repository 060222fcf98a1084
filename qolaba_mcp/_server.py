"""The MCP surface: three thin tools over the job lifecycle, their schemas derived from the API models."""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import anyio
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.mcpserver.tools import Tool
from mcp.types import CallToolResult, ResourceLink, TextContent, ToolAnnotations
from pydantic import BaseModel, ConfigDict, Field, SecretStr
from pydantic.fields import FieldInfo

from . import __version__
from ._catalog import Capability, Catalog, CatalogFileError, ModelInfo
from ._client import QolabaClient
from ._config import Settings
from ._errors import (
    AuthenticationError,
    BadRequestError,
    MissingApiKeyError,
    NetworkError,
    QolabaError,
    RateLimitError,
    ServerError,
    TaskNotFoundError,
)
from ._jobs import Generation, Jobs, PollPolicy
from ._models import GenerateRequest

log = logging.getLogger("qolaba_mcp.server")

CLIENT_KEY_HEADER = "x-qolaba-api-key"
DISCONNECTED = "qolaba_mcp.disconnected"  # request-state key: an anyio.Event set when an HTTP client leaves

INSTRUCTIONS = (
    "Generate images with Qolaba. Call list_models to pick a model, then generate_image. Long generations "
    "return a task_id before they finish: call get_task with that task_id (and wait_seconds) to collect the "
    "images. Never call generate_image twice for one image: each call is a new, paid generation."
)
TaskId = Annotated[
    str,
    Field(
        min_length=1,
        max_length=200,
        pattern=r"^[A-Za-z0-9_.:\-]+$",
        description="The task_id that generate_image returned.",
        examples=["task_1705312200000_abc123"],
    ),
]


class GenerationResult(Generation):
    """The result of generate_image and get_task."""

    next_step: str | None = Field(default=None, description="What to do next, when the task is not done.")


class ModelList(BaseModel):
    """The result of list_models."""

    models: list[ModelInfo]
    warnings: list[str] = Field(default_factory=list)


@dataclass(frozen=True, kw_only=True)
class AppContext:
    """What the tools share for the life of the server process, built in its lifespan."""

    settings: Settings
    jobs: Jobs
    catalog: Catalog
    catalog_warning: str | None = None


def _keyword(name: str, field: FieldInfo | Any) -> inspect.Parameter:
    """A keyword-only tool parameter from a pydantic field (constraints, description and default kept)."""
    if not isinstance(field, FieldInfo):  # an Annotated[...] type alias
        return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=field)
    return inspect.Parameter(
        name,
        inspect.Parameter.KEYWORD_ONLY,
        annotation=Annotated[field.annotation, field],
        default=inspect.Parameter.empty if field.is_required() else field.default,
    )


def _set_signature(tool: Callable[..., Any], params: list[inspect.Parameter], returns: Any) -> None:
    """Give ``tool(ctx, **arguments)`` the flat signature the SDK derives the input schema from."""
    ctx = inspect.Parameter("ctx", inspect.Parameter.KEYWORD_ONLY, annotation=Context[AppContext])
    tool.__signature__ = inspect.Signature([ctx, *params], return_annotation=returns)  # type: ignore[attr-defined]


def _wait_seconds(settings: Settings, default: float) -> FieldInfo:
    return FieldInfo.from_annotated_attribute(
        float,
        Field(
            default=min(default, settings.max_wait_seconds),
            ge=0,
            le=settings.max_wait_seconds,
            description=(
                f"Seconds to wait for the result while streaming progress (0 to {settings.max_wait_seconds:g}). "
                "When it runs out, the result carries the task_id: continue with get_task."
            ),
        ),
    )


_MODE = FieldInfo.from_annotated_attribute(
    Literal["async", "sync"],  # type: ignore[arg-type]
    Field(
        default="async",
        description="'async' (default): submit, then poll with progress. 'sync': one blocking request, "
        "for fast models.",
    ),
)


def build_server(settings: Settings) -> MCPServer:
    """The MCP server with its tools; the HTTP client and catalogue are made in its lifespan."""

    @asynccontextmanager
    async def lifespan(server: MCPServer) -> AsyncIterator[AppContext]:
        warning = None
        try:
            catalog = Catalog.load(settings.models_file)
        except CatalogFileError as exc:
            log.error("%s; using the built-in models", exc)
            catalog, warning = Catalog.builtin(), f"{exc}; the built-in models are listed instead"
        client = QolabaClient(
            base_url=settings.api_base_url,
            api_key=settings.api_key,
            connect_timeout=settings.connect_timeout,
            request_timeout=settings.request_timeout,
            sync_timeout=settings.sync_timeout,
        )
        poll = PollPolicy(min_interval=settings.poll_min_interval, max_interval=settings.poll_max_interval)
        async with client:
            yield AppContext(
                settings=settings,
                jobs=Jobs(client=client, poll=poll),
                catalog=catalog,
                catalog_warning=warning,
            )

    return MCPServer(
        "qolaba-mcp",
        version=__version__,
        instructions=INSTRUCTIONS,
        lifespan=lifespan,
        log_level=logging.getLevelName(logging.getLogger().getEffectiveLevel()),  # type: ignore[arg-type]
        tools=[_generate_image_tool(settings), _get_task_tool(settings), _list_models_tool()],
    )


def _strict(tool: Tool) -> Tool:
    """Refuse unknown arguments: a misspelt field must be an error, not silently ignored on a paid call."""
    loose = tool.fn_metadata.arg_model
    strict = type(loose.__name__, (loose,), {"model_config": ConfigDict(extra="forbid"), "__module__": __name__})
    tool.fn_metadata.arg_model = strict
    tool.parameters = strict.model_json_schema(by_alias=True)
    return tool


def _generate_image_tool(settings: Settings) -> Tool:
    wait = _wait_seconds(settings, 40)

    async def generate_image(ctx: Context[AppContext], **arguments: Any) -> CallToolResult:
        app = _app(ctx)
        mode = arguments.pop("mode", _MODE.default)
        wait_seconds = float(arguments.pop("wait_seconds", wait.default))
        request = GenerateRequest(**arguments, celery=mode == "async")
        try:
            generation = await _while_connected(
                ctx,
                app.jobs.generate(
                    request,
                    wait_seconds=wait_seconds,
                    on_progress=_progress_sender(ctx),
                    api_key=_client_key(ctx, app.settings),
                ),
            )
        except QolabaError as exc:
            raise ToolError(_explain(exc, app.catalog, model=request.model)) from exc
        return _result(generation, wait_seconds, max_wait=settings.max_wait_seconds)

    request_fields = {k: v for k, v in GenerateRequest.model_fields.items() if k != "celery"}
    _set_signature(
        generate_image,
        [_keyword(name, field) for name, field in {**request_fields, "mode": _MODE, "wait_seconds": wait}.items()],
        Annotated[CallToolResult, GenerationResult],
    )
    return _strict(
        Tool.from_function(
            generate_image,
            name="generate_image",
            title="Generate image",
            description=(
                "Generate images from a prompt (or edit source images) with a Qolaba model. Waits up to "
                "wait_seconds while reporting progress; if the images are not ready by then, returns the task_id "
                "to pass to get_task. Each call is a new, paid generation."
            ),
            annotations=ToolAnnotations(
                read_only_hint=False, destructive_hint=False, idempotent_hint=False, open_world_hint=True
            ),
        )
    )


def _get_task_tool(settings: Settings) -> Tool:
    wait = _wait_seconds(settings, 0)

    async def get_task(ctx: Context[AppContext], task_id: str, wait_seconds: float = 0) -> CallToolResult:
        app = _app(ctx)
        try:
            generation = await _while_connected(
                ctx,
                app.jobs.get_task(
                    task_id,
                    wait_seconds=wait_seconds,
                    on_progress=_progress_sender(ctx),
                    api_key=_client_key(ctx, app.settings),
                ),
            )
        except QolabaError as exc:
            exc.task_id = exc.task_id or task_id
            raise ToolError(_explain(exc, app.catalog)) from exc
        return _result(generation, wait_seconds, max_wait=settings.max_wait_seconds)

    _set_signature(
        get_task,
        [_keyword("task_id", TaskId), _keyword("wait_seconds", wait)],
        Annotated[CallToolResult, GenerationResult],
    )
    return _strict(
        Tool.from_function(
            get_task,
            name="get_task",
            title="Get generation task",
            description=(
                "Check a generation started by generate_image: its status, and its images once done. With "
                "wait_seconds > 0, waits for it to finish while reporting progress. Never starts a new generation."
            ),
            annotations=ToolAnnotations(
                read_only_hint=True, destructive_hint=False, idempotent_hint=True, open_world_hint=True
            ),
        )
    )


def _list_models_tool() -> Tool:
    async def list_models(ctx: Context[AppContext], capability: Capability | None = None) -> CallToolResult:
        app = _app(ctx)
        result = ModelList(
            models=app.catalog.with_capability(capability),
            warnings=[app.catalog_warning] if app.catalog_warning else [],
        )
        lines = [_model_line(model) for model in result.models] or [f"No model has capability {capability}."]
        lines += [f"Warning: {text}" for text in result.warnings]
        return CallToolResult(
            content=[TextContent(text="\n".join(lines))],
            structured_content=result.model_dump(mode="json"),
        )

    capability = FieldInfo.from_annotated_attribute(
        Capability | None,  # type: ignore[arg-type]
        Field(default=None, description="Only models with this capability."),
    )
    _set_signature(list_models, [_keyword("capability", capability)], Annotated[CallToolResult, ModelList])
    return _strict(
        Tool.from_function(
            list_models,
            name="list_models",
            title="List image models",
            description=(
                "The Qolaba image models known to this server: capabilities, max images, aspect ratios, quality "
                "presets and accepted parameters. Model ids not listed may still work: the API decides."
            ),
            annotations=ToolAnnotations(
                read_only_hint=True, destructive_hint=False, idempotent_hint=True, open_world_hint=False
            ),
        )
    )


def _app(ctx: Context[AppContext]) -> AppContext:
    app = ctx.request_context.lifespan_context
    assert isinstance(app, AppContext)
    return app


async def _while_connected(ctx: Context[AppContext], work: Awaitable[Generation]) -> Generation:
    """Run ``work`` but stop it as soon as the HTTP client that asked for it disconnects."""
    request = ctx.request_context.request
    gone = getattr(request, "scope", {}).get("state", {}).get(DISCONNECTED)
    if gone is None:  # stdio: the SDK cancels the call itself when the client goes
        return await work
    done: list[Generation] = []
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


def _client_key(ctx: Context[AppContext], settings: Settings) -> SecretStr | None:
    """The caller's own Qolaba key from X-Qolaba-Api-Key, where the operator allows it; used for this call only."""
    value = (ctx.headers or {}).get(CLIENT_KEY_HEADER, "").strip()
    if not value:
        return None
    if not settings.mcp_allow_client_keys:
        raise ToolError(
            "This server does not accept a Qolaba key in the X-Qolaba-Api-Key header; remove the header, or ask "
            "its operator to enable QOLABA_MCP_ALLOW_CLIENT_KEYS."
        )
    return SecretStr(value)


def _progress_sender(ctx: Context[AppContext]) -> Callable[[float, float | None, str], Awaitable[None]]:
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


def _model_line(model: ModelInfo) -> str:
    status = "documented" if model.documented else "assumed"
    return (
        f"{model.id} ({model.display_name}): {', '.join(model.capabilities)}; max images {model.max_images}; "
        f"aspect ratios {', '.join(model.aspect_ratios)}; quality {', '.join(model.qualities)}; "
        f"parameters {', '.join(model.parameters)} [{status}]"
    )


def _result(generation: Generation, wait_seconds: float, *, max_wait: float) -> CallToolResult:
    result = GenerationResult(**generation.model_dump())
    if not generation.done:
        result.next_step = (
            f'Not finished after waiting {wait_seconds:g} s. Call get_task with task_id="{generation.task_id}" '
            f"and wait_seconds={min(max(wait_seconds, 30), max_wait):g} to keep waiting. Do not call "
            "generate_image again: the task is already running."
        )
    content: list[TextContent | ResourceLink] = [TextContent(text=_summary(result))]
    for index, image in enumerate(result.images):
        content.append(
            ResourceLink(
                name=f"{result.task_id or 'image'}-{index}",
                uri=image.url,
                mime_type=image.content_type or "image/png",
                description=f"{image.width}x{image.height}" if image.width and image.height else None,
            )
        )
    return CallToolResult(
        content=content,
        structured_content=result.model_dump(mode="json"),
        is_error=generation.status == "FAILED",
    )


def _summary(result: GenerationResult) -> str:
    if result.status == "FAILED":
        return (
            f"Generation failed (task_id {result.task_id}): {result.error}. Adjust the prompt or parameters and "
            "call generate_image again."
        )
    if result.status != "SUCCESS":
        text = f"Task {result.task_id} is {result.status} after {result.elapsed_seconds:.1f} s. {result.next_step}"
        if result.poll_error:
            text += f" (Last poll failed: {result.poll_error})"
        return text
    cost = ""
    if result.usage and result.usage.cost_credits is not None:
        cost = f", cost {result.usage.cost_credits:g} credits (${result.usage.cost_usd or 0:g})"
    lines = [
        f"Generated {len(result.images)} image(s) with {result.model or 'the model'} in "
        f"{result.elapsed_seconds:.1f} s (task_id {result.task_id}, seed {result.seed}{cost}):"
    ]
    for index, image in enumerate(result.images, start=1):
        size = f" ({image.width}x{image.height})" if image.width and image.height else ""
        lines.append(f"{index}. {image.url}{size}")
    return "\n".join(lines)


def _explain(exc: QolabaError, catalog: Catalog, *, model: str | None = None) -> str:
    """A tool-error text that tells the agent its next move."""
    task = f" (task_id {exc.task_id})" if exc.task_id else ""
    if isinstance(exc, MissingApiKeyError):
        return exc.message
    if isinstance(exc, BadRequestError):
        text = f"The Qolaba API rejected the request: {exc.message}. Fix the named argument and call again."
        if model is not None and model not in catalog:
            text += f" Known models: {', '.join(catalog.ids())} (list_models has details)."
        return text
    if isinstance(exc, AuthenticationError):
        return (
            f"The Qolaba API refused the API key ({exc.status_code}). Check QOLABA_API_KEY in the MCP server's "
            "environment; retrying will not help until the key is fixed."
        )
    if isinstance(exc, RateLimitError):
        after = f"{exc.retry_after:g} s" if exc.retry_after is not None else "a little while"
        return f"Rate limited by the Qolaba API after several tries{task}. Retry after {after}."
    if isinstance(exc, TaskNotFoundError):
        return f"The Qolaba API knows no task {exc.task_id!r}. Check the task_id that generate_image returned."
    if isinstance(exc, NetworkError) and not exc.request_sent:
        return f"Could not reach the Qolaba API ({exc.message}); nothing was submitted. Retry shortly."
    if exc.task_id:
        return (
            f"{exc.message}{task}. The task may still finish: call get_task with "
            f'task_id="{exc.task_id}" rather than generating again.'
        )
    if isinstance(exc, NetworkError | ServerError):
        return (
            f"{exc.message}. The submission's state is unknown: the API may have created the task. Do not "
            "retry at once; check the Qolaba dashboard, or retry knowing it may be a second paid generation."
        )
    return f"{exc.message}{task}."
