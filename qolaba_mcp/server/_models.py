"""The list_models tool: the catalogue with live prices, its text kept until the catalogue is fetched again."""

from __future__ import annotations

from typing import Annotated

from mcp.server.mcpserver import Context
from mcp.server.mcpserver.tools import Tool
from mcp.types import CallToolResult, TextContent

from ._calls import app_of
from ._context import AppContext
from ._params import CapabilityFilter, make_tool
from ._results import ListedModel, ModelList, model_line


async def list_models(
    ctx: Context[AppContext], capability: CapabilityFilter = None
) -> Annotated[CallToolResult, ModelList]:
    app = app_of(ctx)
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


def list_models_tool() -> Tool:
    return make_tool(
        list_models,
        title="List image models",
        description=(
            "Qolaba image models: capabilities, limits, quality presets, parameters, USD per image. Unlisted ids "
            "may still work."
        ),
        read_only=True,
        open_world=False,
    )
