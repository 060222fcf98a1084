"""The model catalogue: what each Qolaba model accepts, shared by the sandbox, the client side and list_models.

The built-in entries are the offline fallback: each says whether its id is documented, and which of its values
are assumed (inferred from the provider's own limits) rather than published, so nobody mistakes a guess for a
contract. ``QOLABA_MODELS_FILE`` adds or overrides entries without a release, and the live list from
``GET /api/v1/images/models`` is merged over both by ``_prices``.
"""

from __future__ import annotations

import json
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from .._errors import QolabaError
from ._wire import GENERATION_FIELDS

Capability = Literal[
    "text-to-image",
    "image-to-image",
    "image-editing",
    "multi-reference",
    "inpainting",
    "background-removal",
]

CREDIT_USD = 0.005  # "1 credit = $0.005 USD" (published)
# Higher presets cost more per image; the sandbox charges by these and the built-in prices assume them.
QUALITY_PRICE_FACTOR: dict[str, float] = {"2K": 2.0, "4K": 4.0}


class CatalogFileError(QolabaError):
    """The user's models file could not be read or does not hold valid model entries."""


class ModelInfo(BaseModel):
    """One model: its limits and which request fields it accepts."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: Annotated[str, Field(min_length=1, max_length=200)]
    name: str = ""
    capabilities: list[Capability] = Field(default_factory=lambda: ["text-to-image"])  # type: ignore[arg-type]
    max_images: Annotated[int, Field(ge=1, le=10)] = 4
    aspect_ratios: list[str] = Field(default_factory=lambda: ["1:1"])
    default_aspect_ratio: str = "1:1"
    qualities: list[str] = Field(default_factory=lambda: ["1K"])
    default_quality: str = "1K"
    # Pixel length of the long side for each quality preset.
    long_side: dict[str, Annotated[int, Field(ge=16, le=8192)]] = Field(default_factory=lambda: {"1K": 1280})
    parameters: list[str] = Field(default_factory=lambda: ["prompt", "num_images", "seed"])
    required: list[str] = Field(default_factory=lambda: ["prompt"])
    credits_per_image: Annotated[float, Field(ge=0)] = 6.0
    # USD per image for each quality, as the live list publishes it; empty: derived from credits_per_image.
    quality_pricing: dict[str, Annotated[float, Field(ge=0)]] = Field(default_factory=dict)
    max_reference_images: Annotated[int, Field(ge=0)] | None = None
    min_temperature: float | None = None
    max_temperature: float | None = None
    supports_seed: bool | None = None  # None: unknown, "seed" in parameters decides
    description: str = ""
    provider: str = ""
    documented: bool = False
    assumed: list[str] = Field(default_factory=list)
    # The fields the live model list supplied (always "id" for a model it lists); only these can block a request.
    live_fields: list[str] = Field(default_factory=list)

    @field_validator("parameters", "required")
    @classmethod
    def _known_fields(cls, names: list[str]) -> list[str]:
        unknown = sorted(set(names) - set(GENERATION_FIELDS))
        if unknown:
            raise ValueError(f"unknown request fields {unknown}; known: {list(GENERATION_FIELDS)}")
        return names

    @property
    def display_name(self) -> str:
        return self.name or self.id

    @property
    def price_usd(self) -> dict[str, float]:
        """USD per image for each quality: the published prices, else derived from credits_per_image."""
        if self.quality_pricing:
            return dict(self.quality_pricing)
        return {quality: round(self.credits_for(quality) * CREDIT_USD, 6) for quality in self.qualities}

    @property
    def price_source(self) -> Literal["live", "built-in (assumed)"]:
        return "live" if "quality_pricing" in self.live_fields else "built-in (assumed)"

    def credits_for(self, quality: str | None) -> float:
        """Credits per image at a quality preset (the default preset when None)."""
        return self.credits_per_image * QUALITY_PRICE_FACTOR.get(quality or self.default_quality, 1.0)

    def dimensions(self, aspect_ratio: str | None, quality: str | None) -> tuple[int, int]:
        """Width and height in pixels for an aspect ratio and quality preset."""
        ratio = aspect_ratio or self.default_aspect_ratio
        side = self.long_side.get(quality or self.default_quality) or max(self.long_side.values())
        w, h = (int(part) for part in ratio.split(":"))
        if w >= h:
            return side, max(1, round(side * h / w))
        return max(1, round(side * w / h)), side


_VERTEX_RATIOS = ["1:1", "2:3", "3:2", "3:4", "4:3", "4:5", "5:4", "9:16", "16:9", "21:9"]
_IMAGEN_RATIOS = ["1:1", "3:4", "4:3", "9:16", "16:9"]
_VERTEX_SIDES = {"1K": 1280, "2K": 2560, "4K": 3840}
_NANO_PARAMS = [
    "prompt", "image_urls", "reference_images", "aspect_ratio", "quality", "num_images", "seed",
    "temperature",
]  # fmt: skip
_IMAGEN_PARAMS = ["prompt", "aspect_ratio", "quality", "num_images", "seed", "negative_prompt"]

BUILTIN_MODELS: tuple[ModelInfo, ...] = (
    ModelInfo(
        id="vertex/nano-banana-flash",
        name="Nano Banana Flash (Gemini image)",
        capabilities=["text-to-image", "image-editing", "multi-reference"],
        max_images=10,
        aspect_ratios=_VERTEX_RATIOS,
        default_aspect_ratio="1:1",
        qualities=["1K"],
        long_side={"1K": 1280},
        parameters=_NANO_PARAMS,
        credits_per_image=6,
        documented=True,
        assumed=["max_images", "aspect_ratios", "qualities", "parameters"],
    ),
    ModelInfo(
        id="vertex/nano-banana-pro",
        name="Nano Banana Pro (Gemini image)",
        capabilities=["text-to-image", "image-editing", "multi-reference"],
        max_images=10,
        aspect_ratios=_VERTEX_RATIOS,
        qualities=["1K", "2K", "4K"],
        long_side=_VERTEX_SIDES,
        parameters=_NANO_PARAMS,
        credits_per_image=24,
        documented=True,
        assumed=["aspect_ratios", "parameters", "credits_per_image"],
    ),
    ModelInfo(
        id="vertex/imagen-4",
        name="Imagen 4",
        max_images=4,
        aspect_ratios=_IMAGEN_RATIOS,
        qualities=["1K", "2K"],
        long_side=_VERTEX_SIDES,
        parameters=_IMAGEN_PARAMS,
        credits_per_image=8,
        documented=True,
        assumed=["max_images", "aspect_ratios", "qualities", "parameters", "credits_per_image"],
    ),
    ModelInfo(
        id="vertex/imagen-4-fast",
        name="Imagen 4 Fast",
        max_images=4,
        aspect_ratios=_IMAGEN_RATIOS,
        qualities=["1K"],
        long_side=_VERTEX_SIDES,
        parameters=_IMAGEN_PARAMS,
        credits_per_image=4,
        documented=True,
        assumed=["max_images", "aspect_ratios", "qualities", "parameters", "credits_per_image"],
    ),
    ModelInfo(
        id="vertex/imagen-4-ultra",
        name="Imagen 4 Ultra",
        max_images=4,
        aspect_ratios=_IMAGEN_RATIOS,
        qualities=["1K", "2K"],
        long_side=_VERTEX_SIDES,
        parameters=_IMAGEN_PARAMS,
        credits_per_image=12,
        documented=True,
        assumed=["aspect_ratios", "qualities", "parameters", "credits_per_image"],
    ),
    ModelInfo(
        id="openai/gpt-image-2",
        name="GPT Image 2",
        capabilities=["text-to-image", "image-editing"],
        max_images=4,
        aspect_ratios=["1:1", "3:2", "2:3"],
        qualities=["low", "medium", "high"],
        default_quality="medium",
        long_side={"low": 1024, "medium": 1536, "high": 2048},
        parameters=["prompt", "image_urls", "aspect_ratio", "quality", "num_images"],
        credits_per_image=10,
        assumed=["id", "max_images", "aspect_ratios", "long_side", "parameters", "credits_per_image"],
    ),
    ModelInfo(
        id="fal/flux-dev",
        name="FLUX.1 [dev]",
        max_images=4,
        aspect_ratios=["1:1", "3:4", "4:3", "9:16", "16:9"],
        qualities=["1K"],
        long_side={"1K": 1024},
        parameters=[
            "prompt",
            "aspect_ratio",
            "num_images",
            "seed",
            "num_inference_steps",
            "guidance_scale",
            "negative_prompt",
        ],
        credits_per_image=5,
        assumed=["id", "max_images", "aspect_ratios", "parameters", "credits_per_image"],
    ),
    ModelInfo(
        id="fal/flux-inpainting",
        name="FLUX Inpainting",
        capabilities=["inpainting", "image-editing"],
        max_images=4,
        aspect_ratios=["1:1"],
        qualities=["1K"],
        long_side={"1K": 1024},
        parameters=[
            "prompt",
            "image_urls",
            "mask_url",
            "num_images",
            "seed",
            "num_inference_steps",
            "guidance_scale",
            "negative_prompt",
        ],
        required=["prompt", "image_urls", "mask_url"],
        credits_per_image=8,
        assumed=["id", "max_images", "parameters", "credits_per_image"],
    ),
    ModelInfo(
        id="fal/birefnet",
        name="BiRefNet background removal",
        capabilities=["image-to-image", "background-removal"],
        max_images=1,
        aspect_ratios=["1:1"],
        qualities=["1K"],
        long_side={"1K": 1024},
        parameters=["image_urls"],
        required=["image_urls"],
        credits_per_image=2,
        assumed=["id", "max_images", "parameters", "credits_per_image"],
    ),
)

_ENTRIES = TypeAdapter(list[dict[str, object]])
# A models file is a few kilobytes; the cap stops a wrong path (a log, a dump) from being read into memory.
MAX_MODELS_FILE_BYTES = 5 * 1024 * 1024


def _read_json(path: Path) -> object:
    """The models file parsed, or a CatalogFileError that says what is wrong with it and what to do."""
    where = f"QOLABA_MODELS_FILE {path}"
    try:
        info = path.stat()
        # Checked before opening: opening a FIFO blocks, and reading a device (/dev/zero) never ends.
        if not stat.S_ISREG(info.st_mode):
            kind = "a directory" if stat.S_ISDIR(info.st_mode) else "not a regular file"
            raise CatalogFileError(f"{where}: cannot read it: it is {kind}; point it at a JSON file")
        if info.st_size > MAX_MODELS_FILE_BYTES:
            raise CatalogFileError(_too_big(where, info.st_size))
        with path.open("rb") as file:
            raw = file.read(MAX_MODELS_FILE_BYTES + 1)  # bounded even if the file grew since stat
    except OSError as exc:
        raise CatalogFileError(f"{where}: cannot read it ({exc.strerror or exc})") from exc
    if len(raw) > MAX_MODELS_FILE_BYTES:
        raise CatalogFileError(_too_big(where, len(raw)))
    try:
        return json.loads(raw.decode("utf-8-sig"))  # -sig: a file saved with a BOM (Windows editors) still loads
    except UnicodeDecodeError as exc:
        raise CatalogFileError(f"{where}: cannot read JSON: it is not UTF-8 text ({exc}); save it as UTF-8") from exc
    except RecursionError as exc:  # json.loads raises it for nesting deeper than about 1,000 levels
        raise CatalogFileError(
            f"{where}: cannot read JSON: it nests too deeply to be a models file (a list of model objects)"
        ) from exc
    except ValueError as exc:  # malformed JSON, or an integer literal too long to convert
        raise CatalogFileError(f"{where}: cannot read JSON ({exc})") from exc


def _too_big(where: str, size: int) -> str:
    return (
        f"{where}: cannot read it: {size:,} bytes is over the {MAX_MODELS_FILE_BYTES:,}-byte limit for a models "
        "file; is the path right?"
    )


def _clip(text: str, limit: int = 500) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


class Catalog:
    """An ordered, read-only set of models keyed by id."""

    def __init__(self, models: Iterable[ModelInfo]) -> None:
        self._models = {model.id: model for model in models}

    @classmethod
    def builtin(cls) -> Catalog:
        return cls(BUILTIN_MODELS)

    @classmethod
    def load(cls, models_file: Path | None) -> Catalog:
        """The built-in models with the user's file (a JSON list, or {"models": [...]}) merged over them."""
        catalog = cls.builtin()
        if models_file is None:
            return catalog
        data = _read_json(Path(models_file))
        if isinstance(data, dict):
            data = data.get("models")
        try:
            entries = _ENTRIES.validate_python(data)
        except ValidationError as exc:
            raise CatalogFileError(
                f'QOLABA_MODELS_FILE {models_file}: expected a list of models or {{"models": [...]}}'
            ) from exc
        merged = dict(catalog._models)
        for number, entry in enumerate(entries, start=1):
            base = merged.get(str(entry.get("id", "")))
            fields = {**base.model_dump(), **entry} if base else entry
            try:
                model = ModelInfo.model_validate(fields)
            except ValidationError as exc:
                errors = exc.errors()
                # The message ends up in list_models: a hostile file (10,000 bad keys, a 1 MB key) must not bloat it.
                problems = "; ".join(
                    _clip(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}") for err in errors[:5]
                )
                if len(errors) > 5:
                    problems += f"; and {len(errors) - 5} more"
                raise CatalogFileError(f"QOLABA_MODELS_FILE {models_file}: model #{number}: {problems}") from exc
            merged[model.id] = model
        return cls(merged.values())

    def __iter__(self) -> Iterator[ModelInfo]:
        return iter(self._models.values())

    def __len__(self) -> int:
        return len(self._models)

    def __contains__(self, model_id: object) -> bool:
        return model_id in self._models

    def get(self, model_id: str) -> ModelInfo | None:
        return self._models.get(model_id)

    def ids(self) -> list[str]:
        return list(self._models)

    def with_capability(self, capability: str | None) -> list[ModelInfo]:
        return [m for m in self._models.values() if capability is None or capability in m.capabilities]
