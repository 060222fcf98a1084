"""The live model list: parsed tolerantly, merged over the catalogue, cached, and used to price and check requests.

``GET /api/v1/images/models`` is Qolaba's published word on ids, limits and prices, so what it says wins over
the built-in catalogue and may refuse a request before it is paid for; a value only the built-in catalogue
holds is a guess and never blocks. A missing or broken endpoint never breaks anything: the last good list, or
the built-in catalogue, is used with a warning.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, get_args

import anyio
from pydantic import ValidationError

from ._catalog import CREDIT_USD, QUALITY_PRICE_FACTOR, Capability, Catalog, ModelInfo
from ._wire import GenerateRequest

DEFAULT_TTL = 600.0  # seconds a fetched list is trusted
DEFAULT_FAILURE_TTL = 60.0  # seconds before a failed fetch is tried again

_CAPABILITIES: frozenset[str] = frozenset(get_args(Capability))
_RATIO = re.compile(r"^\d{1,3}:\d{1,3}$")
_MAX_TEXT = 2000
# Pixel length of the long side for presets the live list may name that a model's built-in entry lacks.
_PRESET_SIDES = {"512": 512, "1K": 1024, "2K": 2048, "4K": 4096}
# Fields a model the built-in catalogue does not know gets by inference, not from the list.
_INFERRED = ["parameters", "long_side"]

ListFetch = Callable[[], Awaitable[Sequence[object]]]


def _text(value: object) -> str | None:
    return value.strip()[:_MAX_TEXT] if isinstance(value, str) and value.strip() else None


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _count(value: object, *, low: int) -> int | None:
    number = _number(value)
    return int(number) if number is not None and number == int(number) and number >= low else None


def _strings(value: object) -> list[str] | None:
    if not isinstance(value, list):
        return None
    items = [item.strip() for item in value if isinstance(item, str) and item.strip()][:50]
    return list(dict.fromkeys(items)) or None


def parse_live_model(entry: Mapping[str, Any]) -> dict[str, Any]:
    """The ModelInfo fields one live entry states; a field with a value we cannot read is left out.

    Capabilities are mapped (``text_to_image`` -> ``text-to-image``); ones we have no name for are dropped.
    ``supportsSeed`` absent means no seed, as the API documents. Returns ``{}`` for an entry without an id.
    """
    model_id = _text(entry.get("id"))
    if model_id is None or len(model_id) > 200:
        return {}
    fields: dict[str, Any] = {"id": model_id}
    if (name := _text(entry.get("name"))) is not None:
        fields["name"] = name
    if (description := _text(entry.get("description"))) is not None:
        fields["description"] = description
    if (provider := _text(entry.get("providerName")) or _text(entry.get("provider"))) is not None:
        fields["provider"] = provider
    raw = _strings(entry.get("capabilities")) or []
    capabilities = [c for c in (r.lower().replace("_", "-").replace(" ", "-") for r in raw) if c in _CAPABILITIES]
    if capabilities:
        fields["capabilities"] = list(dict.fromkeys(capabilities))
    ratios = [r for r in _strings(entry.get("imageSize")) or [] if _RATIO.match(r) and "0" not in r.split(":")]
    if ratios:
        fields["aspect_ratios"] = ratios
    if qualities := _strings(entry.get("quality")):
        fields["qualities"] = qualities
    pricing = entry.get("quality_pricing")
    if isinstance(pricing, Mapping):
        prices = {
            str(key).strip(): price
            for key, value in list(pricing.items())[:50]
            if (price := _number(value)) is not None and price >= 0 and str(key).strip()
        }
        if prices:
            fields["quality_pricing"] = prices
    if (max_images := _count(entry.get("maxNumImages"), low=1)) is not None:
        fields["max_images"] = min(max_images, 10)  # our request model never sends more than 10
    if (references := _count(entry.get("maxReferenceImages"), low=0)) is not None:
        fields["max_reference_images"] = references
    low, high = _number(entry.get("minTemperature")), _number(entry.get("maxTemperature"))
    if low is not None and high is not None and low <= high:
        fields["min_temperature"], fields["max_temperature"] = low, high
    seed = entry.get("supportsSeed", False)
    if isinstance(seed, bool):
        fields["supports_seed"] = seed
    return fields


def _merged(base: ModelInfo | None, live: dict[str, Any]) -> ModelInfo:
    """The model with the live fields laid over its built-in entry (or over defaults for a model we lack)."""
    fields: dict[str, Any] = base.model_dump() if base else {}
    fields.update(live)
    qualities: list[str] = fields.get("qualities") or (base.qualities if base else ["1K"])
    long_side = dict(fields.get("long_side") or {})
    long_side.update({q: _PRESET_SIDES[q] for q in qualities if q not in long_side and q in _PRESET_SIDES})
    if long_side:
        fields["long_side"] = long_side
    default_quality = fields.get("default_quality")
    if "qualities" in live and default_quality not in qualities:
        fields["default_quality"] = qualities[0]
    ratios = fields.get("aspect_ratios") or ["1:1"]
    if "aspect_ratios" in live and fields.get("default_aspect_ratio") not in ratios:
        fields["default_aspect_ratio"] = ratios[0]
    pricing: dict[str, float] = live.get("quality_pricing", {})
    quality = fields.get("default_quality") or qualities[0]
    if quality in pricing:  # keep credits_per_image (the sandbox's and the 1K base) in step with the published price
        factor = QUALITY_PRICE_FACTOR.get(quality, 1.0)
        fields["credits_per_image"] = round(pricing[quality] / CREDIT_USD / factor, 6)
        live = {**live, "credits_per_image": fields["credits_per_image"]}
    if base is None:
        fields["parameters"] = _inferred_parameters(fields)
        fields["assumed"] = list(_INFERRED)
    else:
        fields["assumed"] = [name for name in base.assumed if name not in live and name != "id"]
    fields["documented"] = True
    fields["live_fields"] = sorted(live)
    return ModelInfo.model_validate(fields)


def _inferred_parameters(fields: Mapping[str, Any]) -> list[str]:
    names = ["prompt", "num_images"]
    capabilities = fields.get("capabilities") or []
    if any(c in capabilities for c in ("image-to-image", "image-editing", "multi-reference", "inpainting")):
        names.append("image_urls")
    if fields.get("max_reference_images"):
        names.append("reference_images")
    if "inpainting" in capabilities:
        names.append("mask_url")
    if fields.get("aspect_ratios"):
        names.append("aspect_ratio")
    if fields.get("qualities"):
        names.append("quality")
    if fields.get("supports_seed"):
        names.append("seed")
    if fields.get("max_temperature") is not None:
        names.append("temperature")
    return names


def merge_live(catalog: Catalog, entries: Sequence[object]) -> tuple[Catalog, list[str]]:
    """``catalog`` with the live entries merged over it, and one problem line per entry that could not be used."""
    merged = {model.id: model for model in catalog}
    problems: list[str] = []
    for number, entry in enumerate(entries, start=1):
        live = parse_live_model(entry) if isinstance(entry, Mapping) else {}
        if not live:
            problems.append(f"live model #{number}: no usable id")
            continue
        try:
            merged[live["id"]] = _merged(merged.get(live["id"]), live)
        except ValidationError as exc:
            problems.append(f"live model {live['id']!r}: {exc.errors()[0]['msg']}"[:300])
    return Catalog(merged.values()), problems


class LiveCatalog:
    """The catalogue with the live model list merged in: fetched on first need, kept for ``ttl`` seconds.

    ``get()`` never raises for the endpoint's sake: after a failure it serves the last good merge, or
    ``fallback`` alone, and ``warning`` says why; a failure is not retried for ``failure_ttl`` seconds.
    """

    def __init__(
        self,
        *,
        fallback: Catalog,
        fetch: ListFetch,
        ttl: float = DEFAULT_TTL,
        failure_ttl: float = DEFAULT_FAILURE_TTL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._fallback = fallback
        self._fetch = fetch
        self._ttl = ttl
        self._failure_ttl = failure_ttl
        self._clock = clock
        self._lock = anyio.Lock()
        self._catalog: Catalog | None = None  # the last good merge
        self._fetched_at: float | None = None
        self._next_try = -math.inf
        self.warning: str | None = None
        self.fetches = 0

    @property
    def is_live(self) -> bool:
        """Whether the catalogue served holds the live list (possibly an old copy)."""
        return self._catalog is not None

    async def get(self) -> Catalog:
        """The live catalogue, fetched when missing or older than the TTL; the fallback when none could be had."""
        async with self._lock:  # concurrent callers share one fetch
            if self._clock() >= self._next_try:
                await self._refresh()
            return self._catalog or self._fallback

    async def _refresh(self) -> None:
        self.fetches += 1
        try:
            entries = await self._fetch()
            catalog, problems = merge_live(self._fallback, entries)
            if not any(model.live_fields for model in catalog):
                raise ValueError("the list holds no usable model")
        except Exception as exc:  # any failure of the endpoint falls back; cancellation still propagates
            self._next_try = self._clock() + self._failure_ttl
            reason = (getattr(exc, "message", None) or str(exc) or type(exc).__name__)[:300]
            if self._catalog is not None and self._fetched_at is not None:
                age = max(0, round((self._clock() - self._fetched_at) / 60))
                using = f"using the live list fetched {age} min ago"
            else:
                using = "using the built-in catalogue (its prices and limits are assumed, not published)"
            self.warning = f"the live model list is unavailable ({reason}); {using}"
            return
        self._catalog = catalog
        self._fetched_at = self._clock()
        self._next_try = self._fetched_at + self._ttl
        self.warning = f"some live models were skipped: {'; '.join(problems[:5])}" if problems else None


def estimate_usd(model: ModelInfo, quality: str | None = None, num_images: int | None = None) -> float | None:
    """The price of a request in USD, or None when the model has no price for that quality."""
    price = model.price_usd.get(quality or model.default_quality)
    return None if price is None else round(price * (num_images or 1), 6)


def _live(model: ModelInfo, name: str) -> bool:
    return name in model.live_fields


def check_request(model: ModelInfo, request: GenerateRequest) -> str | None:
    """Why the live list says ``model`` would refuse ``request`` (field, limit, fix), or None.

    Only limits the live list published are checked: a value the catalogue merely assumes never blocks.
    """
    mid = model.id
    if request.num_images is not None and _live(model, "max_images") and request.num_images > model.max_images:
        n = model.max_images
        return f"num_images: {mid} makes at most {n} images per call; send {n} or fewer"
    if (
        request.aspect_ratio is not None
        and _live(model, "aspect_ratios")
        and request.aspect_ratio not in model.aspect_ratios
    ):
        return (
            f"aspect_ratio: {mid} does not support {request.aspect_ratio!r}; send one of "
            f"{', '.join(model.aspect_ratios)}"
        )
    if request.quality is not None and _live(model, "qualities") and request.quality not in model.qualities:
        return f"quality: {mid} has no {request.quality!r} preset; send one of {', '.join(model.qualities)}"
    references = len(request.reference_images or [])
    limit = model.max_reference_images
    if references and limit is not None and _live(model, "max_reference_images") and references > limit:
        if limit == 0:
            return f"reference_images: {mid} takes no reference images; leave reference_images out"
        return f"reference_images: {mid} takes at most {limit} reference images; send {limit} or fewer"
    if request.temperature is not None and _live(model, "min_temperature"):
        low, high = model.min_temperature, model.max_temperature
        if low is not None and high is not None and not low <= request.temperature <= high:
            return f"temperature: {mid} takes a temperature from {low:g} to {high:g}; send a value in that range"
    if request.seed is not None and _live(model, "supports_seed") and model.supports_seed is False:
        return f"seed: {mid} does not support a seed; leave seed out"
    return None
