"""The generate_image tool: inputs resolved, spend assessed, the generation run and its result shaped."""

from __future__ import annotations

import time
from typing import Annotated, Any

from mcp.server.elicitation import AcceptedElicitation, ElicitationResult
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.mcpserver.resolve import Elicit, Resolve
from mcp.server.mcpserver.tools import Tool
from mcp.types import (
    CallToolResult,
)
from pydantic import SecretStr

from .._config import Settings
from .._errors import QolabaError, TaskNotFoundError
from ..api._live import check_request
from ..api._wire import GenerateRequest
from ..generations._recorded import SpendLimits
from ..generations._runner import Generation, ProgressFn
from ..images._inputs import EarlierImage, InputError, InputResolver, has_data_uri
from ..ledger import LedgerError
from ..money._spend import (
    Quote,
    SpendApproval,
    approval_question,
    cannot_ask,
    check_caps,
    not_confirmed,
    quote,
)
from ._calls import app_of, client_key, links_allowed, run_call
from ._context import AppContext
from ._params import MAX_COST, MODE, RESULT_KEYS, SAVE, given, keyword, make_tool, set_signature, wait_seconds_field
from ._results import (
    GenerationResult,
)


def generate_image_tool(settings: Settings) -> Tool:
    wait = wait_seconds_field(settings, 40)

    async def generate_image(ctx: Context[AppContext], **arguments: Any) -> CallToolResult:
        started = time.monotonic()
        app = app_of(ctx)
        approval = arguments.pop("approval")
        max_cost = arguments.pop("max_cost_usd", None)
        mode = given(arguments.pop("mode", None), MODE.default)
        wait_seconds = float(given(arguments.pop("wait_seconds", None), wait.default))
        save = arguments.pop("save", None)
        request, inputs = await _resolve_inputs(ctx, GenerateRequest(**arguments, celery=mode == "async"))
        priced = await _priced(app, request, max_cost=max_cost, approval=approval)
        budget = SpendLimits(
            quote=priced, daily_budget=settings.daily_budget_usd, per_call_cap=settings.max_cost_per_call_usd
        )

        async def start(report: ProgressFn, key: SecretStr | None) -> Generation:
            if app.tracked is not None:
                return await app.tracked.generate(
                    request, wait_seconds=wait_seconds, on_progress=report, api_key=key, limits=budget, inputs=inputs
                )
            generation = await app.jobs.generate(request, wait_seconds=wait_seconds, on_progress=report, api_key=key)
            return generation.model_copy(update={"estimate_usd": priced.estimate_usd})

        generation = await run_call(ctx, start, model=request.model, data_uris=has_data_uri(request))
        return await app.finish(
            generation, save=save, wait_seconds=wait_seconds, links=links_allowed(ctx), started=started
        )

    request_fields = {k: v for k, v in GenerateRequest.model_fields.items() if k != "celery"}
    fields = {**request_fields, "max_cost_usd": MAX_COST, "mode": MODE, "wait_seconds": wait, "save": SAVE}
    set_signature(
        generate_image,
        [keyword(name, field) for name, field in fields.items()],
        Annotated[CallToolResult, GenerationResult],
        resolved={"approval": Annotated[ElicitationResult[SpendApproval], Resolve(_spend_approval)]},
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
    app = app_of(ctx)
    threshold = app.settings.confirm_above_usd
    if threshold is None:
        return _NO_NEED
    client_key(ctx, app.settings)  # refused before the user is asked about a call that cannot be made
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
    principal = app.tracked.principal(client_key(ctx, app.settings))
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
