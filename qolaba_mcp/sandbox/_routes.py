"""The sandbox's ASGI app: its routes, the API's request validation, and the images of finished tasks.

Its pictures are drawn from the request (see ``_draw``): the inputs a request names are read when it is submitted,
and only from ``data:`` URIs and the sandbox's own image URLs; nothing is ever fetched over the network.
"""

from __future__ import annotations

import json
import secrets
import time
from functools import partial
from typing import Any

import anyio
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from ..api._catalog import Catalog, ModelInfo
from ..api._wire import GENERATION_FIELDS, GenerateRequest
from ._config import SHAPES, SandboxConfig
from ._draw import InputImageError, load_image, low_res_jpeg, render
from ._inputs import own_image, read_data_uri, source_shape
from ._png import render_png
from ._shapes import (
    Disconnect,
    error_response,
    malformed,
    model_entry,
    nsfw_field,
    rate_limited,
    result_body,
    short,
    task_body,
)
from ._state import Inputs, RenderCache, SandboxState, Task, published


def _validation_message(exc: ValidationError) -> str:
    problems = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"]) or "body"
        problems.append(f"{loc}: {err['msg']} (got {short(err.get('input'))})")
    return "; ".join(problems)


def _check_model_fields(request: GenerateRequest, model: ModelInfo) -> str | None:
    """The API's per-model rules: required inputs, supported fields, counts, ratios and presets."""
    given = {name for name in GENERATION_FIELDS if getattr(request, name) is not None}
    unsupported = sorted(given - set(model.parameters))
    if unsupported:
        return (
            f"model '{model.id}' does not support {', '.join(unsupported)}; it accepts: {', '.join(model.parameters)}"
        )
    missing = [name for name in model.required if getattr(request, name) in (None, "", [])]
    if missing:
        return f"{', '.join(missing)} is required for model '{model.id}'"
    if request.num_images is not None and request.num_images > model.max_images:
        return (
            f"num_images: model '{model.id}' generates at most {model.max_images} images per "
            f"request (got {request.num_images})"
        )
    if request.aspect_ratio is not None and request.aspect_ratio not in model.aspect_ratios:
        return (
            f"aspect_ratio: '{request.aspect_ratio}' is not supported by '{model.id}'; "
            f"use one of {', '.join(model.aspect_ratios)}"
        )
    if request.quality is not None and request.quality not in model.qualities:
        return f"quality: '{request.quality}' is not supported by '{model.id}'; use one of {', '.join(model.qualities)}"
    return None


class Sandbox:
    """The ASGI application and its state; mount it anywhere or run it with ``SandboxServer``."""

    def __init__(self, config: SandboxConfig | None = None, *, catalog: Catalog | None = None) -> None:
        self.state = SandboxState(config=config or SandboxConfig(), catalog=catalog or Catalog.builtin())
        self.state.reset()
        self._cache = RenderCache()
        # Drawing a 4K picture takes most of a second and a few hundred MB: a few at a time, off the event loop.
        self._drawing = anyio.CapacityLimiter(4)
        self.app = Starlette(
            routes=[
                Route("/api/v1/images/generate", self._generate, methods=["POST"]),
                Route("/api/v1/tasks/{task_id}", self._get_task, methods=["GET"]),
                Route("/api/v1/images/models", self._models, methods=["GET"]),
                Route("/_sandbox/images/{task_id}/{index:int}.png", self._image, methods=["GET"]),
                Route("/_sandbox/images/{task_id}/{index:int}.low.jpg", self._low_res, methods=["GET"]),
                Route("/_sandbox/stats", self._stats, methods=["GET"]),
                Route("/_sandbox/reset", self._reset, methods=["POST"]),
                Route("/_sandbox/config", self._config, methods=["GET", "PUT"]),
            ]
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)

    @property
    def config(self) -> SandboxConfig:
        return self.state.config

    def configure(self, **changes: Any) -> SandboxConfig:
        """Change knobs while running, e.g. ``configure(latency=0, faults=[Fault(...)])``."""
        self.state.config = SandboxConfig.model_validate({**self.state.config.model_dump(), **changes})
        if "random_seed" in changes:
            self.state.rng.seed(self.state.config.random_seed)
        return self.state.config

    # --- API endpoints -------------------------------------------------------------------------------

    async def _generate(self, request: Request) -> Response:
        state = self.state
        state.counters["submit_requests"] += 1
        refusal = self._refuse_key(request)
        if refusal is not None:
            return refusal
        if state.roll("rate_limit", "submit"):
            return rate_limited(state.config.retry_after)
        if state.roll("server_error", "submit"):
            return error_response(500, "Internal Server Error", "Unexpected server-side failure (sandbox fault).")
        if state.roll("disconnect", "submit"):
            return Disconnect()  # cut before the request was processed: no task exists
        rejection, parsed, model = await self._parse(request)
        if rejection is not None:
            state.counters["rejected"] += 1
            return rejection
        assert parsed is not None and model is not None
        inputs = await self._read_inputs(parsed, request)
        if isinstance(inputs, Response):
            state.counters["rejected"] += 1
            return inputs
        task = self._create(parsed, model, inputs)
        state.counters["submissions"] += 1
        # A lost or garbled answer after the task exists is the case that tempts clients to resubmit.
        if state.roll("lost_response", "submit"):
            return Disconnect()
        if state.roll("malformed", "submit"):
            return malformed(202 if parsed.celery else 200, task.task_id)
        if parsed.celery:
            state.counters["async_tasks"] += 1
            return JSONResponse({"task_id": task.task_id, "status": "PENDING", "type": "image"}, status_code=202)
        state.counters["sync_generations"] += 1
        await anyio.sleep(task.latency)
        if task.fails:
            return error_response(
                500,
                "Internal Server Error",
                "Generation failed: the model returned no image (sandbox-injected failure).",
                task_id=task.task_id,
            )
        return JSONResponse({**result_body(task, str(request.base_url)), **nsfw_field(task)})

    async def _get_task(self, request: Request) -> Response:
        state = self.state
        state.counters["polls"] += 1
        task_id = request.path_params["task_id"]
        refusal = self._refuse_key(request)
        if refusal is not None:
            return refusal
        state.polls_by_task[task_id] += 1
        if state.roll("rate_limit", "poll"):
            return rate_limited(state.config.retry_after)
        if state.roll("server_error", "poll"):
            return error_response(503, "Service Unavailable", "The task service is busy (sandbox fault).")
        if state.roll("disconnect", "poll"):
            return Disconnect()
        if state.roll("malformed", "poll"):
            return malformed()
        task = state.find(task_id, time.time())
        if isinstance(task, str):
            return error_response(404, "Not Found", task)
        body = task_body(task, str(request.base_url), time.time())
        failed = body["status"] == "FAILED"
        return JSONResponse(body, status_code=state.config.failed_status if failed else 200)

    async def _models(self, request: Request) -> Response:
        state = self.state
        state.counters["model_lists"] += 1
        refusal = self._refuse_key(request)
        if refusal is not None:
            return refusal
        mode = state.config.models_endpoint
        if mode == "404":
            return error_response(404, "Not Found", "Cannot GET /api/v1/images/models (sandbox fault).")
        if mode == "500":
            return error_response(500, "Internal Server Error", "Unexpected server-side failure (sandbox fault).")
        if mode == "garbage":
            return Response(b"<html>502 Bad Gateway</html>", status_code=200, media_type="application/json")
        return JSONResponse({"models": [model_entry(model) for model in state.catalog]})

    async def _image(self, request: Request) -> Response:
        task = self._finished(request.path_params["task_id"], request.path_params["index"])
        if isinstance(task, str):
            return error_response(404, "Not Found", task)
        self.state.counters["image_downloads"] += 1
        png = await self._png(task, request.path_params["index"])
        return Response(png, media_type="image/png", headers={"Cache-Control": "public, max-age=3600"})

    async def _low_res(self, request: Request) -> Response:
        task = self._finished(request.path_params["task_id"], request.path_params["index"])
        if isinstance(task, str):
            return error_response(404, "Not Found", task)
        self.state.counters["image_downloads"] += 1
        jpeg = await self._jpeg(task, request.path_params["index"])
        return Response(jpeg, media_type="image/jpeg", headers={"Cache-Control": "public, max-age=3600"})

    # --- sandbox control ------------------------------------------------------------------------------

    async def _stats(self, request: Request) -> Response:
        return JSONResponse(self.state.stats())

    async def _reset(self, request: Request) -> Response:
        self.state.reset()
        self._cache.clear()
        return JSONResponse(self.state.stats())

    async def _config(self, request: Request) -> Response:
        if request.method == "PUT":
            try:
                self.configure(**json.loads(await request.body()))
            except (ValueError, ValidationError, TypeError) as exc:
                return error_response(400, "Bad Request", f"invalid sandbox config: {exc}")
        return JSONResponse(self.state.config.model_dump(mode="json"))

    # --- internals -----------------------------------------------------------------------------------

    def _refuse_key(self, request: Request) -> Response | None:
        key = _api_key(request)
        if key and (self.state.config.api_keys is None or key in self.state.config.api_keys):
            return None
        self.state.counters["unauthorized"] += 1
        if not key:
            return error_response(401, "Unauthorized", "Missing API key: send X-API-Key or Authorization: Bearer.")
        return error_response(401, "Unauthorized", "Invalid API key.")

    async def _parse(self, request: Request) -> tuple[Response | None, GenerateRequest | None, ModelInfo | None]:
        try:
            body = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError):
            return error_response(400, "Bad Request", "The request body must be JSON."), None, None
        if not isinstance(body, dict):
            return error_response(400, "Bad Request", "The request body must be a JSON object."), None, None
        try:
            parsed = GenerateRequest.model_validate(body)
        except ValidationError as exc:
            return error_response(400, "Bad Request", _validation_message(exc)), None, None
        if parsed.model_extra:
            unknown = ", ".join(sorted(parsed.model_extra))
            return error_response(400, "Bad Request", f"Unknown field(s): {unknown}."), None, None
        model = self.state.catalog.get(parsed.model)
        if model is None:
            known = ", ".join(self.state.catalog.ids())
            return (
                error_response(400, "Bad Request", f"Unknown model '{parsed.model}'. Supported models: {known}."),
                None,
                None,
            )
        problem = _check_model_fields(parsed, model)
        if problem is not None:
            return error_response(400, "Bad Request", problem), None, None
        return None, parsed, model

    async def _read_inputs(self, parsed: GenerateRequest, request: Request) -> Inputs | Response:
        """Every input image of the request, read now; a 400 naming the first that cannot be read."""
        base_url = str(request.base_url)
        try:
            sources = [
                await self._read_input(f"image_urls[{number}]", url, base_url)
                for number, url in enumerate(parsed.image_urls or [])
            ]
            references = [
                await self._read_input(f"reference_images[{number}].url", reference.url, base_url)
                for number, reference in enumerate(parsed.reference_images or [])
            ]
            mask = None if parsed.mask_url is None else await self._read_input("mask_url", parsed.mask_url, base_url)
        except InputImageError as exc:
            return error_response(400, "Image URL Error", str(exc))
        return Inputs(sources=tuple(sources), references=tuple(references), mask=mask)

    async def _read_input(self, name: str, url: str, base_url: str) -> bytes:
        """The image file behind one input, from a data: URI or one of this sandbox's own finished images."""
        if url[:5].lower() == "data:":
            try:
                return await anyio.to_thread.run_sync(read_data_uri, url, limiter=self._drawing)
            except InputImageError as exc:
                raise InputImageError(f"{name}: {exc}") from None
        own = own_image(url, base_url)
        if own is None:
            raise InputImageError(
                f"{name}: the sandbox reads only data: URIs (data:image/...;base64,...) and its own image URLs "
                f"({base_url.rstrip('/')}/_sandbox/images/<task_id>/<index>.png); it fetches nothing over the "
                f"network, so it cannot read {short(url)}"
            )
        task = self._finished(*own)
        if isinstance(task, str):
            raise InputImageError(f"{name}: {short(url)} is not an image this sandbox can read ({task})")
        return await self._png(task, own[1])

    def _finished(self, task_id: str, index: int) -> Task | str:
        """The task whose image ``index`` exists, or why there is none."""
        now = time.time()
        task = self.state.find(task_id, now)
        if isinstance(task, str):
            return task
        if task.status(now) != "SUCCESS":
            return f"Task {task_id} has not finished with SUCCESS"
        if not 0 <= index < published(task):
            return f"Task {task_id} has no image {index}"
        return task

    async def _png(self, task: Task, index: int) -> bytes:
        key = (task.task_id, index, "png")
        png = self._cache.get(key)
        if png is None:
            png = await anyio.to_thread.run_sync(partial(_draw_image, task, index), limiter=self._drawing)
            self._cache.put(key, png)
        return png

    async def _jpeg(self, task: Task, index: int) -> bytes:
        key = (task.task_id, index, "low.jpg")
        jpeg = self._cache.get(key)
        if jpeg is None:
            png = await self._png(task, index)
            jpeg = await anyio.to_thread.run_sync(low_res_jpeg, png, limiter=self._drawing)
            self._cache.put(key, jpeg)
        return jpeg

    def _create(self, request: GenerateRequest, model: ModelInfo, inputs: Inputs) -> Task:
        state = self.state
        now = time.time()
        state.expire(now)
        width, height = model.dimensions(request.aspect_ratio, request.quality)
        if inputs.sources and request.aspect_ratio is None:  # an edit keeps its source's shape
            width, height = source_shape(inputs.sources[0], max(width, height)) or (width, height)
        shape = state.config.poll_shape
        task = Task(
            task_id=f"task_{int(now * 1000)}_{secrets.token_hex(4)}",
            request=request,
            model=model,
            seed=request.seed if request.seed is not None else secrets.randbelow(2**31),
            width=width,
            height=height,
            created=now,
            latency=state.config.latency,
            fails=state.roll("failed_task", "submit"),
            shape=state.rng.choice(SHAPES) if shape == "mixed" else shape,
            nsfw=state.config.nsfw,
            inputs=inputs,
            plain=state.config.pictures == "plain" and not (inputs.sources or inputs.references or inputs.mask),
        )
        state.tasks[task.task_id] = task
        return task


def _draw_image(task: Task, index: int) -> bytes:
    """Image ``index`` of a finished task, drawn from its request and inputs (the inputs decode again here)."""
    if task.plain:
        key = f"{task.seed}|{index}|{task.request.prompt or ''}|{task.model.id}"
        return render_png(width=task.width, height=task.height, key=key)
    inputs = task.inputs
    return render(
        prompt=task.request.prompt,
        model=task.model.id,
        seed=task.seed,
        width=task.width,
        height=task.height,
        index=index,
        capabilities=list(task.model.capabilities),
        sources=[load_image(data) for data in inputs.sources],
        references=[load_image(data) for data in inputs.references],
        mask=None if inputs.mask is None else load_image(inputs.mask),
    )


def _api_key(request: Request) -> str:
    key = request.headers.get("x-api-key", "").strip()
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return key or (token.strip() if scheme.lower() == "bearer" else "")
