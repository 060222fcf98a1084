"""The generate_image tool: inputs resolved, spend assessed (once, before the body), the generation run, shaped."""

from __future__ import annotations

import time
from typing import Annotated, Any

from mcp.server.elicitation import AcceptedElicitation, ElicitationResult
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.mcpserver.resolve import Elicit, Resolve
from mcp.server.mcpserver.tools import Tool
from mcp.types import CallToolResult

from .._config import Settings
from ..api._live import check_request
from ..api._wire import GenerateRequest
from ..images._inputs import EarlierImage, InputError, InputResolver, has_data_uri
from ..ledger import LedgerError
from ..money._assess import Assessment, Confirm, Refused, answered, assess
from ..money._spend import Quote, SpendApproval, check_caps
from ._calls import app_of, client_key, finished_result, run_call
from ._context import AppContext
from ._params import RESULT_KEYS, MaxCost, Mode, Save, given, keyword, make_tool, set_signature, wait_limited
from ._results import GenerationResult
from ._task_ext import note_task, task_slot


def generate_image_tool(settings: Settings) -> Tool:
    wait, wait_default = wait_limited(settings, 40)

    async def generate_image(ctx: Context[AppContext], **arguments: Any) -> CallToolResult:
        started = time.monotonic()
        app = app_of(ctx)
        spend: Assessment = arguments.pop("spend")
        approval: ElicitationResult[Any] = arguments.pop("approval")
        max_cost = arguments.pop("max_cost_usd", None)  # assessed with the spend
        mode = given(arguments.pop("mode", None), "async")
        wait_seconds = float(given(arguments.pop("wait_seconds", None), wait_default))
        slot = task_slot()
        if slot is not None:  # a task: answered once submitted and recorded, followed by tasks/get
            wait_seconds = 0.0
        save = arguments.pop("save", None)
        request, inputs = await _resolve_inputs(
            ctx, GenerateRequest(**arguments, celery=mode == "async" or app.sync_as_async)
        )
        priced = _spend_verdict(app, request, spend, approval, max_cost)
        app.ops.generation_started(request.model, estimate_usd=priced.estimate_usd, prompt=request.prompt)
        generation = await run_call(
            ctx,
            lambda report, key: app.generations.generate(
                request, quote=priced, wait_seconds=wait_seconds, on_progress=report, api_key=key, inputs=inputs
            ),
            model=request.model,
            data_uris=has_data_uri(request),
        )
        note_task(slot, generation)
        return await finished_result(ctx, generation, save=save, wait_seconds=wait_seconds, started=started)

    request_fields = {k: v for k, v in GenerateRequest.model_fields.items() if k != "celery"}
    params = [keyword(name, field) for name, field in request_fields.items()]
    params += [
        keyword("max_cost_usd", MaxCost, None),
        keyword("mode", Mode, "async"),
        keyword("wait_seconds", wait, wait_default),
        keyword("save", Save, None),
    ]
    set_signature(
        generate_image,
        params,
        Annotated[CallToolResult, GenerationResult],
        resolved={
            "spend": Annotated[Assessment, Resolve(_assessed)],
            "approval": Annotated[ElicitationResult[SpendApproval], Resolve(_confirmation)],
        },
    )
    return make_tool(
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
        output_keys=RESULT_KEYS,
    )


async def _resolve_inputs(ctx: Context[AppContext], request: GenerateRequest) -> tuple[GenerateRequest, list[str]]:
    """The request with its image inputs made into what the API takes, and the ledger's record of them.

    The first step of generate_image: a key the server would refuse is refused here, before anything else."""
    app = app_of(ctx)
    key = client_key(ctx, app.settings)

    async def find_image(task_id: str, index: int) -> EarlierImage:
        return await app.generations.earlier_image(task_id, index, api_key=key)

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


async def _assessed(
    ctx: Context[AppContext], model: str, quality: str | None, num_images: int | None, max_cost_usd: float | None
) -> Assessment:
    """The call's spend, assessed once, before the tool body (the SDK runs resolvers first)."""
    app = app_of(ctx)
    key = client_key(ctx, app.settings)  # a call that cannot be made is refused before the API is asked for prices

    async def spent_24h() -> float | None:
        try:
            return await app.generations.spent_24h(api_key=key)
        except LedgerError as exc:
            raise ToolError(
                f"The spend ledger could not be read ({exc}); nothing was submitted. Retry shortly."
            ) from exc

    return await assess(
        await app.prices.get(),
        app.settings,
        model=model,
        quality=quality,
        num_images=num_images,
        max_cost_usd=max_cost_usd,
        can_ask=_can_ask(ctx),
        spent_24h=spent_24h,
    )


async def _confirmation(
    spend: Annotated[Assessment, Resolve(_assessed)],
) -> Assessment | Elicit[SpendApproval]:
    """The user's answer where the assessment needs one (asked by elicitation/create before 2026-07-28, by an
    input_required result from then on); else the assessment itself."""
    if isinstance(spend, Confirm):
        return Elicit(spend.question, SpendApproval)
    return spend


def _spend_verdict(
    app: AppContext,
    request: GenerateRequest,
    spend: Assessment,
    approval: ElicitationResult[Any],
    max_cost: float | None,
) -> Quote:
    """The quote to generate at, once the live list's published limits, the assessment and the user let it go."""
    info = spend.quote.info
    if info is not None and (problem := check_request(info, request)) is not None:
        app.ops.refused("validation")
        raise ToolError(f"{problem}. Nothing was submitted.")
    data = approval.data if isinstance(approval, AcceptedElicitation) else None
    verdict = answered(spend, action=approval.action, approve=isinstance(data, SpendApproval) and data.approve is True)
    if isinstance(verdict, Refused):
        # a cap refuses whatever the user says; otherwise no user approved it (declined, or could not be asked)
        capped = check_caps(app.settings, spend.quote, max_cost_usd=max_cost) is not None
        app.ops.refused("per_call_cap" if capped else "confirmation_declined")
        raise ToolError(verdict.text)
    return verdict.quote


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
