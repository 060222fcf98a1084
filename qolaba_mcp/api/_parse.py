"""Reading the API's answers tolerantly: images, usage, seed and errors from whichever shape a body takes.

The models in ``_wire`` call these from their ``from_api``; each reader returns what it could read and appends a
note for what it could not, so one odd field never costs a paid result. The two modules import each other as
modules (names are looked up at call time), so either may be imported first.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

from . import _wire

_MAX_PROMPT = 4000
_MAX_SIZE = 100_000  # pixels on one side


def unwrap(payload: Mapping[str, Any]) -> Mapping[str, Any]:
    inner = payload.get("task")
    return inner if isinstance(inner, Mapping) else payload


def extras(model: type[BaseModel], payload: Mapping[str, Any]) -> dict[str, Any]:
    """The answer's other top-level fields, kept as ``model_extra`` (fields the API adds later)."""
    return {key: value for key, value in payload.items() if isinstance(key, str) and key not in model.model_fields}


def task_id_in(body: Mapping[str, Any], payload: Mapping[str, Any]) -> str | None:
    for place in (body, payload):
        for key in ("task_id", "id"):
            value = place.get(key)
            if isinstance(value, int) and not isinstance(value, bool):
                return str(value)
            if isinstance(value, str) and value.strip():
                return value.strip()
    return None


def content(body: Mapping[str, Any], notes: list[str]) -> dict[str, Any]:
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


def _apply_backend_lists(
    body: Mapping[str, Any], output: object, images: list[_wire.ImageOutput], notes: list[str]
) -> int:
    """The backend's per-image lists beside ``result``: ``low_res_urls`` (previews) and ``Has_NSFW_Content``.

    Returns how many images the safety filter removed when no image is left (0 otherwise)."""
    place = output if isinstance(output, Mapping) else body
    low = place.get("low_res_urls")
    if isinstance(low, list):
        for image, url in zip(images, low, strict=False):
            if isinstance(url, str) and url.strip() and len(url.strip()) <= _wire.MAX_URL_CHARS:
                image.preview_url = url.strip()
    flags = place.get("Has_NSFW_Content", body.get("Has_NSFW_Content"))
    if isinstance(flags, bool):
        flags = [flags] * max(len(images), 1)
    if not isinstance(flags, list):
        return 0
    flagged = [flag is True for flag in flags[: _wire.MAX_IMAGES]]
    if not images:
        return sum(flagged)
    for number, (image, flag) in enumerate(zip(images, flagged, strict=False), start=1):
        image.nsfw = flag
        if flag:
            notes.append(f"image {number} was flagged by the provider's safety filter (it may be blurred or blank)")
    return 0


def _images_from(top: object, output: object, notes: list[str]) -> list[_wire.ImageOutput]:
    for candidate in (top, output):
        if isinstance(candidate, Mapping):
            candidate = candidate.get("images", candidate.get("urls", candidate.get("result")))
        if isinstance(candidate, str):
            candidate = [candidate]
        if isinstance(candidate, list) and candidate:
            images = [_image(item, number, notes) for number, item in enumerate(candidate[: _wire.MAX_IMAGES], start=1)]
            if len(candidate) > _wire.MAX_IMAGES:
                notes.append(
                    f"the API listed {len(candidate)} images; only the first {_wire.MAX_IMAGES} are handled here, the "
                    f"other {len(candidate) - _wire.MAX_IMAGES} stay with the API under this task_id"
                )
            return [image for image in images if image is not None]
    return []


def _image(item: object, number: int, notes: list[str]) -> _wire.ImageOutput | None:
    details: Mapping[str, Any] = item if isinstance(item, Mapping) else {}
    urls = [item] if isinstance(item, str) else [details.get(key) for key in ("url", "image_url", "uri")]
    url = next((candidate for candidate in urls if isinstance(candidate, str)), None)
    if url is None:
        notes.append(f"image {number}: the API's entry {_show(item)} has no URL; left out")
        return None
    url = url.strip()  # a stray newline around a URL is not worth an image
    if len(url) > _wire.MAX_URL_CHARS:
        notes.append(f"image {number}: its URL is {len(url)} characters long (over {_wire.MAX_URL_CHARS}); left out")
        return None
    content_type = details.get("content_type")
    if content_type is not None and not (isinstance(content_type, str) and 0 < len(content_type) <= 100):
        notes.append(f"image {number}: content_type {_show(content_type)} is not a media type; left out")
        content_type = None
    return _wire.ImageOutput(
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


def _usage_from(body: Mapping[str, Any], output: object, notes: list[str]) -> _wire.Usage | None:
    for place in (body, output):
        if isinstance(place, Mapping) and place.get("usage") is not None:
            usage = place["usage"]
            if not isinstance(usage, Mapping):
                notes.append(f"usage {_show(usage)} is not an object; left out")
                return None
            return _wire.Usage(
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


def error_text(body: Mapping[str, Any]) -> str:
    parts: list[str] = []
    for key in ("error", "error_detail", "error_data", "error_message", "message"):
        text = _flatten_error(body.get(key))
        if text and text not in parts:
            parts.append(text)
    return _clip(": ".join(parts), _wire.MAX_API_TEXT) if parts else "the task failed without an error message"


def _flatten_error(value: object, depth: int = 0) -> str | None:
    """An error value as one line; nested shapes are read a few levels deep and a few items wide."""
    if value is None or value == "" or depth > 3:
        return None
    if isinstance(value, str):
        return _clip(value.strip(), _wire.MAX_API_TEXT) or None
    if isinstance(value, Mapping):
        for key in ("message", "detail", "error", "reason", "msg"):
            if isinstance(value.get(key), str) and value[key].strip():
                return _clip(str(value[key]).strip(), _wire.MAX_API_TEXT)
        pairs = list(value.items())[:10]
        return ", ".join(f"{k}={_flatten_error(v, depth + 1) or ''}" for k, v in pairs) or None
    if isinstance(value, list):
        texts = [t for t in (_flatten_error(v, depth + 1) for v in value[:10]) if t]
        return "; ".join(texts) or None
    return _show(value)


def progress_from(value: object) -> float | None:
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
