"""The get_task and gallery_image tools, and a caller's finished task and image as resources read them."""

from __future__ import annotations

import base64
import time
from typing import Annotated

from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ResourceError, ToolError
from mcp.server.mcpserver.tools import Tool
from mcp.types import CallToolResult, ImageContent

from .._config import Settings
from .._errors import QolabaError
from ..api._wire import ImageOutput, is_safe_task_id
from ..generations._rows import Recorded
from ..images._delivery import NoPreview
from ._calls import app_of, client_key, finished_result, run_call
from ._context import AppContext
from ._gallery import preview
from ._params import RESULT_KEYS, ImageIndex, Save, TaskId, WaitSeconds, given, limit_wait, make_tool, wait_limited
from ._results import GenerationResult, explain
from ._task_ext import note_task, task_slot


def get_task_tool(settings: Settings) -> Tool:
    _, wait_default = wait_limited(settings, 0)

    async def get_task(
        ctx: Context[AppContext], task_id: TaskId, wait_seconds: WaitSeconds = None, save: Save = None
    ) -> Annotated[CallToolResult, GenerationResult]:
        started = time.monotonic()
        app = app_of(ctx)
        wait_for = float(given(wait_seconds, wait_default))
        slot = task_slot() if wait_for > 0 else None  # asked to wait, by a caller who takes a task instead
        if slot is not None:
            wait_for = 0.0
        generation = await run_call(
            ctx,
            lambda report, key: app.generations.get(task_id, wait_seconds=wait_for, on_progress=report, api_key=key),
            task_id=task_id,
        )
        note_task(slot, generation)
        return await finished_result(ctx, generation, save=save, wait_seconds=wait_for, started=started)

    limit_wait(get_task, settings, 0)
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


async def gallery_image(ctx: Context[AppContext], task_id: TaskId, index: ImageIndex) -> CallToolResult:
    """For the gallery app alone: one image of a finished task as a small picture, so the app needs no network."""
    app = app_of(ctx)
    image = await finished_image(ctx, task_id, str(index))
    try:
        data, mime_type = await preview(app.delivery, image, decodes=app.gallery_decodes)
    except QolabaError as exc:
        raise ToolError(f"Could not fetch image {index} of task {task_id}: {exc.message}") from exc
    except NoPreview as exc:
        raise ToolError(f"Image {index} of task {task_id} cannot be shown: {exc}") from exc
    return CallToolResult(content=[ImageContent(data=base64.b64encode(data).decode("ascii"), mime_type=mime_type)])


def gallery_image_tool() -> Tool:
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


async def task_for_resource(ctx: Context[AppContext], task_id: str) -> Recorded:
    """The caller's task as it is now, without waiting (a ResourceError says why not)."""
    if not is_safe_task_id(task_id):
        raise ResourceError(f"{task_id[:80]!r} is not a task_id.")
    app = app_of(ctx)
    try:
        return await app.generations.get(task_id, wait_seconds=0, api_key=client_key(ctx, app.settings))
    except QolabaError as exc:
        exc.task_id = exc.task_id or task_id
        raise ResourceError(explain(exc, app.catalog)) from exc
