"""The sandbox's answers on the wire: results and poll bodies in each shape, errors, injected drops, model entries."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from ..api._catalog import CREDIT_USD, ModelInfo
from ..api._wire import ImageOutput, Usage
from ._state import Task, image_count, nsfw_flags, published


def error_response(status: int, error: str, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": error, "message": message, **extra}, status_code=status)


def short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat().replace("+00:00", "Z")


class QuietInjectedDrops(logging.Filter):
    """Drops uvicorn's complaint about each connection the sandbox cuts on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "returned without completing response" not in record.getMessage()


class Disconnect(Response):
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


def malformed(status: int = 200, task_id: str | None = None) -> Response:
    """A body cut off mid-JSON, as a proxy or a crashing server might send it."""
    body = f'{{"task_id": "{task_id}", "status": "PEND' if task_id else '{"task_id": "task_x", "status": PROCESS'
    return Response(body.encode(), status_code=status, media_type="application/json")


_PROVIDER_NAMES = {"vertex": "Google Vertex AI", "openai": "OpenAI", "fal": "fal.ai"}


def model_entry(model: ModelInfo) -> dict[str, Any]:
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


def nsfw_field(task: Task) -> dict[str, list[bool]]:
    """The flags as a top-level field, for the shapes that do not carry them in ``output``; none if none is set."""
    return {} if task.nsfw == "none" else {"Has_NSFW_Content": nsfw_flags(task)}


def rate_limited(retry_after: float) -> JSONResponse:
    return error_response(429, "Rate Limited", "Too many requests (sandbox fault).", retryAfter=retry_after)


def image_outputs(task: Task, base_url: str) -> list[ImageOutput]:
    """The images a finished task shows, at this sandbox's own URLs."""
    base = base_url.rstrip("/")
    return [
        ImageOutput(
            url=f"{base}/_sandbox/images/{task.task_id}/{index}.png",
            width=task.width,
            height=task.height,
            content_type="image/png",
        )
        for index in range(published(task))
    ]


def usage_of(task: Task) -> Usage:
    credits = image_count(task) * task.model.credits_for(task.request.quality)
    return Usage(images_generated=image_count(task), cost_usd=round(credits * CREDIT_USD, 6), cost_credits=credits)


def result_body(task: Task, base_url: str) -> dict[str, Any]:
    """A finished generation as a synchronous request receives it."""
    return {
        "task_id": task.task_id,
        "prompt": task.request.prompt,
        "seed": task.seed,
        "images": [image.model_dump(mode="json") for image in image_outputs(task, base_url)],
        "usage": usage_of(task).model_dump(mode="json"),
    }


def task_body(task: Task, base_url: str, now: float) -> dict[str, Any]:
    """A task as a poll finds it at ``now``, in the task's poll shape."""
    status = task.status(now)
    backend = task.shape == "backend"
    detail = "error_data" if backend else "error_detail"
    body: dict[str, Any] = {
        "task_id": task.task_id,
        "type": "image",
        "status": status,
        "model": task.model.id,
        "created_at": iso(task.created),
        "progress": min(100, round(100 * (now - task.created) / task.latency)) if task.latency else 100,
        "output": None,
        "error": None,
        detail: None,
    }
    if status == "FAILED":
        body["completed_at"] = iso(task.created + task.latency)
        body["error"] = "Generation Error" if backend else "Generation failed"
        body[detail] = "The model returned no image (sandbox-injected failure)."
    elif status == "SUCCESS":
        body["completed_at"] = iso(task.created + task.latency)
        result = result_body(task, base_url)
        images = result["images"]
        if backend:
            urls = [image["url"] for image in images]
            body["output"] = {
                "result": urls,
                "low_res_urls": [url.removesuffix(".png") + ".low.jpg" for url in urls],
                "Has_NSFW_Content": nsfw_flags(task),
            }
            body.update(seed=result["seed"], usage=result["usage"])
        elif task.shape == "output-object":
            body["output"] = result
        elif task.shape == "output-list":
            body["output"] = images
        elif task.shape == "output-urls":
            body["output"] = [image["url"] for image in images]
        else:
            body.update(result)
        if not backend:
            body.update(nsfw_field(task))
    return body
