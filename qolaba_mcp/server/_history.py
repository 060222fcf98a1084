"""The list_generations and get_spend tools: the caller's history and spend from the ledger."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Annotated, Any

from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ResourceError, ToolError
from mcp.server.mcpserver.tools import Tool
from mcp.types import (
    CallToolResult,
    TextContent,
)
from pydantic import Field
from pydantic.fields import FieldInfo

from ..api._wire import NotBool
from ..ledger import LedgerError, LedgerRow, Query
from ..money._spend import (
    SpendReport,
)
from ._calls import app_of, client_key
from ._context import AppContext
from ._params import STATES, given, keyword, make_tool, set_signature
from ._results import (
    GenerationList,
    history_result,
    history_row,
)


def list_generations_tool() -> Tool:
    async def list_generations(
        ctx: Context[AppContext],
        search: str | None = None,
        model: str | None = None,
        status: STATES | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> CallToolResult:
        query = Query(
            search=search, model=model, state=status, since=_timestamp(since), until=_timestamp(until),
            limit=given(limit, 10), cursor=cursor,
        )  # fmt: skip
        return history_result(*await caller_history(ctx, query))

    def field(annotation: Any, description: str, **limits: Any) -> FieldInfo:
        return FieldInfo.from_annotated_attribute(annotation, Field(default=None, description=description, **limits))

    set_signature(
        list_generations,
        [
            keyword("search", field(str | None, "Words to find in prompts and model ids", max_length=200)),
            keyword("model", field(str | None, "Only this model id", max_length=200)),
            keyword("status", field(STATES | None, "Only generations in this state")),
            keyword("since", field(datetime | None, "Only those asked for at or after this time (ISO 8601)")),
            keyword("until", field(datetime | None, "Only those asked for before this time (ISO 8601)")),
            keyword("limit", field(Annotated[int | None, NotBool], "How many, newest first; default 10", ge=1, le=50)),
            keyword("cursor", field(str | None, "next_cursor of the previous page", max_length=200)),
        ],
        Annotated[CallToolResult, GenerationList],
    )
    return make_tool(
        list_generations,
        title="List past generations",
        description=(
            "Past generations, newest first (task_id, time, model, status, prompt, images, cost, files): find an "
            "earlier image before generating again."
        ),
        read_only=True,
        open_world=False,
    )


def get_spend_tool() -> Tool:
    async def get_spend(ctx: Context[AppContext], model: str | None = None) -> CallToolResult:
        app = app_of(ctx)
        if app.tracked is None:
            raise ToolError("No spend is tracked: the ledger is off (QOLABA_LEDGER_URL=off).")
        principal = app.tracked.principal(client_key(ctx, app.settings))
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
    set_signature(get_spend, [keyword("model", only)], Annotated[CallToolResult, SpendReport])
    return make_tool(
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


def _timestamp(moment: datetime | None) -> float | None:
    if moment is None:
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


async def caller_history(ctx: Context[AppContext], query: Query) -> tuple[list[LedgerRow], str | None]:
    """The calling principal's rows: another caller's generations are never visible."""
    app = app_of(ctx)
    if app.tracked is None:
        # ResourceError: the same text from the tool and the resources (the SDK treats it as a ToolError in a tool)
        raise ResourceError("No history is kept: the ledger is off (QOLABA_LEDGER_URL=off).")
    principal = app.tracked.principal(client_key(ctx, app.settings))
    try:
        return await app.tracked.history(query.model_copy(update={"principal": principal}))
    except (LedgerError, ValueError) as exc:  # a cursor that is not one of ours
        raise ResourceError(f"The history could not be read: {exc}") from exc


async def history_json(ctx: Context[AppContext], query: Query) -> str:
    rows, cursor = await caller_history(ctx, query)
    return GenerationList(generations=[history_row(row) for row in rows], next_cursor=cursor).model_dump_json()
