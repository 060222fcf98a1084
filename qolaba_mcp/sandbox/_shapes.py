"""The sandbox's answers on the wire: errors, injected drops and cut-off bodies, model entries, NSFW flags."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from ..api._catalog import ModelInfo
from ._state import _nsfw_flags, _Task


def _error(status: int, error: str, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": error, "message": message, **extra}, status_code=status)


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat().replace("+00:00", "Z")


class QuietInjectedDrops(logging.Filter):
    """Drops uvicorn's complaint about each connection the sandbox cuts on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "returned without completing response" not in record.getMessage()


class _Disconnect(Response):
    """Starts a response and abandons it, so the client sees the connection drop mid-answer."""

    def __init__(self) -> None:
        super().__init__(status_code=200)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"512")],
            }
        )
        await send({"type": "http.response.body", "body": b'{"task_id": "', "more_body": True})
        # Returning now leaves the promised body unsent; uvicorn then closes the connection.


def _malformed(status: int = 200, task_id: str | None = None) -> Response:
    """A body cut off mid-JSON, as a proxy or a crashing server might send it."""
    body = f'{{"task_id": "{task_id}", "status": "PEND' if task_id else '{"task_id": "task_x", "status": PROCESS'
    return Response(body.encode(), status_code=status, media_type="application/json")


_PROVIDER_NAMES = {"vertex": "Google Vertex AI", "openai": "OpenAI", "fal": "fal.ai"}


def _model_entry(model: ModelInfo) -> dict[str, Any]:
    """One model as ``GET /api/v1/images/models`` lists it; prices match what a generation is charged."""
    provider = model.id.partition("/")[0]
    entry: dict[str, Any] = {
        "id": model.id,
        "name": model.display_name,
        "provider": provider,
        "providerName": _PROVIDER_NAMES.get(provider, provider),
        "description": model.description or model.display_name,
        "capabilities": [capability.replace("-", "_") for capability in model.capabilities],
        "imageSize": list(model.aspect_ratios),
        "quality_pricing": model.price_usd,
        "outputFormat": "png",
        "maxNumImages": model.max_images,
        "defaultNumImages": 1,
        "supportsSeed": "seed" in model.parameters,
    }
    if "quality" in model.parameters:  # only models that take a preset publish their presets
        entry["quality"] = list(model.qualities)
    if "temperature" in model.parameters:
        low = 0.0 if model.min_temperature is None else model.min_temperature
        high = 2.0 if model.max_temperature is None else model.max_temperature
        entry.update(minTemperature=low, maxTemperature=high, defaultTemperature=min(max(1.0, low), high))
    if "reference_images" in model.parameters:
        entry["maxReferenceImages"] = 14 if model.max_reference_images is None else model.max_reference_images
    return entry


def _nsfw_field(task: _Task) -> dict[str, list[bool]]:
    """The flags as a top-level field, for the shapes that do not carry them in ``output``; none if none is set."""
    return {} if task.nsfw == "none" else {"Has_NSFW_Content": _nsfw_flags(task)}


def _rate_limited(retry_after: float) -> JSONResponse:
    return _error(429, "Rate Limited", "Too many requests (sandbox fault).", retryAfter=retry_after)
