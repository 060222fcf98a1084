"""Tool results and tool-error texts: what the agent reads, kept small and written for its next move."""

from __future__ import annotations

import base64
import difflib
import json
import logging
import re
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

from mcp.types import CallToolResult, ImageContent, ResourceLink, TextContent
from pydantic import BaseModel, Field, ValidationError

from .._errors import (
    AuthenticationError,
    BadRequestError,
    InvalidTaskIdError,
    MissingApiKeyError,
    NetworkError,
    QolabaError,
    RateLimitError,
    ServerError,
    TaskNotFoundError,
)
from ..api._catalog import Catalog, ModelInfo
from ..api._wire import url_problem
from ..generations._rows import result_status, row_seed
from ..generations._runner import Generation, Status, is_local_task_id
from ..images._delivery import Delivered
from ..ledger import LedgerRow
from ..money._spend import SpendRefusedError, usd

log = logging.getLogger("qolaba_mcp.results")

TEXT_BUDGET = 1800  # bytes of summary text; a 4-image result must stay under 2 KB
LEGACY_TEXT_BUDGET = 20_000  # the same, with every URL, for clients that get no resource links
MAX_NOTES = 20  # notes kept in one result, each cut to NOTE_CHARS
NOTE_CHARS = 300


class GenerationResult(Generation):
    """The result of generate_image and get_task."""

    joined: bool = Field(
        default=False, description="True when this call joined an identical earlier generation instead of paying again."
    )

    cost_usd: float | None = Field(default=None, description="What the API reported this task cost, USD.")
    next_step: str | None = Field(default=None, description="What to do next, when the task is not done.")
    saved_files: list[str | None] = Field(
        default_factory=list, description="Local path of each image, in order (null where not saved)."
    )


class ListedModel(ModelInfo):
    """A model as list_models shows it: its limits, and its price per image by quality with where that came from."""

    usd_per_image: dict[str, float] = Field(description="USD per image for each quality preset.")
    price_from: str = Field(description="live: Qolaba's published model list; built-in (assumed): our estimate.")

    @classmethod
    def of(cls, model: ModelInfo) -> ListedModel:
        return cls(**model.model_dump(), usd_per_image=model.price_usd, price_from=model.price_source)


class ModelList(BaseModel):
    """The result of list_models."""

    models: list[ListedModel]
    warnings: list[str] = Field(default_factory=list)


def generation_result(
    generation: Generation, delivered: Delivered | None, *, wait_seconds: float, max_wait: float, links: bool = True
) -> CallToolResult:
    """A short text, one resource_link (and preview, when made) per image, and the structured result.

    Never fails on one image: an image whose URL is unusable gets a note instead of a link, and keeps its place.
    ``links=False`` is for clients whose protocol predates resource links (before 2025-06-18): the URLs then
    stay in the text, which may grow to LEGACY_TEXT_BUDGET.
    """
    result = GenerationResult(**generation.model_dump())
    result.cost_usd = generation.usage.cost_usd if generation.usage else None
    notes = list(generation.notes)
    if delivered is not None:
        result.saved_files = delivered.saved if any(delivered.saved) else []
        notes += delivered.notes
    result.next_step = next_step(generation, wait_seconds=wait_seconds, max_wait=max_wait)
    previews = {preview.index: preview for preview in (delivered.previews if delivered else [])}
    blocks: list[ResourceLink | ImageContent] = []
    for index, image in enumerate(result.images):
        problem = url_problem(image.url)
        try:
            if problem is None and links:
                blocks.append(
                    ResourceLink(
                        name=f"{result.task_id or 'image'}-{index}",
                        uri=image.url,
                        mime_type=image.content_type or "image/png",
                        description=f"{image.width}x{image.height}" if image.width and image.height else None,
                    )
                )
            if index in previews:
                preview = previews[index]
                blocks.append(
                    ImageContent(data=base64.b64encode(preview.data).decode("ascii"), mime_type=preview.mime_type)
                )
        except ValueError as exc:  # a ValidationError too: whatever one image holds, the others and the task stay
            log.warning("image %d of %s could not be shaped: %s", index + 1, result.task_id, type(exc).__name__)
            problem = problem or "it could not be put in the result"
        if problem is not None:
            notes.append(f"image {index + 1}: no link, {problem}")
    result.notes = [note[:NOTE_CHARS] for note in notes[:MAX_NOTES]]
    if len(notes) > MAX_NOTES:
        result.notes.append(f"and {len(notes) - MAX_NOTES} more notes")
    return CallToolResult(
        content=[TextContent(text=summary(result, links=links)), *blocks],
        structured_content=result.model_dump(mode="json"),
        is_error=generation.status == "FAILED",
    )


def next_step(generation: Generation, *, wait_seconds: float, max_wait: float) -> str | None:
    """What the agent should do with a task that is not finished, or None once it is."""
    if generation.done:
        return None
    if generation.status == "UNKNOWN":
        return (
            "Check before retrying: the submission was sent but its answer was never recorded, so a task may exist "
            "(see the Qolaba dashboard). A new generate_image call may be a second paid generation."
        )
    if generation.task_id is None:
        return (
            "An identical call is submitting this generation right now. Call generate_image again with the same "
            "arguments in a few seconds: it joins that generation and does not pay again."
        )
    task = f'task_id="{generation.task_id}"'
    again = min(max(wait_seconds, 30), max_wait)
    if is_local_task_id(generation.task_id):
        return (
            f"The synchronous request was still running after {wait_seconds:g} s; it goes on in this server and was "
            f"not abandoned. Call get_task with {task} and wait_seconds={again:g}: it returns the images once the "
            "request finishes. Do not call generate_image again: that would be a second paid generation."
        )
    if generation.retry_after is not None:
        return (
            f"The API asked to wait {generation.retry_after:g} s before polling again. Call get_task with {task} "
            "after that. Do not call generate_image again: the task is already running."
        )
    return (
        f"Not finished after waiting {wait_seconds:g} s. Call get_task with {task} and wait_seconds={again:g} to "
        "keep waiting. Do not call generate_image again: the task is already running."
    )


def summary(result: GenerationResult, *, links: bool = True) -> str:
    """The result's text block, at most TEXT_BUDGET bytes whatever the API sent (more without links)."""
    if result.status == "FAILED":
        return clip(
            f"Generation failed (task_id {result.task_id}): {result.error}. Adjust the prompt or parameters and "
            "call generate_image again.",
            TEXT_BUDGET,
        )
    joined = "Joined the identical generation already under way (no second payment). " if result.joined else ""
    if result.status == "UNKNOWN" and result.task_id is None and result.error:
        return clip(f"{joined}Status UNKNOWN. {result.error} {result.next_step}", TEXT_BUDGET)  # what is known of it
    if result.status != "SUCCESS":
        text = (
            f"{joined}Task {result.task_id} is {result.status} after {result.elapsed_seconds:.1f} s. {result.next_step}"
        )
        if result.poll_error:
            text += f" (Last poll failed: {result.poll_error[:300]})"
        return clip(text, TEXT_BUDGET)
    cost = ""
    if result.usage and result.usage.cost_credits is not None:
        cost = f", cost {result.usage.cost_credits:g} credits ({usd(result.usage.cost_usd or 0)})"
    elif result.cost_usd is not None:
        cost = f", cost {usd(result.cost_usd)}"
    if result.estimate_usd is not None:
        cost += f", estimated {usd(result.estimate_usd)}"
    head = joined + (
        f"Generated {len(result.images)} image(s) with {result.model or 'the model'} in "
        f"{result.elapsed_seconds:.1f} s (task_id {result.task_id}, seed {result.seed}{cost})"
    )
    saved = [Path(path) for path in result.saved_files if path]
    tail = [f"Saved in {saved[0].parent}: {', '.join(path.name for path in saved)}"] if saved else []
    tail += [f"Note: {note[:200]}" for note in result.notes[:4]]
    lines = [f"{head}:"]
    for index, image in enumerate(result.images, start=1):
        size = f" ({image.width}x{image.height})" if image.width and image.height else ""
        lines.append(f"{index}. {image.url if url_problem(image.url) is None else '(no usable URL)'}{size}")
    text = "\n".join([*lines, *tail])
    if not links:  # the text is the only place a client without resource links finds the URLs
        return clip(text, LEGACY_TEXT_BUDGET)
    if len(text.encode()) > TEXT_BUDGET:  # long signed URLs: they are in the resource links already
        text = "\n".join([f"{head}. The image URLs are in the resource links below.", *tail])
    return clip(text, TEXT_BUDGET)


def clip(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` bytes of UTF-8, never inside a character."""
    data = text.encode()
    if len(data) <= limit:
        return text
    return data[: limit - 3].decode(errors="ignore") + "…"


def model_line(model: ModelInfo) -> str:
    status = "documented" if model.documented else "assumed"
    return (
        f"{model.id} ({model.display_name}): {', '.join(model.capabilities)}; max images {model.max_images}; "
        f"aspect ratios {', '.join(model.aspect_ratios)}; quality {', '.join(model.qualities)}; "
        f"parameters {', '.join(model.parameters)}; {_prices(model)} [{status}]"
    )


def _prices(model: ModelInfo) -> str:
    prices = ", ".join(f"{quality} {usd(price)}" for quality, price in model.price_usd.items())
    return f"price per image {prices or 'unknown'} ({model.price_source})"


def explain(exc: QolabaError, catalog: Catalog, *, model: str | None = None, data_uris: bool = False) -> str:
    """A tool-error text that tells the agent its next move."""
    if is_local_task_id(exc.task_id) and not isinstance(exc, TaskNotFoundError):
        # The error of a synchronous request that outlived its call: final, whatever its kind.
        return f"The synchronous request {exc.task_id} ended without images. " + _advice(exc, catalog, model, None)
    text = _advice(exc, catalog, model, exc.task_id)
    if data_uris and isinstance(exc, BadRequestError):
        text += (
            " This request sent image inputs as data: URIs (local files travel that way), which the Qolaba API may "
            "not accept: give a public https URL of the image instead."
        )
    return text


def _advice(exc: QolabaError, catalog: Catalog, model: str | None, task_id: str | None) -> str:
    task = f" (task_id {task_id})" if task_id else ""
    if isinstance(exc, MissingApiKeyError | InvalidTaskIdError | SpendRefusedError):
        return exc.message
    if isinstance(exc, BadRequestError):
        text = f"The Qolaba API rejected the request: {exc.message}. Fix the named argument and call again."
        if model is not None and model not in catalog:
            text += f" Known models: {', '.join(catalog.ids())} (list_models has details)."
        return text
    if isinstance(exc, AuthenticationError):
        text = (
            f"The Qolaba API refused the API key ({exc.status_code}). Check QOLABA_API_KEY in the MCP server's "
            "environment; retrying will not help until the key is fixed."
        )
        if task_id:
            text += (
                f' The task was created before the key was refused: once the key works, call get_task with task_id="'
                f'{task_id}" to collect it rather than generating again.'
            )
        return text
    if isinstance(exc, RateLimitError):
        after = f"{exc.retry_after:g} s" if exc.retry_after is not None else "a little while"
        return f"Rate limited by the Qolaba API after several tries{task}. Retry after {after}."
    if isinstance(exc, TaskNotFoundError):
        if is_local_task_id(task_id):
            return exc.message
        return f"The Qolaba API knows no task {task_id!r}. Check the task_id that generate_image returned."
    if isinstance(exc, NetworkError) and not exc.request_sent:
        return f"Could not reach the Qolaba API ({exc.message}); nothing was submitted. Retry shortly."
    if task_id:
        return (
            f"{exc.message}{task}. The task may still finish: call get_task with "
            f'task_id="{task_id}" rather than generating again.'
        )
    if isinstance(exc, NetworkError | ServerError):
        return (
            f"{exc.message}. The submission's state is unknown: the API may have created the task. Do not "
            "retry at once; check the Qolaba dashboard, or retry knowing it may be a second paid generation."
        )
    return f"{exc.message}{task}."


# What to do about each kind of argument error, by pydantic's error type (its words, not its class names).
_FIXES: dict[str, str] = {
    "missing": "add it",
    "extra_forbidden": "remove it",
    "less_than_equal": "send {le} or less",
    "less_than": "send less than {lt}",
    "greater_than_equal": "send {ge} or more",
    "greater_than": "send more than {gt}",
    "string_too_long": "shorten it to {max_length} characters or fewer",
    "too_long": "send at most {max_length} items",
    "string_too_short": "send a non-empty value",
    "too_short": "send at least one item",
    "literal_error": "use one of the allowed values",
    "enum": "use one of the allowed values",
    "string_pattern_mismatch": "use the form the field's description gives",
}
_SHOULD = re.compile(r"^(?:Input|String|List|Value|Dictionary|Tuple|Set) should ")
_MAX_ERRORS = 8


def argument_errors(tool: str, exc: ValidationError, known: Iterable[str] = ()) -> str:
    """Why a call's arguments were refused: each field, the rule it broke, what was received, and the fix."""
    fields = sorted(known)
    lines = []
    for error in exc.errors(include_url=False)[:_MAX_ERRORS]:
        where = _location(error["loc"])
        kind = error["type"]
        rule = _SHOULD.sub("must ", error["msg"]).replace(" after validation", "").removeprefix("Value error, ")
        rule = rule.replace("less than or equal to", "at most").replace("greater than or equal to", "at least")
        if kind == "missing":
            rule = "is required"
        elif kind == "extra_forbidden":
            rule = "is not an argument of this tool"
        fix = _FIXES.get(kind, "send a value of the right type" if kind.endswith(("_type", "_parsing")) else "")
        fix = fix.format(**error.get("ctx", {})) if "{" in fix else fix
        if kind == "extra_forbidden" and fields:
            close = difflib.get_close_matches(where, fields, n=1)
            fix += f" (did you mean {close[0]!r}?)" if close else f" (arguments: {', '.join(fields)})"
        line = f"- {where}: {rule}"
        if kind != "missing":
            line += f"; received {_shown(error.get('input'))}"
        lines.append(f"{line}. Fix: {fix}." if fix else f"{line}.")
    more = len(exc.errors()) - _MAX_ERRORS
    if more > 0:
        lines.append(f"- and {more} more")
    return f"Invalid arguments for {tool}:\n" + "\n".join(lines) + "\nCorrect them and call again."


def _location(loc: tuple[int | str, ...]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(arguments)"


def _shown(value: object) -> str:
    """The received value, short: a long string is cut and its length given."""
    if isinstance(value, str) and len(value) > 60:
        return f"{value[:60]!r}… ({len(value)} characters)"
    text = json.dumps(value, default=str, ensure_ascii=False) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 80 else text[:80] + "…"


class HistoryRow(BaseModel):
    """One generation in the history, compact."""

    task_id: str | None
    when: str = Field(description="When it was asked for (UTC, ISO 8601).")
    model: str
    status: Status = Field(description="SUCCESS, FAILED, UNKNOWN (may have been charged: check first) or PENDING.")
    prompt: str | None = Field(description="The prompt, cut short.")
    images: int
    cost_usd: float | None
    seed: int | None = Field(default=None, description="The seed used, as generate_image reported it.")
    saved_files: list[str] = Field(default_factory=list)
    inputs: list[str] = Field(default_factory=list, description="What the input images were (never their bytes).")


class GenerationList(BaseModel):
    """The result of list_generations."""

    generations: list[HistoryRow]
    next_cursor: str | None = Field(default=None, description="Pass as cursor for the next (older) page.")


HISTORY_PROMPT_CHARS = 80


def history_row(row: LedgerRow) -> HistoryRow:
    prompt = row.prompt if row.prompt is None or len(row.prompt) <= HISTORY_PROMPT_CHARS else row.prompt[:79] + "…"
    return HistoryRow(
        task_id=row.task_id,
        when=datetime.fromtimestamp(row.created_at, UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        model=row.model,
        status=result_status(row.state),
        prompt=prompt,
        images=len(row.images),
        cost_usd=row.cost_usd,
        seed=row_seed(row),
        saved_files=[path for path in row.saved_files if path],
        inputs=row.inputs,
    )


def history_result(rows: list[LedgerRow], cursor: str | None) -> CallToolResult:
    """Compact rows, newest first; the text is one line a generation."""
    result = GenerationList(generations=[history_row(row) for row in rows], next_cursor=cursor)
    lines = []
    for row in result.generations:
        cost = f", ${row.cost_usd:g}" if row.cost_usd is not None else ""
        more = f" (+{len(row.saved_files) - 1})" if len(row.saved_files) > 1 else ""
        saved = f", saved {row.saved_files[0]}{more}" if row.saved_files else ""
        made_from = f" [from {'; '.join(row.inputs)[:300]}]" if row.inputs else ""
        lines.append(
            f"{row.when} {row.status} {row.model} task_id={row.task_id} {row.images} image(s){cost}"
            f"{saved}: {row.prompt or '(no prompt)'}{made_from}"
        )
        if row.status == "UNKNOWN":
            lines.append("  (state unknown: check before retrying)")
    if not lines:
        lines.append("No generations match.")
    if cursor:
        lines.append(f'More: call list_generations with cursor="{cursor}".')
    return CallToolResult(
        content=[TextContent(text=clip("\n".join(lines), HISTORY_TEXT_BUDGET))],
        structured_content=result.model_dump(mode="json"),
    )


HISTORY_TEXT_BUDGET = 6000
