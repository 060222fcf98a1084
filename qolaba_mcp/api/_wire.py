"""The Qolaba image API contract as pydantic models: one source of truth for client, sandbox and tools."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from . import _parse

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
        body = _parse.unwrap(payload)
        notes: list[str] = []
        content = _parse.content(body, notes)
        task_id = _parse.task_id_in(body, payload)
        if task_id is None and not content["images"]:
            raise ValueError("the answer names neither a task_id nor an image")
        content["removed"] = content.pop("_removed")
        if task_id is None:
            notes.append("the API's answer named no task_id")
        return cls.model_validate({**_parse.extras(cls, payload), **content, "task_id": task_id, "notes": notes})


class TaskCreated(_Open):
    """202 Accepted: an asynchronous task was created."""

    task_id: str
    status: str = "PENDING"
    type: str = "image"

    @classmethod
    def from_api(cls, payload: Mapping[str, Any]) -> TaskCreated:
        """The created task, whatever type its id came as (a number becomes text); ValueError without one."""
        body = _parse.unwrap(payload)
        task_id = _parse.task_id_in(body, payload)
        if task_id is None:
            raise ValueError("the answer names no task_id")
        known = {"task_id": task_id}
        for key in ("status", "type"):
            if isinstance(body.get(key), str):
                known[key] = str(body[key])[:100]
        return cls.model_validate({**_parse.extras(cls, payload), **known})


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
        body = _parse.unwrap(payload)
        raw_status = body.get("status", body.get("state"))
        if not isinstance(raw_status, str) or not raw_status.strip():
            raise ValueError("task body has no 'status' string")
        key = raw_status.strip().upper().replace("-", "_").replace(" ", "_")
        # An unknown status word is treated as still running: polling goes on within its budget.
        status: TaskStatus = _STATUS_ALIASES.get(key, "PROCESSING")
        found_id = _parse.task_id_in(body, payload) or task_id
        if found_id is None:
            raise ValueError("task body has no 'task_id'")
        notes: list[str] = []
        content = _parse.content(body, notes)
        error = _parse.error_text(body) if status == "FAILED" else None
        if (removed := content.pop("_removed")) and status == "SUCCESS":
            status, error = "FAILED", removed_text(removed)  # a success with nothing in it is not one
        return cls(
            task_id=found_id,
            status=status,
            raw_status=raw_status[:100],
            **content,
            error=error,
            progress=_parse.progress_from(body.get("progress")),
            notes=notes,
            raw=dict(payload),
        )


def removed_text(count: int) -> str:
    return (
        f"The provider's safety filter removed every image ({count}): nothing can be delivered. Rephrase the prompt "
        "(or change the input images) before generating again."
    )
