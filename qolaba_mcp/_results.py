"""Tool results and tool-error texts: what the agent reads, kept small and written for its next move."""

from __future__ import annotations

import base64
from pathlib import Path

from mcp.types import CallToolResult, ImageContent, ResourceLink, TextContent
from pydantic import BaseModel, Field

from ._catalog import Catalog, ModelInfo
from ._delivery import Delivered
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
from ._jobs import Generation

TEXT_BUDGET = 1800  # bytes of summary text; a 4-image result must stay under 2 KB


class GenerationResult(Generation):
    """The result of generate_image and get_task."""

    next_step: str | None = Field(default=None, description="What to do next, when the task is not done.")
    saved_files: list[str | None] = Field(
        default_factory=list, description="Local path of each image, in order (null where not saved)."
    )
    notes: list[str] = Field(default_factory=list, description="Delivery problems (previews, saving).")


class ModelList(BaseModel):
    """The result of list_models."""

    models: list[ModelInfo]
    warnings: list[str] = Field(default_factory=list)


def generation_result(
    generation: Generation, delivered: Delivered | None, *, wait_seconds: float, max_wait: float
) -> CallToolResult:
    """A short text, one resource_link (and preview, when made) per image, and the structured result."""
    result = GenerationResult(**generation.model_dump())
    if delivered is not None:
        result.saved_files = delivered.saved if any(delivered.saved) else []
        result.notes = delivered.notes
    if not generation.done:
        result.next_step = (
            f'Not finished after waiting {wait_seconds:g} s. Call get_task with task_id="{generation.task_id}" '
            f"and wait_seconds={min(max(wait_seconds, 30), max_wait):g} to keep waiting. Do not call "
            "generate_image again: the task is already running."
        )
    previews = {preview.index: preview for preview in (delivered.previews if delivered else [])}
    content: list[TextContent | ResourceLink | ImageContent] = [TextContent(text=summary(result))]
    for index, image in enumerate(result.images):
        content.append(
            ResourceLink(
                name=f"{result.task_id or 'image'}-{index}",
                uri=image.url,
                mime_type=image.content_type or "image/png",
                description=f"{image.width}x{image.height}" if image.width and image.height else None,
            )
        )
        if index in previews:
            preview = previews[index]
            content.append(
                ImageContent(data=base64.b64encode(preview.data).decode("ascii"), mime_type=preview.mime_type)
            )
    return CallToolResult(
        content=content,
        structured_content=result.model_dump(mode="json"),
        is_error=generation.status == "FAILED",
    )


def summary(result: GenerationResult) -> str:
    if result.status == "FAILED":
        return (
            f"Generation failed (task_id {result.task_id}): {result.error}. Adjust the prompt or parameters and "
            "call generate_image again."
        )
    if result.status != "SUCCESS":
        text = f"Task {result.task_id} is {result.status} after {result.elapsed_seconds:.1f} s. {result.next_step}"
        if result.poll_error:
            text += f" (Last poll failed: {result.poll_error[:300]})"
        return text
    cost = ""
    if result.usage and result.usage.cost_credits is not None:
        cost = f", cost {result.usage.cost_credits:g} credits (${result.usage.cost_usd or 0:g})"
    head = (
        f"Generated {len(result.images)} image(s) with {result.model or 'the model'} in "
        f"{result.elapsed_seconds:.1f} s (task_id {result.task_id}, seed {result.seed}{cost})"
    )
    saved = [Path(path) for path in result.saved_files if path]
    tail = [f"Saved in {saved[0].parent}: {', '.join(path.name for path in saved)}"] if saved else []
    tail += [f"Note: {note[:200]}" for note in result.notes[:4]]
    lines = [f"{head}:"]
    for index, image in enumerate(result.images, start=1):
        size = f" ({image.width}x{image.height})" if image.width and image.height else ""
        lines.append(f"{index}. {image.url}{size}")
    text = "\n".join([*lines, *tail])
    if len(text.encode()) > TEXT_BUDGET:  # long signed URLs: they are in the resource links already
        text = "\n".join([f"{head}. The image URLs are in the resource links below.", *tail])
    return text[:TEXT_BUDGET]


def model_line(model: ModelInfo) -> str:
    status = "documented" if model.documented else "assumed"
    return (
        f"{model.id} ({model.display_name}): {', '.join(model.capabilities)}; max images {model.max_images}; "
        f"aspect ratios {', '.join(model.aspect_ratios)}; quality {', '.join(model.qualities)}; "
        f"parameters {', '.join(model.parameters)} [{status}]"
    )


def explain(exc: QolabaError, catalog: Catalog, *, model: str | None = None) -> str:
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
