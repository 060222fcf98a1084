"""The MCP surface: thin tools over the job lifecycle, the ledger and spend, their schemas derived from models."""

from __future__ import annotations

import base64
import inspect
import ipaddress
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal, cast
from urllib.parse import unquote, urlsplit

import anyio
from mcp.server.apps import client_supports_apps
from mcp.server.context import ServerRequestContext
from mcp.server.elicitation import AcceptedElicitation, ElicitationResult
from mcp.server.lowlevel.helper_types import ReadResourceContents
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ResourceError, ResourceNotFoundError, ToolError, UnexpectedToolError
from mcp.server.mcpserver.resolve import Elicit, Resolve
from mcp.server.mcpserver.tools import Tool
from mcp.server.mcpserver.utilities.func_metadata import ArgModelBase
from mcp.types import (
    CallToolResult,
    ImageContent,
    ListToolsResult,
    PaginatedRequestParams,
    TextContent,
    ToolAnnotations,
)
from mcp.types import Tool as ListedTool
from pydantic import AfterValidator, AnyUrl, ConfigDict, Field, SecretStr, ValidationError
from pydantic.fields import FieldInfo

from .. import __version__
from .._config import Settings
from .._errors import QolabaError, TaskNotFoundError
from ..api._catalog import Capability, Catalog, CatalogFileError
from ..api._client import QolabaClient
from ..api._live import LiveCatalog, check_request
from ..api._wire import TASK_ID_MAX_LENGTH, TASK_ID_PATTERN, GenerateRequest, ImageOutput, NotBool, is_safe_task_id
from ..generations._recorded import RECORD_PENDING, Budget, TrackedJobs
from ..generations._runner import SUBMIT_MIN_SECONDS, Generation, Jobs, PollPolicy, ProgressFn
from ..images._delivery import Delivered, Delivery, NoPreview, default_data_dir, default_output_dir
from ..images._inputs import EarlierImage, InputError, InputResolver, has_data_uri, parse_roots
from ..ledger import LedgerError, LedgerRow, LedgerStore, Query, WriteQueue, default_ledger_url, open_ledger
from ..money._spend import (
    Quote,
    SpendApproval,
    SpendReport,
    approval_question,
    cannot_ask,
    check_caps,
    not_confirmed,
    quote,
)
from ._gallery import app_only, gallery_extension, preview, shows_gallery, without_apps
from ._results import (
    GenerationList,
    GenerationResult,
    ListedModel,
    ModelList,
    argument_errors,
    explain,
    generation_result,
    history_result,
    history_row,
    model_line,
)
from ._schemas import NULL_MEANS, portable_input, portable_output

log = logging.getLogger("qolaba_mcp.server")

CLIENT_KEY_HEADER = "x-qolaba-api-key"
DISCONNECTED = "qolaba_mcp.disconnected"  # request-state key: an anyio.Event set when an HTTP client leaves

INSTRUCTIONS = (
    "Generate images with Qolaba. Call list_models to pick a model, then generate_image. Long generations "
    "return a task_id before they finish: call get_task with that task_id (and wait_seconds) to collect the "
    "images. Never call generate_image twice for one image: each call is a new, paid generation (an identical call "
    "while the first is unfinished joins it). list_generations finds earlier images."
)


def _task_id(value: str) -> str:
    if not is_safe_task_id(value):
        raise ValueError(
            "not a task_id: give it exactly as generate_image returned it (letters, digits, '_', '-', '.' or ':', "
            "not only dots)"
        )
    return value


TaskId = Annotated[
    str,
    Field(
        min_length=1,
        max_length=TASK_ID_MAX_LENGTH,
        json_schema_extra={"pattern": TASK_ID_PATTERN},  # checked by _task_id, whose message is clearer
        description="The task_id that generate_image returned.",
        examples=["task_1705312200000_abc123"],
    ),
    AfterValidator(_task_id),
]


class IssuedLinks:
    """The image URLs this process has put in results, newest kept: the http(s) links it will read back."""

    def __init__(self, limit: int = 10_000) -> None:
        self._urls: OrderedDict[str, None] = OrderedDict()
        self._limit = limit

    def add(self, urls: Iterable[str]) -> None:
        for url in urls:
            self._urls[url] = None
            self._urls.move_to_end(url)
        while len(self._urls) > self._limit:
            self._urls.popitem(last=False)

    def __contains__(self, url: object) -> bool:
        return url in self._urls


@dataclass(frozen=True, kw_only=True)
class AppContext:
    """What the tools share for the life of the server process, built in its lifespan."""

    settings: Settings
    jobs: Jobs
    delivery: Delivery
    catalog: Catalog  # the built-in catalogue with the models file: what LiveCatalog falls back to
    prices: LiveCatalog  # the catalogue with the live model list merged in: prices and published limits
    save_by_default: bool
    local_inputs: bool = False  # local files as image inputs: stdio only (over HTTP the server's disk is not yours)
    input_roots: list[Path] = field(default_factory=list)
    catalog_warning: str | None = None
    links: IssuedLinks = field(default_factory=IssuedLinks)
    # list_models answers by (capability, warnings): the catalogue they were made from, their text and structure
    listings: dict[tuple[str | None, tuple[str, ...]], tuple[Catalog, str, dict[str, Any]]] = field(
        default_factory=dict
    )
    tracked: TrackedJobs | None = None  # None when QOLABA_LEDGER_URL=off
    # the gallery's previews: decoded a few at a time, whatever an app asks for at once
    gallery_decodes: anyio.CapacityLimiter = field(default_factory=lambda: anyio.CapacityLimiter(2))

    @property
    def runner(self) -> Jobs | TrackedJobs:
        """What runs generations: the ledger-keeping runner, or the bare one with the ledger off."""
        return self.tracked or self.jobs

    async def finish(
        self,
        generation: Generation,
        *,
        save: bool | None,
        wait_seconds: float,
        links: bool = True,
        started: float | None = None,
    ) -> CallToolResult:
        """Deliver a finished generation's images (previews, files) and shape the tool result.

        Delivery is a courtesy on top of a paid result: if it fails outright, the result still comes back, with
        its task_id, every image URL and a note. It gets what is left of the call's wait (from ``started``, a
        ``time.monotonic()``); files saved after that are recorded in the ledger, for get_task to show.
        """
        delivered: Delivered | None = None
        row_id = getattr(generation, "row_id", None)
        tracked = self.tracked if row_id is not None and generation.status == "SUCCESS" else None
        if generation.status == "SUCCESS" and generation.images:
            should_save = self.save_by_default if save is None else save
            known = await tracked.saved_files(row_id) if tracked is not None and row_id is not None else []
            on_saved = None
            if tracked is not None and row_id is not None:

                async def on_saved(index: int, path: str, tracked: TrackedJobs = tracked, row: str = row_id) -> None:
                    await tracked.add_saved(row, [None] * index + [path])

            deadline = None if started is None else started + wait_seconds - time.monotonic()
            try:
                delivered = await self.delivery.deliver(
                    generation.task_id,
                    generation.images,
                    save=should_save,
                    deadline=deadline,
                    known=known,
                    on_saved=on_saved,
                )
            except Exception as exc:
                log.exception("delivering the images of %s failed", generation.task_id)
                delivered = Delivered(
                    notes=[f"no previews or saved files: delivery failed ({type(exc).__name__}); the URLs stand"]
                )
        self.links.add(image.url for image in generation.images)
        if tracked is not None and row_id is not None:
            if delivered is not None and any(delivered.saved):
                delivered.saved = await tracked.add_saved(row_id, delivered.saved)
            await tracked.delivered(row_id)
            if tracked.pending(row_id) and RECORD_PENDING not in generation.notes:
                generation = generation.model_copy(update={"notes": [*generation.notes, RECORD_PENDING]})
        return generation_result(
            generation, delivered, wait_seconds=wait_seconds, max_wait=self.settings.max_wait_seconds, links=links
        )


async def _open_ledger(settings: Settings) -> LedgerStore | None:
    """The configured ledger, opened (schema created or migrated); None when it is turned off."""
    url = settings.ledger_url or default_ledger_url(default_data_dir(), name=_default_ledger_name(settings))
    if url.strip().lower() == "off":
        return None
    ledger = open_ledger(url)
    await ledger.open()
    return ledger


def _default_ledger_name(settings: Settings) -> str:
    """An API on this machine (a sandbox, a test double) gets a ledger of its own: its generations cost nothing,
    so they must never show up as money spent, or count against a budget, in the real ledger."""
    host = urlsplit(settings.api_base_url).hostname or ""
    try:
        local = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        local = False
    return "sandbox-ledger.db" if local else "ledger.db"


async def history_table(settings: Settings, search: str | None, limit: int) -> str:
    """The ledger's newest generations (every principal: the ledger is the local user's) as a text table."""
    ledger = await _open_ledger(settings)
    if ledger is None:
        return "The ledger is off (QOLABA_LEDGER_URL=off): no history is kept."
    try:
        rows, _ = await ledger.history(Query(search=search, limit=limit))
    finally:
        await ledger.close()
    if not rows:
        return "No generations" + (f" match {search!r}." if search else " yet.")
    lines = [f"{'when (UTC)':<20} {'status':<10} {'model':<26} {'img':>3} {'cost $':>7}  task_id / prompt"]
    for row in map(history_row, rows):
        cost = f"{row.cost_usd:.3f}" if row.cost_usd is not None else "-"
        lines.append(f"{row.when:<20} {row.status:<10} {row.model[:26]:<26} {row.images:>3} {cost:>7}  {row.task_id}")
        lines.append(f"{'':<70}{row.prompt or '(no prompt)'}")
        lines += [f"{'':<70}file: {path}" for path in row.saved_files]
        lines += [f"{'':<70}from {made_from[:200]}" for made_from in row.inputs]
    return "\n".join(lines)


async def spend_text(settings: Settings, as_json: bool = False) -> str:
    """The ledger's spend (every principal: the ledger is the local user's) and the limits, as text or JSON."""
    ledger = await _open_ledger(settings)
    if ledger is None:
        return "The ledger is off (QOLABA_LEDGER_URL=off): no spend is recorded."
    try:
        report = SpendReport.build(await ledger.spend_report(principal=None, now=time.time()), settings)
    finally:
        await ledger.close()
    return report.model_dump_json(indent=2) if as_json else report.text()


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


def _set_signature(
    tool: Callable[..., Any], params: list[inspect.Parameter], returns: Any, *, resolved: dict[str, Any] | None = None
) -> None:
    """Give ``tool(ctx, **arguments)`` the flat signature the SDK derives the input schema from.

    ``resolved`` are parameters the SDK fills by running a resolver (``Annotated[T, Resolve(fn)]``) rather than
    from the arguments; the SDK finds them in the annotations, so they go there too."""
    ctx = inspect.Parameter("ctx", inspect.Parameter.KEYWORD_ONLY, annotation=Context[AppContext])
    extra = [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=kind)
        for name, kind in (resolved or {}).items()
    ]
    tool.__signature__ = inspect.Signature([ctx, *extra, *params], return_annotation=returns)  # type: ignore[attr-defined]
    tool.__annotations__.update(resolved or {})


def _wait_seconds(settings: Settings, default: float) -> FieldInfo:
    return FieldInfo.from_annotated_attribute(
        Annotated[float | None, NotBool],  # type: ignore[arg-type]
        Field(
            default=min(default, settings.max_wait_seconds),
            ge=0,
            le=settings.max_wait_seconds,
            description="Seconds to wait, with progress (then get_task continues)",
        ),
    )


def _given(value: Any, default: Any) -> Any:
    """An optional argument's value: ``null`` means "not given" for every input (strict-mode callers send it)."""
    return default if value is None else value


_MODE = FieldInfo.from_annotated_attribute(
    Literal["async", "sync"] | None,  # type: ignore[arg-type]
    Field(
        default="async",
        description="async polls with progress; sync is one blocking request (fast models).",
    ),
)


_SAVE = FieldInfo.from_annotated_attribute(
    bool | None,  # type: ignore[arg-type]
    Field(
        default=None,
        description="Save the images on this machine and return their paths (default: on for stdio).",
    ),
)


class QolabaServer(MCPServer):
    """MCPServer with argument errors written for the model, the image links of our results readable, and the
    gallery app's parts of the tools list shown only to clients that negotiated MCP Apps."""

    async def list_tools(self) -> list[ListedTool]:
        """The tools as a client without MCP Apps sees them: no app-only tools and no ``_meta.ui``."""
        return without_apps(await super().list_tools())

    async def list_app_tools(self) -> list[ListedTool]:
        """The tools as a client with MCP Apps sees them: linked to the gallery, with the tools it calls."""
        return await super().list_tools()

    async def _handle_list_tools(
        self, ctx: ServerRequestContext[Any, Any], params: PaginatedRequestParams | None
    ) -> ListToolsResult:
        # The SDK's handler lists one set of tools for everyone: the request's context says what this client has.
        tools = await (self.list_app_tools() if client_supports_apps(ctx) else self.list_tools())
        return ListToolsResult(tools=tools)

    async def call_tool(self, name: str, arguments: dict[str, Any], context: Context[Any, Any] | None = None) -> Any:
        try:
            return await super().call_tool(name, arguments, context)
        except UnexpectedToolError:
            raise
        except ToolError as exc:
            if not isinstance(exc.__cause__, ValidationError):
                raise
            tool = self._tool_manager.get_tool(name)
            known = list(tool.parameters.get("properties", {})) if tool is not None else []
            raise ToolError(argument_errors(name, exc.__cause__, known)) from exc.__cause__

    async def read_resource(self, uri: AnyUrl | str, context: Context[Any, Any] | None = None) -> Any:
        """Our resource templates, and the http(s) image URLs our results link to (fetched under the caps)."""
        text = str(uri)
        if context is not None and text[:8].lower().startswith(("http://", "https://")):
            return await _read_image_link(text, context)
        return await super().read_resource(uri, context)


def build_server(
    settings: Settings,
    *,
    transport: Literal["stdio", "http"] = "stdio",
    stopping: anyio.Event | None = None,
    closed: threading.Event | None = None,
) -> MCPServer:
    """The MCP server with its tools; the HTTP clients and catalogue are made in its lifespan.

    ``closed`` is set once the lifespan has ended: every ledger record written (or given up on), every client shut.
    """

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
        # Image hosts get their own client (made on first use): it never carries the Qolaba key.
        delivery = Delivery(
            connect_timeout=settings.connect_timeout,
            output_dir=settings.output_dir or default_output_dir(),
            preview=settings.preview,
            preview_max_bytes=settings.preview_max_bytes,
            max_download_bytes=settings.download_max_bytes,
            # The API's own origin is trusted as the API is: a local or self-hosted API (the sandbox) just works.
            trusted_origins=frozenset({settings.api_base_url}),
            allow_private=settings.download_allow_private,
        )
        # Jobs holds the task group where synchronous requests outlive their calls: it lives as long as the server.
        ledger = await _open_ledger(settings)
        # Left in reverse order: delivery, the ledger runner's heartbeat, Jobs (its synchronous requests end), the
        # ledger records not written yet (flushed: those of what Jobs just ended too), the API client, the ledger.
        async with AsyncExitStack() as stack:
            if closed is not None:
                stack.callback(closed.set)  # the first in, so the last out
            writes = None
            if ledger is not None:
                stack.push_async_callback(ledger.close)
            await stack.enter_async_context(client)
            if ledger is not None:
                writes = await stack.enter_async_context(WriteQueue(ledger=ledger))
            jobs = await stack.enter_async_context(Jobs(client=client, poll=poll, stopping=stopping))
            tracked = None
            if ledger is not None:
                tracked = TrackedJobs(
                    jobs=jobs,
                    ledger=ledger,
                    api_base=settings.api_base_url,
                    api_key=settings.api_key,
                    join_window=settings.join_window_seconds,
                    writes=writes,
                )
                # a synchronous request lasts up to sync_timeout, an async submission up to the longest wait
                longest = max(settings.sync_timeout, settings.max_wait_seconds, SUBMIT_MIN_SECONDS)
                expired = await tracked.expire_stale(longest_submission=longest)
                if expired:
                    log.warning("%d generation(s) were left submitting by a stopped server: now 'unknown'", expired)
                await stack.enter_async_context(tracked)
            stack.push_async_callback(delivery.aclose)
            # saves a call could not wait for go on here until shutdown (with a grace), before the ledger's writes
            await stack.enter_async_context(delivery)
            yield AppContext(
                settings=settings,
                jobs=jobs,
                tracked=tracked,
                delivery=delivery,
                catalog=catalog,
                prices=LiveCatalog(fallback=catalog, fetch=client.list_models),
                save_by_default=settings.save == "on" or (settings.save == "auto" and transport == "stdio"),
                local_inputs=transport == "stdio",
                input_roots=parse_roots(settings.input_roots, settings.output_dir or default_output_dir()),
                catalog_warning=warning,
            )

    server = QolabaServer(
        "qolaba-mcp",
        version=__version__,
        instructions=INSTRUCTIONS,
        lifespan=lifespan,
        log_level=logging.getLevelName(logging.getLogger().getEffectiveLevel()),  # type: ignore[arg-type]
        tools=[
            shows_gallery(_generate_image_tool(settings)),
            shows_gallery(_get_task_tool(settings)),
            _list_models_tool(),
            shows_gallery(_list_generations_tool()),
            _get_spend_tool(),
            app_only(_gallery_image_tool()),
        ],
        extensions=[gallery_extension()],
    )
    _add_resources(server)
    return server


# The properties of a generation result its output schema names (the rest are in every result, unlisted): what an
# agent acts on, within the tools/list budget.
_RESULT_KEYS = frozenset(
    {"task_id", "status", "images", "error", "estimate_usd", "cost_usd", "next_step", "saved_files"}
)


def _tool(
    fn: Callable[..., Any],
    *,
    title: str,
    description: str,
    read_only: bool,
    open_world: bool,
    output_keys: frozenset[str] | None = None,
) -> Tool:
    """A Tool named after its function; read-only tools are idempotent, and none of ours destroys anything."""
    annotations = ToolAnnotations(
        read_only_hint=read_only, destructive_hint=False, idempotent_hint=read_only, open_world_hint=open_world
    )
    tool = Tool.from_function(fn, title=title, description=description, annotations=annotations)
    optional = set(tool.parameters.get("properties", {})) - set(tool.parameters.get("required", []))
    if len(optional) > 1:  # said where it matters; a lone optional filter's type shows it takes null
        tool.description = f"{description} {NULL_MEANS}"
    return _strict(tool, output_keys)


def _strict(tool: Tool, output_keys: frozenset[str] | None = None) -> Tool:
    """Refuse unknown arguments: a misspelt field must be an error, not silently ignored on a paid call."""
    loose = tool.fn_metadata.arg_model
    strict = cast(
        "type[ArgModelBase]",
        type(loose.__name__, (loose,), {"model_config": ConfigDict(extra="forbid"), "__module__": __name__}),
    )
    tool.fn_metadata.arg_model = strict
    tool.parameters = portable_input(strict.model_json_schema(by_alias=True))
    if tool.fn_metadata.output_schema is not None:
        tool.fn_metadata.output_schema = portable_output(tool.fn_metadata.output_schema, output_keys)
    return tool


_MAX_COST = FieldInfo.from_annotated_attribute(
    Annotated[float | None, NotBool],  # type: ignore[arg-type]
    Field(
        default=None,
        ge=0,
        allow_inf_nan=False,
        description="Most USD this call may cost (refused above). Where the user cannot be asked to confirm, only "
        "a price the user agreed to",
    ),
)


def _generate_image_tool(settings: Settings) -> Tool:
    wait = _wait_seconds(settings, 40)

    async def generate_image(ctx: Context[AppContext], **arguments: Any) -> CallToolResult:
        started = time.monotonic()
        app = _app(ctx)
        approval = arguments.pop("approval")
        max_cost = arguments.pop("max_cost_usd", None)
        mode = _given(arguments.pop("mode", None), _MODE.default)
        wait_seconds = float(_given(arguments.pop("wait_seconds", None), wait.default))
        save = arguments.pop("save", None)
        request, inputs = await _resolve_inputs(ctx, GenerateRequest(**arguments, celery=mode == "async"))
        priced = await _priced(app, request, max_cost=max_cost, approval=approval)
        budget = Budget(
            quote=priced, daily_budget=settings.daily_budget_usd, per_call_cap=settings.max_cost_per_call_usd
        )

        async def start(report: ProgressFn, key: SecretStr | None) -> Generation:
            if app.tracked is not None:
                return await app.tracked.generate(
                    request, wait_seconds=wait_seconds, on_progress=report, api_key=key, budget=budget, inputs=inputs
                )
            generation = await app.jobs.generate(request, wait_seconds=wait_seconds, on_progress=report, api_key=key)
            return generation.model_copy(update={"estimate_usd": priced.estimate_usd})

        generation = await _run(ctx, start, model=request.model, data_uris=has_data_uri(request))
        return await app.finish(
            generation, save=save, wait_seconds=wait_seconds, links=_links_allowed(ctx), started=started
        )

    request_fields = {k: v for k, v in GenerateRequest.model_fields.items() if k != "celery"}
    fields = {**request_fields, "max_cost_usd": _MAX_COST, "mode": _MODE, "wait_seconds": wait, "save": _SAVE}
    _set_signature(
        generate_image,
        [_keyword(name, field) for name, field in fields.items()],
        Annotated[CallToolResult, GenerationResult],
        resolved={"approval": Annotated[ElicitationResult[SpendApproval], Resolve(_spend_approval)]},
    )
    return _tool(
        generate_image,
        title="Generate image",
        description=(
            "Generate images with a Qolaba model; waits up to wait_seconds with progress, else returns a task_id "
            "for get_task. Paid (list_models has prices), except that a call identical to an unfinished or "
            "undelivered one joins it. Image inputs take URLs, earlier results (qolaba://images/<task_id>/<n>), "
            "data: URIs and (stdio) local file paths."
        ),
        read_only=False,
        open_world=True,
        output_keys=_RESULT_KEYS,
    )


async def _resolve_inputs(ctx: Context[AppContext], request: GenerateRequest) -> tuple[GenerateRequest, list[str]]:
    """The request with its image inputs made into what the API takes, and the ledger's record of them.

    The first step of generate_image: a key the server would refuse is refused here, before anything else."""
    app = _app(ctx)
    key = _client_key(ctx, app.settings)

    async def find_image(task_id: str, index: int) -> EarlierImage:
        try:
            generation = await app.runner.get_task(task_id, wait_seconds=0, on_progress=None, api_key=key)
        except TaskNotFoundError:
            raise InputError(f"no task {task_id!r} is known (check the task_id, or generate the image again)") from None
        except QolabaError as exc:
            raise InputError(f"task {task_id} could not be looked up: {exc.message}") from exc
        if generation.status != "SUCCESS":
            raise InputError(f"task {task_id} is {generation.status}, so it has no images to use yet")
        if index >= len(generation.images):
            last = len(generation.images) - 1
            raise InputError(f"task {task_id} has images 0 to {last}; there is no image {index}")
        finished, saved = None, None
        row_id = getattr(generation, "row_id", None)
        if app.tracked is not None and row_id is not None and (row := await app.tracked.ledger.get(row_id)):
            finished = row.finished_at
            saved = row.saved_files[index] if index < len(row.saved_files) else None
        return EarlierImage(url=generation.images[index].url, finished_at=finished, saved_file=saved)

    resolver = InputResolver(
        roots=app.input_roots,
        max_bytes=app.settings.input_max_bytes,
        local_files=app.local_inputs,
        find_image=find_image,
    )
    try:
        return await resolver.resolve_request(request)
    except InputError as exc:
        raise ToolError(f"{exc.message} Nothing was submitted.") from exc


# What the spend-approval resolver answers when it does not ask the user.
_NO_NEED = "no confirmation needed"
_CANNOT_ASK = "the client cannot ask its user"


async def _spend_approval(
    ctx: Context[AppContext],
    model: str,
    quality: str | None,
    num_images: int | None,
    max_cost_usd: float | None,
) -> str | Elicit[SpendApproval]:
    """Before a call above QOLABA_CONFIRM_ABOVE_USD: the question for the user, or why none is asked.

    Runs before the tool body (the SDK asks by elicitation/create before 2026-07-28, by an input_required result
    from then on); the body refuses on a decline, or when the client cannot ask and max_cost_usd does not cover
    the estimate. A call some cap refuses anyway is not put to the user.
    """
    app = _app(ctx)
    threshold = app.settings.confirm_above_usd
    if threshold is None:
        return _NO_NEED
    _client_key(ctx, app.settings)  # refused before the user is asked about a call that cannot be made
    priced = quote(await app.prices.get(), model=model, quality=quality, num_images=num_images)
    estimate = priced.estimate_usd
    if estimate is not None and estimate <= threshold:
        return _NO_NEED
    if check_caps(app.settings, priced, max_cost_usd=max_cost_usd) is not None:
        return _NO_NEED  # refused by the body, whatever the user would say
    if not _can_ask(ctx):
        vouched = max_cost_usd is not None and estimate is not None and max_cost_usd >= estimate
        return _NO_NEED if vouched else _CANNOT_ASK
    spent = await _spent_24h(app, ctx)
    return Elicit(approval_question(priced, spent_24h=spent, budget=app.settings.daily_budget_usd), SpendApproval)


def _can_ask(ctx: Context[AppContext]) -> bool:
    """Whether this client can show its user a form now: it declared form elicitation, and the channel can carry
    the question (an input_required result from 2026-07-28 on; before, a request the session can send)."""
    capabilities = ctx.client_capabilities
    elicitation = capabilities.elicitation if capabilities is not None else None
    if elicitation is None or (elicitation.form is None and elicitation.url is not None):
        return False
    version = ctx.protocol_version
    if version is not None and version >= "2026-07-28":
        return True
    return bool(ctx.session.can_send_request)


async def _spent_24h(app: AppContext, ctx: Context[AppContext]) -> float | None:
    if app.tracked is None:
        return None
    principal = app.tracked.principal(_client_key(ctx, app.settings))
    try:
        report = await app.tracked.ledger.spend_report(principal=principal, now=time.time())
    except LedgerError as exc:
        raise ToolError(f"The spend ledger could not be read ({exc}); nothing was submitted. Retry shortly.") from exc
    return float(report["last_24h"]["total_usd"])


async def _priced(
    app: AppContext, request: GenerateRequest, *, max_cost: float | None, approval: ElicitationResult[Any]
) -> Quote:
    """The call's quote, once the live catalogue's published limits, the caps and the user (if asked) let it go."""
    priced = quote(await app.prices.get(), model=request.model, quality=request.quality, num_images=request.num_images)
    if priced.info is not None and (problem := check_request(priced.info, request)) is not None:
        raise ToolError(f"{problem}. Nothing was submitted.")
    if (problem := check_caps(app.settings, priced, max_cost_usd=max_cost)) is not None:
        raise ToolError(problem)
    if not isinstance(approval, AcceptedElicitation):
        raise ToolError(not_confirmed(priced, approval.action))
    if approval.data == _CANNOT_ASK:
        raise ToolError(cannot_ask(priced, app.settings.confirm_above_usd or 0.0))
    if approval.data == _NO_NEED or (isinstance(approval.data, SpendApproval) and approval.data.approve is True):
        return priced
    raise ToolError(not_confirmed(priced, "decline"))  # only an explicit approve: true spends


def _get_task_tool(settings: Settings) -> Tool:
    wait = _wait_seconds(settings, 0)

    async def get_task(
        ctx: Context[AppContext], task_id: str, wait_seconds: float | None = None, save: bool | None = None
    ) -> CallToolResult:
        started = time.monotonic()
        app = _app(ctx)
        wait_for = float(_given(wait_seconds, wait.default))
        generation = await _run(
            ctx,
            lambda report, key: app.runner.get_task(task_id, wait_seconds=wait_for, on_progress=report, api_key=key),
            task_id=task_id,
        )
        return await app.finish(
            generation, save=save, wait_seconds=wait_for, links=_links_allowed(ctx), started=started
        )

    _set_signature(
        get_task,
        [_keyword("task_id", TaskId), _keyword("wait_seconds", wait), _keyword("save", _SAVE)],
        Annotated[CallToolResult, GenerationResult],
    )
    return _tool(
        get_task,
        title="Get generation task",
        description=(
            "Status and images of a generation started by generate_image; with wait_seconds, waits for it "
            "with progress. Never starts a generation."
        ),
        read_only=True,
        open_world=True,
        output_keys=_RESULT_KEYS,
    )


def _list_models_tool() -> Tool:
    async def list_models(ctx: Context[AppContext], capability: Capability | None = None) -> CallToolResult:
        app = _app(ctx)
        catalog = await app.prices.get()
        warnings = tuple(warning for warning in (app.catalog_warning, app.prices.warning) if warning)
        cached = app.listings.get((capability, warnings))
        if cached is None or cached[0] is not catalog:  # made again only when the catalogue was fetched again
            result = ModelList(
                models=[ListedModel.of(model) for model in catalog.with_capability(capability)], warnings=warnings
            )
            lines = [model_line(model) for model in result.models] or [f"No model has capability {capability}."]
            lines += [f"Warning: {text}" for text in result.warnings]
            cached = app.listings[(capability, warnings)] = (catalog, "\n".join(lines), result.model_dump(mode="json"))
        return CallToolResult(content=[TextContent(text=cached[1])], structured_content=cached[2])

    capability = FieldInfo.from_annotated_attribute(
        Capability | None,  # type: ignore[arg-type]
        Field(default=None, description="List only the models with this capability"),
    )
    _set_signature(list_models, [_keyword("capability", capability)], Annotated[CallToolResult, ModelList])
    return _tool(
        list_models,
        title="List image models",
        description=(
            "Qolaba image models: capabilities, limits, quality presets, parameters, USD per image. Unlisted ids "
            "may still work."
        ),
        read_only=True,
        open_world=False,
    )


_STATES = Literal["submitting", "submitted", "running", "succeeded", "failed", "unknown"]


def _list_generations_tool() -> Tool:
    async def list_generations(
        ctx: Context[AppContext],
        search: str | None = None,
        model: str | None = None,
        status: _STATES | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> CallToolResult:
        query = Query(
            search=search, model=model, state=status, since=_timestamp(since), until=_timestamp(until),
            limit=_given(limit, 10), cursor=cursor,
        )  # fmt: skip
        return history_result(*await _history(ctx, query))

    def field(annotation: Any, description: str, **limits: Any) -> FieldInfo:
        return FieldInfo.from_annotated_attribute(annotation, Field(default=None, description=description, **limits))

    _set_signature(
        list_generations,
        [
            _keyword("search", field(str | None, "Words to find in prompts and model ids", max_length=200)),
            _keyword("model", field(str | None, "Only this model id", max_length=200)),
            _keyword("status", field(_STATES | None, "Only generations in this state")),
            _keyword("since", field(datetime | None, "Only those asked for at or after this time (ISO 8601)")),
            _keyword("until", field(datetime | None, "Only those asked for before this time (ISO 8601)")),
            _keyword("limit", field(Annotated[int | None, NotBool], "How many, newest first; default 10", ge=1, le=50)),
            _keyword("cursor", field(str | None, "next_cursor of the previous page", max_length=200)),
        ],
        Annotated[CallToolResult, GenerationList],
    )
    return _tool(
        list_generations,
        title="List past generations",
        description=(
            "Past generations, newest first (task_id, time, model, status, prompt, images, cost, files): find an "
            "earlier image before generating again."
        ),
        read_only=True,
        open_world=False,
    )


def _get_spend_tool() -> Tool:
    async def get_spend(ctx: Context[AppContext], model: str | None = None) -> CallToolResult:
        app = _app(ctx)
        if app.tracked is None:
            raise ToolError("No spend is tracked: the ledger is off (QOLABA_LEDGER_URL=off).")
        principal = app.tracked.principal(_client_key(ctx, app.settings))
        try:
            report = await app.tracked.ledger.spend_report(principal=principal, now=time.time())
        except LedgerError as exc:
            raise ToolError(f"The spend could not be read from the ledger ({exc}). Retry shortly.") from exc
        result = SpendReport.build(report, app.settings, model=model)
        return CallToolResult(
            content=[TextContent(text=result.text())], structured_content=result.model_dump(mode="json")
        )

    only = FieldInfo.from_annotated_attribute(
        str | None,  # type: ignore[arg-type]
        Field(default=None, max_length=200, description="Only this model id's spend"),
    )
    _set_signature(get_spend, [_keyword("model", only)], Annotated[CallToolResult, SpendReport])
    return _tool(
        get_spend,
        output_keys=frozenset({"last_24h", "remaining_usd"}),
        title="Spending",
        description=(
            "Spend in the last 24 h and 30 days by model, and the limits (daily budget and room left, per-call "
            "cap, confirmation)."
        ),
        read_only=True,
        open_world=False,
    )


_IMAGE_INDEX = Annotated[int, Field(ge=0, le=15, description="Which image, from 0"), NotBool]


def _gallery_image_tool() -> Tool:
    """For the gallery app alone: one image of a finished task as a small picture, so the app needs no network."""

    async def gallery_image(ctx: Context[AppContext], task_id: str, index: int) -> CallToolResult:
        app = _app(ctx)
        image = await _finished_image(ctx, task_id, str(index))
        try:
            data, mime_type = await preview(app.delivery, image, decodes=app.gallery_decodes)
        except QolabaError as exc:
            raise ToolError(f"Could not fetch image {index} of task {task_id}: {exc.message}") from exc
        except NoPreview as exc:
            raise ToolError(f"Image {index} of task {task_id} cannot be shown: {exc}") from exc
        return CallToolResult(content=[ImageContent(data=base64.b64encode(data).decode("ascii"), mime_type=mime_type)])

    _set_signature(gallery_image, [_keyword("task_id", TaskId), _keyword("index", _IMAGE_INDEX)], CallToolResult)
    return _tool(
        gallery_image,
        title="Gallery image",
        description="One image of a finished generation as a JPEG or WebP, long side at most 512 px (for the gallery).",
        read_only=True,
        open_world=True,
    )


def _timestamp(moment: datetime | None) -> float | None:
    if moment is None:
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


async def _history(ctx: Context[AppContext], query: Query) -> tuple[list[LedgerRow], str | None]:
    """The calling principal's rows: another caller's generations are never visible."""
    app = _app(ctx)
    if app.tracked is None:
        # ResourceError: the same text from the tool and the resources (the SDK treats it as a ToolError in a tool)
        raise ResourceError("No history is kept: the ledger is off (QOLABA_LEDGER_URL=off).")
    principal = app.tracked.principal(_client_key(ctx, app.settings))
    try:
        return await app.tracked.history(query.model_copy(update={"principal": principal}))
    except (LedgerError, ValueError) as exc:  # a cursor that is not one of ours
        raise ResourceError(f"The history could not be read: {exc}") from exc


async def _history_json(ctx: Context[AppContext], query: Query) -> str:
    rows, cursor = await _history(ctx, query)
    return GenerationList(generations=[history_row(row) for row in rows], next_cursor=cursor).model_dump_json()


def _add_resources(server: MCPServer) -> None:
    """Results readable through MCP: a task as JSON, and each image's bytes (fetched on read)."""

    @server.resource(
        "qolaba://tasks/{task_id}",
        name="task",
        title="Generation task",
        description="A generation task as JSON: status, images, usage, error.",
        mime_type="application/json",
    )
    async def task_resource(task_id: str, ctx: Context[AppContext]) -> str:
        return (await _task_for_resource(ctx, task_id)).model_dump_json()

    @server.resource(
        "qolaba://generations/newest/{limit}",
        name="generations",
        title="Recent generations",
        description="This caller's {limit} (1 to 50) newest generations as JSON: the list_generations view.",
        mime_type="application/json",
    )
    async def generations_resource(limit: str, ctx: Context[AppContext]) -> str:
        if not (limit.isascii() and limit.isdigit() and 1 <= int(limit) <= 50):
            raise ResourceError(f"{limit[:20]!r} is not a number of generations: give 1 to 50.")
        return await _history_json(ctx, Query(limit=int(limit)))

    @server.resource(
        "qolaba://generations/search/{text}",
        name="generations-search",
        title="Generations matching a search",
        description="This caller's 20 newest generations whose prompt or model matches {text}, as JSON.",
        mime_type="application/json",
    )
    async def generations_search_resource(text: str, ctx: Context[AppContext]) -> str:
        return await _history_json(ctx, Query(search=unquote(text)[:200], limit=20))

    @server.resource(
        "qolaba://images/{task_id}/{index}",
        name="image",
        title="Generated image",
        description="The bytes of image number {index} (from 0) of a finished task, as PNG.",
        mime_type="image/png",
    )
    async def image_resource(task_id: str, index: str, ctx: Context[AppContext]) -> bytes:
        image = await _finished_image(ctx, task_id, index)
        try:
            return await _app(ctx).delivery.fetch_png(image.url)
        except QolabaError as exc:
            raise ResourceError(f"Could not fetch image {index} of task {task_id}: {exc.message}") from exc


async def _finished_image(ctx: Context[AppContext], task_id: str, index: str) -> ImageOutput:
    """Image ``index`` of the caller's finished task (a ResourceError says why not, in a tool too)."""
    # ASCII digits only: "²".isdigit() is true, yet int("²") fails.
    if not (index.isascii() and index.isdigit()):
        raise ResourceError(f"{index[:20]!r} is not an image index: give a number from 0, like 0 or 1.")
    generation = await _task_for_resource(ctx, task_id)
    if generation.status != "SUCCESS":
        raise ResourceError(f"Task {task_id} is {generation.status}: it has no images yet.")
    if len(index) > 6 or int(index) >= len(generation.images):
        raise ResourceError(f"Task {task_id} has images 0 to {len(generation.images) - 1}; no image {index[:20]!r}.")
    return generation.images[int(index)]


async def _read_image_link(url: str, ctx: Context[AppContext]) -> list[ReadResourceContents]:
    """The bytes behind an image link from one of our results: never an open fetcher for other URLs."""
    app = _app(ctx)
    if url not in app.links and not app.delivery.trusts(url):
        raise ResourceNotFoundError(
            f"{url[:200]} is not an image link this server returned (links are readable by the server that "
            "returned them); read qolaba://images/{task_id}/{index} instead."
        )
    try:
        data, kind = await app.delivery.fetch(url)
    except QolabaError as exc:
        raise ResourceError(f"Could not fetch {url[:200]}: {exc.message}") from exc
    return [ReadResourceContents(content=data, mime_type=kind)]


def _links_allowed(ctx: Context[AppContext]) -> bool:
    """Whether results carry resource_link blocks: the operator allows them (QOLABA_RESOURCE_LINKS) and the
    client's protocol has them (from 2025-06-18 on; versions are dates)."""
    version = ctx.protocol_version
    return _app(ctx).settings.resource_links == "on" and (version is None or version >= "2025-06-18")


async def _task_for_resource(ctx: Context[AppContext], task_id: str) -> Generation:
    if not is_safe_task_id(task_id):
        raise ResourceError(f"{task_id[:80]!r} is not a task_id.")
    app = _app(ctx)
    try:
        return await app.runner.get_task(
            task_id, wait_seconds=0, on_progress=None, api_key=_client_key(ctx, app.settings)
        )
    except QolabaError as exc:
        exc.task_id = exc.task_id or task_id
        raise ResourceError(explain(exc, app.catalog)) from exc


def _app(ctx: Context[AppContext]) -> AppContext:
    app = ctx.request_context.lifespan_context
    assert isinstance(app, AppContext)
    return app


async def _run(
    ctx: Context[AppContext],
    start: Callable[[ProgressFn, SecretStr | None], Awaitable[Generation]],
    *,
    task_id: str | None = None,
    model: str | None = None,
    data_uris: bool = False,
) -> Generation:
    """Run a job for a tool call: the caller's key, progress to the caller, stop if it leaves, errors as text."""
    app = _app(ctx)
    try:
        return await _while_connected(ctx, start(_progress_sender(ctx), _client_key(ctx, app.settings)))
    except QolabaError as exc:
        exc.task_id = exc.task_id or task_id
        raise ToolError(explain(exc, app.catalog, model=model, data_uris=data_uris)) from exc


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
    if not (value.isascii() and value.isprintable()):  # never echoed: it is someone's key
        raise ToolError(
            "The X-Qolaba-Api-Key header holds characters a Qolaba API key never has (a key is printable ASCII); "
            "send the key exactly as the Qolaba dashboard shows it."
        )
    return SecretStr(value)


def _progress_sender(ctx: Context[AppContext]) -> ProgressFn:
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
