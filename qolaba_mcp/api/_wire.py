"""The Qolaba image API contract as pydantic models: one source of truth for client, sandbox and tools."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

TaskStatus = Literal["PENDING", "PROCESSING", "SUCCESS", "FAILED"]
TERMINAL_STATUSES: frozenset[str] = frozenset({"SUCCESS", "FAILED"})

# Every spelling of a status we accept from the task endpoint, whose shape is not published.
_STATUS_ALIASES: dict[str, TaskStatus] = {
    **dict.fromkeys(["PENDING", "QUEUED", "CREATED", "SUBMITTED", "WAITING", "RECEIVED"], "PENDING"),
    **dict.fromkeys(["PROCESSING", "IN_PROGRESS", "RUNNING", "STARTED", "GENERATING"], "PROCESSING"),
    **dict.fromkeys(["SUCCESS", "COMPLETED", "SUCCEEDED", "SUCCESSFUL", "COMPLETE", "DONE", "FINISHED"], "SUCCESS"),
    **dict.fromkeys(
        ["FAILED", "FAILURE", "ERROR", "CANCELLED", "CANCELED", "REJECTED", "TIMEOUT", "REVOKED"],
        "FAILED",
    ),
}


# Bounds on what one API answer may put in a result (the API itself returns at most 10 images per task).
MAX_IMAGES = 16
MAX_URL_CHARS = 4096  # the same bound as the image URLs this server accepts
MAX_API_TEXT = 500  # an error message or detail from the API
_MAX_PROMPT = 4000
_MAX_SIZE = 100_000  # pixels on one side

# A task id as it goes into ``/api/v1/tasks/{task_id}``: at least one character that is not a dot, so neither
# "." nor ".." can change the request's path; nothing that is quoted, a separator, a query or a fragment.
TASK_ID_PATTERN = r"^[A-Za-z0-9_.:\-]*[A-Za-z0-9_:\-][A-Za-z0-9_.:\-]*$"
TASK_ID_MAX_LENGTH = 200
_TASK_ID = re.compile(TASK_ID_PATTERN)


def is_safe_task_id(value: str) -> bool:
    """Whether ``value`` can be put in a request path as it is: the tools' rule and the client's last check."""
    return 0 < len(value) <= TASK_ID_MAX_LENGTH and _TASK_ID.fullmatch(value) is not None


def url_problem(url: str) -> str | None:
    """Why ``url`` cannot be offered as a link or fetched, or None for a plain http(s) URL."""
    if not url:
        return "the URL is empty"
    if len(url) > MAX_URL_CHARS:
        return f"the URL is {len(url)} characters long (over {MAX_URL_CHARS})"
    if any(char.isspace() or not char.isprintable() for char in url):
        return "the URL holds whitespace or control characters"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises for a port out of range or not a number)
    except ValueError as exc:
        return f"the URL is malformed ({exc})"
    if parts.scheme.lower() not in ("http", "https"):
        return "the URL is not http or https"
    if not parts.hostname:
        return "the URL names no host"
    return None


def _not_bool(value: object) -> object:
    # pydantic would read true as 1: on a paid call a boolean where a number belongs is a mistake to report.
    if isinstance(value, bool):
        raise ValueError("a boolean is not a number here; give a number")
    return value


NotBool = BeforeValidator(_not_bool)
"""Refuses true/false for a numeric field (pydantic's lax mode would take them as 1/0)."""


class _Open(BaseModel):
    """A response shape: fields the API adds later are kept (``model_extra``), never rejected."""

    model_config = ConfigDict(extra="allow")


# An image input may be a data: URI (a local file the server read, or an attachment): up to 10 MiB of image, which
# is this many characters of base64 with room for its header.
IMAGE_REF_MAX_CHARS = 14_000_000


class ReferenceImage(BaseModel):
    """One reference image for multi-reference consistency."""

    model_config = ConfigDict(extra="forbid")

    url: Annotated[str, Field(min_length=1, max_length=IMAGE_REF_MAX_CHARS, description="The reference image.")]
    description: Annotated[str | None, Field(max_length=1000, description="What to take from it.")] = None


# The request's field types, kept as names so the MCP tool signature reuses them verbatim.
ModelId = Annotated[
    str,
    Field(
        min_length=1,
        max_length=200,
        description="Model id (see list_models).",
        examples=["vertex/nano-banana-flash"],
    ),
]
Prompt = Annotated[
    str | None,
    Field(
        max_length=4000,
        description="What to draw. Optional only for image-to-image models.",
    ),
]
ImageUrls = Annotated[
    list[Annotated[str, Field(min_length=1, max_length=IMAGE_REF_MAX_CHARS)]] | None,
    Field(max_length=16, description="Source images (image-to-image, editing)."),
]
ReferenceImages = Annotated[
    list[ReferenceImage] | None,
    Field(max_length=14, description="References for character/product/style consistency."),
]
MaskUrl = Annotated[
    str | None,
    Field(
        min_length=1,
        max_length=IMAGE_REF_MAX_CHARS,
        description="Inpainting mask (white = repaint).",
    ),
]
AspectRatio = Annotated[
    str | None,
    Field(
        pattern=r"^[1-9][0-9]?:[1-9][0-9]?$",
        description="Width:height, like 16:9 (see list_models).",
    ),
]
Quality = Annotated[
    str | None,
    Field(
        min_length=1,
        max_length=20,
        description="A quality preset of the model, like 1K/2K/4K or low/medium/high (see list_models).",
    ),
]
NumImages = Annotated[
    int | None, Field(ge=1, le=10, description="How many images (up to the model's max_images)."), NotBool
]
Seed = Annotated[
    int | None,
    Field(ge=0, le=2**63 - 1, description="For reproducible results."),
    NotBool,
]
InferenceSteps = Annotated[int | None, Field(ge=1, le=150, description="Denoising steps (FAL)."), NotBool]
GuidanceScale = Annotated[float | None, Field(ge=0, le=30, description="Prompt adherence (FAL)."), NotBool]
Temperature = Annotated[float | None, Field(ge=0, le=2, description="Creativity (Vertex)."), NotBool]
NegativePrompt = Annotated[str | None, Field(max_length=2000, description="What to leave out.")]

# Optional generation fields, in the order the API documents them; the model catalogue names these.
GENERATION_FIELDS: tuple[str, ...] = (
    "prompt",
    "image_urls",
    "reference_images",
    "mask_url",
    "aspect_ratio",
    "quality",
    "num_images",
    "seed",
    "num_inference_steps",
    "guidance_scale",
    "temperature",
    "negative_prompt",
)


class GenerateRequest(BaseModel):
    """Body of ``POST /api/v1/images/generate``."""

    model_config = ConfigDict(extra="allow")

    model: ModelId
    prompt: Prompt = None
    celery: Annotated[bool | None, Field(description="false = synchronous (200), true = asynchronous (202).")] = None
    image_urls: ImageUrls = None
    reference_images: ReferenceImages = None
    mask_url: MaskUrl = None
    aspect_ratio: AspectRatio = None
    quality: Quality = None
    num_images: NumImages = None
    seed: Seed = None
    num_inference_steps: InferenceSteps = None
    guidance_scale: GuidanceScale = None
    temperature: Temperature = None
    negative_prompt: NegativePrompt = None

    def to_api(self) -> dict[str, Any]:
        """The JSON body: unset fields are left out so the API applies its own defaults."""
        return self.model_dump(mode="json", exclude_none=True)


class ImageOutput(_Open):
    """One generated image."""

    url: str
    width: int | None = None
    height: int | None = None
    content_type: str | None = None
    preview_url: str | None = Field(default=None, description="A smaller copy (low_res_urls), used for previews.")
    nsfw: bool | None = Field(default=None, description="The provider's safety filter flagged it (Has_NSFW_Content).")


class Usage(_Open):
    """Billing for one generation (1 credit = 0.005 USD)."""

    images_generated: int | None = None
    cost_usd: float | None = None
    cost_credits: float | None = None


class GenerateResult(_Open):
    """200 OK: a finished synchronous generation."""

    task_id: str | None = None
    prompt: str | None = None
    seed: int | None = None
    images: list[ImageOutput] = Field(default_factory=list)
    usage: Usage | None = None
    notes: list[str] = Field(default_factory=list, description="What the answer held that could not be used.")
    removed: int = Field(default=0, description="Images the provider's safety filter removed, leaving none.")

    @classmethod
    def from_api(cls, payload: Mapping[str, Any]) -> GenerateResult:
        """Read a paid result as tolerantly as a poll (``Task.from_api``): keep what can be kept, note the rest.

        Raises ValueError only when the answer names neither a task nor an image.
        """
        body = _unwrap(payload)
        notes: list[str] = []
        content = _content(body, notes)
        task_id = _task_id_in(body, payload)
        if task_id is None and not content["images"]:
            raise ValueError("the answer names neither a task_id nor an image")
        content["removed"] = content.pop("_removed")
        if task_id is None:
            notes.append("the API's answer named no task_id")
        return cls.model_validate({**_extras(cls, payload), **content, "task_id": task_id, "notes": notes})


class TaskCreated(_Open):
    """202 Accepted: an asynchronous task was created."""

    task_id: str
    status: str = "PENDING"
    type: str = "image"

    @classmethod
    def from_api(cls, payload: Mapping[str, Any]) -> TaskCreated:
        """The created task, whatever type its id came as (a number becomes text); ValueError without one."""
        body = _unwrap(payload)
        task_id = _task_id_in(body, payload)
        if task_id is None:
            raise ValueError("the answer names no task_id")
        known = {"task_id": task_id}
        for key in ("status", "type"):
            if isinstance(body.get(key), str):
                known[key] = str(body[key])[:100]
        return cls.model_validate({**_extras(cls, payload), **known})


class Task(BaseModel):
    """A task as polled, normalised from whichever shape the API sent (the raw body stays in ``raw``)."""

    task_id: str
    status: TaskStatus
    raw_status: str
    images: list[ImageOutput] = Field(default_factory=list)
    prompt: str | None = None
    seed: int | None = None
    usage: Usage | None = None
    error: str | None = None
    progress: float | None = None
    notes: list[str] = Field(default_factory=list)
    raw: dict[str, Any] = Field(default_factory=dict, repr=False)

    @property
    def done(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @classmethod
    def from_api(cls, payload: Mapping[str, Any], *, task_id: str | None = None) -> Task:
        """Normalise a task-endpoint body; raises ValueError when it holds no usable status.

        Whatever else is odd (a size of "1024px", a seed of 42.5, a usage of "n/a", 500 images) is kept where it
        can be and noted in ``notes`` where it cannot; it never fails the poll.
        """
        body = _unwrap(payload)
        raw_status = body.get("status", body.get("state"))
        if not isinstance(raw_status, str) or not raw_status.strip():
            raise ValueError("task body has no 'status' string")
        key = raw_status.strip().upper().replace("-", "_").replace(" ", "_")
        # An unknown status word is treated as still running: polling goes on within its budget.
        status: TaskStatus = _STATUS_ALIASES.get(key, "PROCESSING")
        found_id = _task_id_in(body, payload) or task_id
        if found_id is None:
            raise ValueError("task body has no 'task_id'")
        notes: list[str] = []
        content = _content(body, notes)
        error = _error_text(body) if status == "FAILED" else None
        if (removed := content.pop("_removed")) and status == "SUCCESS":
            status, error = "FAILED", removed_text(removed)  # a success with nothing in it is not one
        return cls(
            task_id=found_id,
            status=status,
            raw_status=raw_status[:100],
            **content,
            error=error,
            progress=_progress_from(body.get("progress")),
            notes=notes,
            raw=dict(payload),
        )


# Tolerant readers shared by every answer that carries a result: each returns what it could read and appends
# a note for what it could not, so one odd field never costs a paid result.


def _unwrap(payload: Mapping[str, Any]) -> Mapping[str, Any]:
    inner = payload.get("task")
    return inner if isinstance(inner, Mapping) else payload


def _extras(model: type[BaseModel], payload: Mapping[str, Any]) -> dict[str, Any]:
    """The answer's other top-level fields, kept as ``model_extra`` (fields the API adds later)."""
    return {key: value for key, value in payload.items() if isinstance(key, str) and key not in model.model_fields}


def _task_id_in(body: Mapping[str, Any], payload: Mapping[str, Any]) -> str | None:
    for place in (body, payload):
        for key in ("task_id", "id"):
            value = place.get(key)
            if isinstance(value, int) and not isinstance(value, bool):
                return str(value)
            if isinstance(value, str) and value.strip():
                return value.strip()
    return None


def removed_text(count: int) -> str:
    return (
        f"The provider's safety filter removed every image ({count}): nothing can be delivered. Rephrase the prompt "
        "(or change the input images) before generating again."
    )


def _content(body: Mapping[str, Any], notes: list[str]) -> dict[str, Any]:
    """Images, prompt, seed and usage, from the body's top level or its ``output``/``result``.

    ``_removed`` counts the images the provider's safety filter removed when it left none (``Has_NSFW_Content``
    all true, no URLs): the caller turns that into a failure, never an empty success."""
    output = body.get("output", body.get("result"))
    prompt = _first_str(body, output, "prompt")
    images = _images_from(body.get("images"), output, notes)
    removed = _apply_backend_lists(body, output, images, notes)
    return {
        "images": images,
        "prompt": _clip(prompt, _MAX_PROMPT) if prompt is not None else None,
        "seed": _first_int(body, output, "seed", notes),
        "usage": _usage_from(body, output, notes),
        "_removed": removed,
    }


def _apply_backend_lists(body: Mapping[str, Any], output: object, images: list[ImageOutput], notes: list[str]) -> int:
    """The backend's per-image lists beside ``result``: ``low_res_urls`` (previews) and ``Has_NSFW_Content``.

    Returns how many images the safety filter removed when no image is left (0 otherwise)."""
    place = output if isinstance(output, Mapping) else body
    low = place.get("low_res_urls")
    if isinstance(low, list):
        for image, url in zip(images, low, strict=False):
            if isinstance(url, str) and url.strip() and len(url.strip()) <= MAX_URL_CHARS:
                image.preview_url = url.strip()
    flags = place.get("Has_NSFW_Content", body.get("Has_NSFW_Content"))
    if isinstance(flags, bool):
        flags = [flags] * max(len(images), 1)
    if not isinstance(flags, list):
        return 0
    flagged = [flag is True for flag in flags[:MAX_IMAGES]]
    if not images:
        return sum(flagged)
    for number, (image, flag) in enumerate(zip(images, flagged, strict=False), start=1):
        image.nsfw = flag
        if flag:
            notes.append(f"image {number} was flagged by the provider's safety filter (it may be blurred or blank)")
    return 0


def _images_from(top: object, output: object, notes: list[str]) -> list[ImageOutput]:
    for candidate in (top, output):
        if isinstance(candidate, Mapping):
            candidate = candidate.get("images", candidate.get("urls", candidate.get("result")))
        if isinstance(candidate, str):
            candidate = [candidate]
        if isinstance(candidate, list) and candidate:
            images = [_image(item, number, notes) for number, item in enumerate(candidate[:MAX_IMAGES], start=1)]
            if len(candidate) > MAX_IMAGES:
                notes.append(
                    f"the API listed {len(candidate)} images; only the first {MAX_IMAGES} are handled here, the "
                    f"other {len(candidate) - MAX_IMAGES} stay with the API under this task_id"
                )
            return [image for image in images if image is not None]
    return []


def _image(item: object, number: int, notes: list[str]) -> ImageOutput | None:
    details: Mapping[str, Any] = item if isinstance(item, Mapping) else {}
    urls = [item] if isinstance(item, str) else [details.get(key) for key in ("url", "image_url", "uri")]
    url = next((candidate for candidate in urls if isinstance(candidate, str)), None)
    if url is None:
        notes.append(f"image {number}: the API's entry {_show(item)} has no URL; left out")
        return None
    url = url.strip()  # a stray newline around a URL is not worth an image
    if len(url) > MAX_URL_CHARS:
        notes.append(f"image {number}: its URL is {len(url)} characters long (over {MAX_URL_CHARS}); left out")
        return None
    content_type = details.get("content_type")
    if content_type is not None and not (isinstance(content_type, str) and 0 < len(content_type) <= 100):
        notes.append(f"image {number}: content_type {_show(content_type)} is not a media type; left out")
        content_type = None
    return ImageOutput(
        url=url,
        width=_as_int(details.get("width"), f"image {number}: width", notes, low=1, high=_MAX_SIZE),
        height=_as_int(details.get("height"), f"image {number}: height", notes, low=1, high=_MAX_SIZE),
        content_type=content_type,
    )


def _first_str(body: Mapping[str, Any], output: object, key: str) -> str | None:
    for place in (body, output):
        if isinstance(place, Mapping) and isinstance(place.get(key), str):
            return str(place[key])
    return None


def _first_int(body: Mapping[str, Any], output: object, key: str, notes: list[str]) -> int | None:
    for place in (body, output):
        if isinstance(place, Mapping) and place.get(key) is not None:
            return _as_int(place[key], key, notes, low=-(2**63), high=2**64 - 1)
    return None


def _usage_from(body: Mapping[str, Any], output: object, notes: list[str]) -> Usage | None:
    for place in (body, output):
        if isinstance(place, Mapping) and place.get("usage") is not None:
            usage = place["usage"]
            if not isinstance(usage, Mapping):
                notes.append(f"usage {_show(usage)} is not an object; left out")
                return None
            return Usage(
                images_generated=_as_int(usage.get("images_generated"), "usage.images_generated", notes, low=0),
                cost_usd=_as_float(usage.get("cost_usd"), "usage.cost_usd", notes),
                cost_credits=_as_float(usage.get("cost_credits"), "usage.cost_credits", notes),
            )
    return None


_WHOLE_NUMBER = re.compile(r"\s*(\d{1,19})\s*(?:px)?\s*")


def _as_int(value: object, what: str, notes: list[str], *, low: int, high: int | None = None) -> int | None:
    """An integer from an int, a whole float (42.0) or digits ("1024", "1024px"); None and a note otherwise."""
    number: int | None = None
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    elif isinstance(value, str) and (match := _WHOLE_NUMBER.fullmatch(value)):
        number = int(match[1])
    if number is None or number < low or (high is not None and number > high):
        notes.append(f"{what} {_show(value)} is not a usable integer; left out")
        return None
    return number


def _as_float(value: object, what: str, notes: list[str]) -> float | None:
    """A finite number from a number or numeric text; None and a note otherwise."""
    if value is None:
        return None
    number: float | None = None
    if isinstance(value, int | float | str) and not isinstance(value, bool):
        try:
            number = float(value)
        except (ValueError, OverflowError):
            number = None
    if number is None or not math.isfinite(number):
        notes.append(f"{what} {_show(value)} is not a number; left out")
        return None
    return number


def _show(value: object) -> str:
    """A short rendering of an API value for a note (never a deep or long one)."""
    if isinstance(value, Mapping | list):
        return f"({type(value).__name__} of {len(value)})"
    return repr(value)[:40]


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _error_text(body: Mapping[str, Any]) -> str:
    parts: list[str] = []
    for key in ("error", "error_detail", "error_data", "error_message", "message"):
        text = _flatten_error(body.get(key))
        if text and text not in parts:
            parts.append(text)
    return _clip(": ".join(parts), MAX_API_TEXT) if parts else "the task failed without an error message"


def _flatten_error(value: object, depth: int = 0) -> str | None:
    """An error value as one line; nested shapes are read a few levels deep and a few items wide."""
    if value is None or value == "" or depth > 3:
        return None
    if isinstance(value, str):
        return _clip(value.strip(), MAX_API_TEXT) or None
    if isinstance(value, Mapping):
        for key in ("message", "detail", "error", "reason", "msg"):
            if isinstance(value.get(key), str) and value[key].strip():
                return _clip(str(value[key]).strip(), MAX_API_TEXT)
        pairs = list(value.items())[:10]
        return ", ".join(f"{k}={_flatten_error(v, depth + 1) or ''}" for k, v in pairs) or None
    if isinstance(value, list):
        texts = [t for t in (_flatten_error(v, depth + 1) for v in value[:10]) if t]
        return "; ".join(texts) or None
    return _show(value)


def _progress_from(value: object) -> float | None:
    """A fraction 0-1 from a percentage or fraction; anything not a finite number is ignored."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:  # an integer too large for a float: complete, whatever the API meant
        return 1.0
    if not math.isfinite(number):
        return None
    # An integer is a percentage (0-100); a float up to 1 is a fraction.
    fraction = number / 100 if isinstance(value, int) or number > 1 else number
    return min(max(fraction, 0.0), 1.0)
