"""The MCP resources: a task, recent generations, a search, an image's bytes, and our image links."""

from __future__ import annotations

from urllib.parse import unquote

from mcp.server.lowlevel.helper_types import ReadResourceContents
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ResourceError, ResourceNotFoundError

from .._errors import QolabaError
from ..ledger import Query
from ._calls import app_of
from ._context import AppContext
from ._history import history_json
from ._tasks import finished_image, task_for_resource


def add_resources(server: MCPServer) -> None:
    """Results readable through MCP: a task as JSON, and each image's bytes (fetched on read)."""

    @server.resource(
        "qolaba://tasks/{task_id}",
        name="task",
        title="Generation task",
        description="A generation task as JSON: status, images, usage, error.",
        mime_type="application/json",
    )
    async def task_resource(task_id: str, ctx: Context[AppContext]) -> str:
        return (await task_for_resource(ctx, task_id)).model_dump_json()

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
        return await history_json(ctx, Query(limit=int(limit)))

    @server.resource(
        "qolaba://generations/search/{text}",
        name="generations-search",
        title="Generations matching a search",
        description="This caller's 20 newest generations whose prompt or model matches {text}, as JSON.",
        mime_type="application/json",
    )
    async def generations_search_resource(text: str, ctx: Context[AppContext]) -> str:
        return await history_json(ctx, Query(search=unquote(text)[:200], limit=20))

    @server.resource(
        "qolaba://images/{task_id}/{index}",
        name="image",
        title="Generated image",
        description="The bytes of image number {index} (from 0) of a finished task, as PNG.",
        mime_type="image/png",
    )
    async def image_resource(task_id: str, index: str, ctx: Context[AppContext]) -> bytes:
        image = await finished_image(ctx, task_id, index)
        try:
            return await app_of(ctx).delivery.fetch_png(image.url)
        except QolabaError as exc:
            raise ResourceError(f"Could not fetch image {index} of task {task_id}: {exc.message}") from exc


async def read_image_link(url: str, ctx: Context[AppContext]) -> list[ReadResourceContents]:
    """The bytes behind an image link from one of our results: never an open fetcher for other URLs."""
    app = app_of(ctx)
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
