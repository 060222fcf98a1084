"""The list_generations and get_spend tools, and the caller's history as the resources read it."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ResourceError, ToolError
from mcp.server.mcpserver.tools import Tool
from mcp.types import CallToolResult, TextContent

from ..generations._generations import NoLedgerError
from ..ledger import LedgerError, LedgerRow, Query
from ..money._spend import SpendReport
from ._calls import app_of, client_key
from ._context import AppContext
from ._params import Cursor, Limit, ModelFilter, ModelSpend, Search, Since, StatusFilter, Until, given, make_tool
from ._results import GenerationList, history_result, history_row


async def list_generations(
    ctx: Context[AppContext],
    search: Search = None,
    model: ModelFilter = None,
    status: StatusFilter = None,
    since: Since = None,
    until: Until = None,
    limit: Limit = None,
    cursor: Cursor = None,
) -> Annotated[CallToolResult, GenerationList]:
    query = Query(
        search=search, model=model, state=status, since=_timestamp(since), until=_timestamp(until),
        limit=given(limit, 10), cursor=cursor,
    )  # fmt: skip
    return history_result(*await caller_history(ctx, query))


def list_generations_tool() -> Tool:
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


async def get_spend(ctx: Context[AppContext], model: ModelSpend = None) -> Annotated[CallToolResult, SpendReport]:
    app = app_of(ctx)
    try:
        report = await app.generations.spend(api_key=client_key(ctx, app.settings), model=model)
    except NoLedgerError as exc:
        raise ToolError(exc.message) from None
    except LedgerError as exc:
        raise ToolError(f"The spend could not be read from the ledger ({exc}). Retry shortly.") from exc
    return CallToolResult(content=[TextContent(text=report.text())], structured_content=report.model_dump(mode="json"))


def get_spend_tool() -> Tool:
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
    """The calling principal's rows: another caller's generations are never visible.

    ResourceError: the same text from the tool and the resources (the SDK treats it as a ToolError in a tool)."""
    app = app_of(ctx)
    try:
        return await app.generations.history(query, api_key=client_key(ctx, app.settings))
    except NoLedgerError as exc:
        raise ResourceError(exc.message) from None
    except (LedgerError, ValueError) as exc:  # a cursor that is not one of ours
        raise ResourceError(f"The history could not be read: {exc}") from exc


async def history_json(ctx: Context[AppContext], query: Query) -> str:
    rows, cursor = await caller_history(ctx, query)
    return GenerationList(generations=[history_row(row) for row in rows], next_cursor=cursor).model_dump_json()
