"""The Qolaba image API contract as pydantic models: one source of truth for client, sandbox and tools."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

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


class _Open(BaseModel):
    """A response shape: fields the API adds later are kept (``model_extra``), never rejected."""

    model_config = ConfigDict(extra="allow")


class ReferenceImage(BaseModel):
    """One reference image for multi-reference consistency."""

    model_config = ConfigDict(extra="forbid")

    url: Annotated[str, Field(min_length=1, max_length=4096)]
    description: Annotated[str | None, Field(max_length=1000)] = None


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
    list[Annotated[str, Field(min_length=1, max_length=4096)]] | None,
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
        max_length=4096,
        description="Inpainting mask (white = repaint).",
    ),
]
AspectRatio = Annotated[
    str | None,
    Field(
        pattern=r"^[1-9][0-9]?:[1-9][0-9]?$",
        description="e.g. 16:9 (per model, see list_models).",
    ),
]
Quality = Annotated[
    str | None,
    Field(
        min_length=1,
        max_length=20,
        description="Preset: 1K/2K/4K (Vertex), low/medium/high (GPT Image).",
    ),
]
NumImages = Annotated[int | None, Field(ge=1, le=10)]
Seed = Annotated[
    int | None,
    Field(ge=0, le=2**63 - 1, description="For reproducible results."),
]
InferenceSteps = Annotated[int | None, Field(ge=1, le=150, description="Denoising steps (FAL).")]
GuidanceScale = Annotated[float | None, Field(ge=0, le=30, description="Prompt adherence (FAL).")]
Temperature = Annotated[float | None, Field(ge=0, le=2, description="Creativity (Vertex).")]
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


class Usage(_Open):
    """Billing for one generation (1 credit = 0.005 USD)."""

    images_generated: int | None = None
    cost_usd: float | None = None
    cost_credits: float | None = None


class GenerateResult(_Open):
    """200 OK: a finished synchronous generation."""

    task_id: str
    prompt: str | None = None
    seed: int | None = None
    images: list[ImageOutput] = Field(default_factory=list)
    usage: Usage | None = None


class TaskCreated(_Open):
    """202 Accepted: an asynchronous task was created."""

    task_id: str
    status: str = "PENDING"
    type: str = "image"


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
    raw: dict[str, Any] = Field(default_factory=dict, repr=False)

    @property
    def done(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @classmethod
    def from_api(cls, payload: Mapping[str, Any], *, task_id: str | None = None) -> Task:
        """Normalise a task-endpoint body; raises ValueError when it holds no usable status."""
        body = payload.get("task") if isinstance(payload.get("task"), Mapping) else payload
        body = body if isinstance(body, Mapping) else {}
        raw_status = body.get("status", body.get("state"))
        if not isinstance(raw_status, str) or not raw_status.strip():
            raise ValueError("task body has no 'status' string")
        key = raw_status.strip().upper().replace("-", "_").replace(" ", "_")
        # An unknown status word is treated as still running: polling goes on within its budget.
        status: TaskStatus = _STATUS_ALIASES.get(key, "PROCESSING")
        output = body.get("output", body.get("result"))
        found_id = next(
            (place[key] for place in (body, payload) for key in ("task_id", "id") if place.get(key)),
            task_id,
        )
        if found_id is None:
            raise ValueError("task body has no 'task_id'")
        return cls(
            task_id=str(found_id),
            status=status,
            raw_status=raw_status,
            images=_images_from(body.get("images"), output),
            prompt=_first_str(body, output, "prompt"),
            seed=_first_int(body, output, "seed"),
            usage=_usage_from(body, output),
            error=_error_text(body) if status == "FAILED" else None,
            progress=_progress_from(body.get("progress")),
            raw=dict(payload),
        )


def _images_from(top: object, output: object) -> list[ImageOutput]:
    for candidate in (top, output):
        if isinstance(candidate, Mapping):
            candidate = candidate.get("images", candidate.get("urls"))
        if isinstance(candidate, str):
            candidate = [candidate]
        if isinstance(candidate, list) and candidate:
            images = [_image(item) for item in candidate]
            return [image for image in images if image is not None]
    return []


def _image(item: object) -> ImageOutput | None:
    if isinstance(item, str):
        return ImageOutput(url=item)
    if isinstance(item, Mapping):
        try:
            return ImageOutput.model_validate(item)
        except ValidationError:
            url = item.get("image_url") or item.get("uri")
            return ImageOutput(url=url) if isinstance(url, str) else None
    return None


def _first_str(body: Mapping[str, Any], output: object, key: str) -> str | None:
    for place in (body, output):
        if isinstance(place, Mapping) and isinstance(place.get(key), str):
            return str(place[key])
    return None


def _first_int(body: Mapping[str, Any], output: object, key: str) -> int | None:
    for place in (body, output):
        if isinstance(place, Mapping):
            value = place.get(key)
            if isinstance(value, int) and not isinstance(value, bool):
                return value
    return None


def _usage_from(body: Mapping[str, Any], output: object) -> Usage | None:
    for place in (body, output):
        if isinstance(place, Mapping) and isinstance(place.get("usage"), Mapping):
            try:
                return Usage.model_validate(place["usage"])
            except ValidationError:
                return None
    return None


def _error_text(body: Mapping[str, Any]) -> str:
    parts: list[str] = []
    for key in ("error", "error_detail", "error_data", "error_message", "message"):
        text = _flatten_error(body.get(key))
        if text and text not in parts:
            parts.append(text)
    return ": ".join(parts) if parts else "the task failed without an error message"


def _flatten_error(value: object) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        return value.strip() or None
    if isinstance(value, Mapping):
        for key in ("message", "detail", "error", "reason", "msg"):
            if isinstance(value.get(key), str) and value[key].strip():
                return str(value[key]).strip()
        return ", ".join(f"{k}={v}" for k, v in value.items()) or None
    if isinstance(value, list):
        texts = [t for t in (_flatten_error(v) for v in value) if t]
        return "; ".join(texts) or None
    return str(value)


def _progress_from(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    # An integer is a percentage (0-100); a float up to 1 is a fraction.
    fraction = float(value) / 100 if isinstance(value, int) or value > 1 else float(value)
    return min(max(fraction, 0.0), 1.0)
