"""The get_task and gallery_image tools: a task's status and images, by task_id."""

from __future__ import annotations

import base64
import time
from typing import Annotated

from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ResourceError, ToolError
from mcp.server.mcpserver.tools import Tool
from mcp.types import (
    CallToolResult,
    ImageContent,
)

from .._config import Settings
from .._errors import QolabaError
from ..api._wire import ImageOutput, is_safe_task_id
from ..generations._runner import Generation
from ..images._delivery import NoPreview
from ._calls import app_of, client_key, links_allowed, run_call
from ._context import AppContext
from ._gallery import preview
from ._params import (
    IMAGE_INDEX,
    RESULT_KEYS,
    SAVE,
    TaskId,
    given,
    keyword,
    make_tool,
    set_signature,
    wait_seconds_field,
)
from ._results import (
    GenerationResult,
    explain,
)


def get_task_tool(settings: Settings) -> Tool:
    wait = wait_seconds_field(settings, 0)

    async def get_task(
        ctx: Context[AppContext], task_id: str, wait_seconds: float | None = None, save: bool | None = None
    ) -> CallToolResult:
        started = time.monotonic()
        app = app_of(ctx)
        wait_for = float(given(wait_seconds, wait.default))
        generation = await run_call(
            ctx,
            lambda report, key: app.runner.get_task(task_id, wait_seconds=wait_for, on_progress=report, api_key=key),
            task_id=task_id,
        )
        return await app.finish(generation, save=save, wait_seconds=wait_for, links=links_allowed(ctx), started=started)

    set_signature(
        get_task,
        [keyword("task_id", TaskId), keyword("wait_seconds", wait), keyword("save", SAVE)],
        Annotated[CallToolResult, GenerationResult],
    )
    return make_tool(
        get_task,
        title="Get generation task",
        description=(
            "Status and images of a generation started by generate_image; with wait_seconds, waits for it "
            "with progress. Never starts a generation."
        ),
        read_only=True,
        open_world=True,
        output_keys=RESULT_KEYS,
    )


def gallery_image_tool() -> Tool:
    """For the gallery app alone: one image of a finished task as a small picture, so the app needs no network."""

    async def gallery_image(ctx: Context[AppContext], task_id: str, index: int) -> CallToolResult:
        app = app_of(ctx)
        image = await finished_image(ctx, task_id, str(index))
        try:
            data, mime_type = await preview(app.delivery, image, decodes=app.gallery_decodes)
        except QolabaError as exc:
            raise ToolError(f"Could not fetch image {index} of task {task_id}: {exc.message}") from exc
        except NoPreview as exc:
            raise ToolError(f"Image {index} of task {task_id} cannot be shown: {exc}") from exc
        return CallToolResult(content=[ImageContent(data=base64.b64encode(data).decode("ascii"), mime_type=mime_type)])

    set_signature(gallery_image, [keyword("task_id", TaskId), keyword("index", IMAGE_INDEX)], CallToolResult)
    return make_tool(
        gallery_image,
        title="Gallery image",
        description="One image of a finished generation as a JPEG or WebP, long side at most 512 px (for the gallery).",
        read_only=True,
        open_world=True,
    )


async def finished_image(ctx: Context[AppContext], task_id: str, index: str) -> ImageOutput:
    """Image ``index`` of the caller's finished task (a ResourceError says why not, in a tool too)."""
    # ASCII digits only: "²".isdigit() is true, yet int("²") fails.
    if not (index.isascii() and index.isdigit()):
        raise ResourceError(f"{index[:20]!r} is not an image index: give a number from 0, like 0 or 1.")
    generation = await task_for_resource(ctx, task_id)
    if generation.status != "SUCCESS":
        raise ResourceError(f"Task {task_id} is {generation.status}: it has no images yet.")
    if len(index) > 6 or int(index) >= len(generation.images):
        raise ResourceError(f"Task {task_id} has images 0 to {len(generation.images) - 1}; no image {index[:20]!r}.")
    return generation.images[int(index)]


async def task_for_resource(ctx: Context[AppContext], task_id: str) -> Generation:
    if not is_safe_task_id(task_id):
        raise ResourceError(f"{task_id[:80]!r} is not a task_id.")
    app = app_of(ctx)
    try:
        return await app.runner.get_task(
            task_id, wait_seconds=0, on_progress=None, api_key=client_key(ctx, app.settings)
        )
    except QolabaError as exc:
        exc.task_id = exc.task_id or task_id
        raise ResourceError(explain(exc, app.catalog)) from exc
