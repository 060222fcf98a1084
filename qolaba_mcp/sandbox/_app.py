"""The sandbox: a local, Qolaba-compatible image API with real PNGs, the API's validation and fault injection.

Its pictures are drawn from the request (see ``_draw``): the inputs a request names are read when it is submitted,
and only from ``data:`` URIs and the sandbox's own image URLs; nothing is ever fetched over the network.
"""

from __future__ import annotations

import io
import json
import logging
import random
import re
import secrets
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import anyio
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from ..api._catalog import CREDIT_USD, Catalog, ModelInfo
from ..api._wire import GENERATION_FIELDS, GenerateRequest, ImageOutput, TaskStatus, Usage
from ._draw import InputImageError, decode_data_uri, load_image, low_res_jpeg, render
from ._png import render_png

log = logging.getLogger("qolaba_mcp.sandbox")

FaultKind = Literal["rate_limit", "server_error", "disconnect", "lost_response", "malformed", "failed_task"]
FaultTarget = Literal["submit", "poll", "both"]
ModelsEndpoint = Literal["ok", "404", "500", "garbage"]
PollShape = Literal["output-object", "output-list", "output-urls", "top-level", "backend", "mixed"]
_SHAPES: tuple[PollShape, ...] = ("output-object", "output-list", "output-urls", "top-level", "backend")
Nsfw = Literal["none", "some", "all"]

MAX_INPUT_BYTES = 10 * 1024 * 1024  # one input image file, decoded from its data: URI

FAULT_ALIASES: dict[str, FaultKind] = {
    "429": "rate_limit",
    "rate_limit": "rate_limit",
    "500": "server_error",
    "5xx": "server_error",
    "server_error": "server_error",
    "drop": "disconnect",
    "disconnect": "disconnect",
    "drop-after": "lost_response",
    "lost_response": "lost_response",
    "malformed": "malformed",
    "failed": "failed_task",
    "failed_task": "failed_task",
}


class Fault(BaseModel):
    """Inject ``kind`` into a fraction ``rate`` of requests (``failed_task``: of created tasks)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: FaultKind
    rate: Annotated[float, Field(ge=0, le=1)]
    on: FaultTarget = "both"

    @classmethod
    def parse(cls, spec: str) -> Fault:
        """Parse ``KIND[@submit|@poll]=RATE``, e.g. ``429=0.1`` or ``500@poll=0.05``."""
        name, sep, rate = spec.partition("=")
        kind, _, target = name.partition("@")
        if not sep or kind.strip().lower() not in FAULT_ALIASES:
            raise ValueError(
                f"bad fault {spec!r}: use KIND[@submit|@poll]=RATE with KIND one of "
                f"{sorted(FAULT_ALIASES)} and RATE from 0 to 1"
            )
        return cls(
            kind=FAULT_ALIASES[kind.strip().lower()],
            rate=float(rate),
            on=target.strip().lower() or "both",
        )


class SandboxConfig(BaseModel):
    """The sandbox's knobs; all can be changed while it runs."""

    model_config = ConfigDict(extra="forbid")

    latency: Annotated[float, Field(ge=0, le=3600)] = Field(
        default=2.0, description="Seconds a generation takes (sync requests wait this long)."
    )
    faults: list[Fault] = Field(default_factory=list)
    retry_after: Annotated[float, Field(ge=0, le=3600)] = Field(
        default=1.0, description="retryAfter seconds sent with an injected 429."
    )
    poll_shape: PollShape = Field(
        default="output-object", description="Where a finished task's images appear in the poll body."
    )
    random_seed: int | None = Field(default=None, description="Seed for the fault dice, for repeatable runs.")
    api_keys: list[str] | None = Field(
        default=None, description="When set, only these keys are accepted (others get 401); else any key."
    )
    models_endpoint: ModelsEndpoint = Field(
        default="ok",
        description="How GET /api/v1/images/models answers: the list, 404, 500, or a body that is not JSON.",
    )
    nsfw: Nsfw = Field(
        default="none",
        description="Images the provider's safety filter flags: none, the first ('some'; it stays), or every one "
        "('all'; all are removed, the generation is still charged).",
    )
    failed_status: Literal[200, 500] = Field(
        default=200, description="HTTP status of a poll that finds its task FAILED (the body is the same)."
    )
    pictures: Literal["captioned", "plain"] = Field(
        default="captioned",
        description="captioned: every image shows its prompt, model, seed and size over a seeded pattern. plain: a "
        "generation without input images is a cheap seeded gradient (for fast test suites); edits are always drawn.",
    )
    result_ttl: Annotated[float, Field(ge=0)] | None = Field(
        default=None,
        description="Seconds a finished task is kept; after that its polls and its images answer 404. None: forever.",
    )


@dataclass(frozen=True)
class _Inputs:
    """A request's input images as image files (at most 16 + 14 + 1 of them, each at most MAX_INPUT_BYTES)."""

    sources: tuple[bytes, ...] = ()
    references: tuple[bytes, ...] = ()
    mask: bytes | None = None


@dataclass
class _Task:
    task_id: str
    request: GenerateRequest
    model: ModelInfo
    seed: int
    width: int
    height: int
    created: float  # wall clock, seconds
    latency: float
    fails: bool
    shape: PollShape
    nsfw: Nsfw
    inputs: _Inputs
    plain: bool = False  # drawn as a cheap gradient (pictures="plain", no input images)

    def status(self, now: float) -> TaskStatus:
        elapsed = now - self.created
        if elapsed >= self.latency:
            return "FAILED" if self.fails else "SUCCESS"
        return "PENDING" if elapsed < self.latency * 0.2 else "PROCESSING"


@dataclass
class SandboxState:
    """Everything the sandbox remembers: its config, its tasks and its counters."""

    config: SandboxConfig = field(default_factory=SandboxConfig)
    catalog: Catalog = field(default_factory=Catalog.builtin)
    tasks: dict[str, _Task] = field(default_factory=dict)
    expired: set[str] = field(default_factory=set)  # ids of tasks forgotten after result_ttl
    counters: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    polls_by_task: Counter[str] = field(default_factory=Counter)
    rng: random.Random = field(default_factory=random.Random)

    def reset(self) -> None:
        self.tasks.clear()
        self.expired.clear()
        self.counters.clear()
        self.faults.clear()
        self.polls_by_task.clear()
        self.rng.seed(self.config.random_seed)

    def roll(self, kind: FaultKind, endpoint: Literal["submit", "poll"]) -> bool:
        """Whether to inject ``kind`` now; each configured fault rolls its own die."""
        for fault in self.config.faults:
            if fault.kind == kind and fault.on in (endpoint, "both") and self.rng.random() < fault.rate:
                self.faults[f"{kind}:{endpoint}"] += 1
                return True
        return False

    def expire(self, now: float) -> None:
        """Forget the finished tasks older than ``result_ttl``, remembering only their ids."""
        ttl = self.config.result_ttl
        if ttl is None:
            return
        for task_id, task in list(self.tasks.items()):
            if now > task.created + task.latency + ttl:
                del self.tasks[task_id]
                self.expired.add(task_id)

    def find(self, task_id: str, now: float) -> _Task | str:
        """The task, or why there is none: its id is unknown, or it has expired."""
        self.expire(now)
        task = self.tasks.get(task_id)
        if task is not None:
            return task
        return f"Task {task_id} has expired" if task_id in self.expired else f"Unknown task: {task_id}"

    def stats(self) -> dict[str, Any]:
        return {
            **{name: self.counters[name] for name in _COUNTERS},
            "faults": dict(self.faults),
            "faults_total": sum(self.faults.values()),
            "tasks": len(self.tasks),
            "polls_by_task": dict(self.polls_by_task),
        }


_COUNTERS = (
    "submit_requests",  # every POST to the generate endpoint
    "submissions",  # generations accepted (each one a charge on the real API)
    "sync_generations",
    "async_tasks",
    "polls",
    "model_lists",  # every GET of the model list
    "image_downloads",
    "rejected",  # 400s
    "unauthorized",  # 401s
)


def _error(status: int, error: str, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": error, "message": message, **extra}, status_code=status)


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _validation_message(exc: ValidationError) -> str:
    problems = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"]) or "body"
        problems.append(f"{loc}: {err['msg']} (got {_short(err.get('input'))})")
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


class _RenderCache:
    """The last few files drawn, so that downloading an image again does not draw it again."""

    def __init__(self, *, entries: int = 16, max_bytes: int = 128 * 1024 * 1024) -> None:
        self._files: OrderedDict[tuple[str, int, str], bytes] = OrderedDict()
        self._entries = entries
        self._max_bytes = max_bytes

    def get(self, key: tuple[str, int, str]) -> bytes | None:
        data = self._files.get(key)
        if data is not None:
            self._files.move_to_end(key)
        return data

    def put(self, key: tuple[str, int, str], data: bytes) -> None:
        self._files[key] = data
        self._files.move_to_end(key)
        while len(self._files) > self._entries or (
            len(self._files) > 1 and sum(map(len, self._files.values())) > self._max_bytes
        ):
            self._files.popitem(last=False)

    def clear(self) -> None:
        self._files.clear()


class Sandbox:
    """The ASGI application and its state; mount it anywhere or run it with ``SandboxServer``."""

    def __init__(self, config: SandboxConfig | None = None, *, catalog: Catalog | None = None) -> None:
        self.state = SandboxState(config=config or SandboxConfig(), catalog=catalog or Catalog.builtin())
        self.state.reset()
        self._cache = _RenderCache()
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
            return _rate_limited(state.config.retry_after)
        if state.roll("server_error", "submit"):
            return _error(500, "Internal Server Error", "Unexpected server-side failure (sandbox fault).")
        if state.roll("disconnect", "submit"):
            return _Disconnect()  # cut before the request was processed: no task exists
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
            return _Disconnect()
        if state.roll("malformed", "submit"):
            return _malformed(202 if parsed.celery else 200, task.task_id)
        if parsed.celery:
            state.counters["async_tasks"] += 1
            return JSONResponse({"task_id": task.task_id, "status": "PENDING", "type": "image"}, status_code=202)
        state.counters["sync_generations"] += 1
        await anyio.sleep(task.latency)
        if task.fails:
            return _error(
                500,
                "Internal Server Error",
                "Generation failed: the model returned no image (sandbox-injected failure).",
                task_id=task.task_id,
            )
        return JSONResponse({**self._result(task, request), **_nsfw_field(task)})

    async def _get_task(self, request: Request) -> Response:
        state = self.state
        state.counters["polls"] += 1
        task_id = request.path_params["task_id"]
        refusal = self._refuse_key(request)
        if refusal is not None:
            return refusal
        state.polls_by_task[task_id] += 1
        if state.roll("rate_limit", "poll"):
            return _rate_limited(state.config.retry_after)
        if state.roll("server_error", "poll"):
            return _error(503, "Service Unavailable", "The task service is busy (sandbox fault).")
        if state.roll("disconnect", "poll"):
            return _Disconnect()
        if state.roll("malformed", "poll"):
            return _malformed()
        task = state.find(task_id, time.time())
        if isinstance(task, str):
            return _error(404, "Not Found", task)
        body = self._task_body(task, request)
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
            return _error(404, "Not Found", "Cannot GET /api/v1/images/models (sandbox fault).")
        if mode == "500":
            return _error(500, "Internal Server Error", "Unexpected server-side failure (sandbox fault).")
        if mode == "garbage":
            return Response(b"<html>502 Bad Gateway</html>", status_code=200, media_type="application/json")
        return JSONResponse({"models": [_model_entry(model) for model in state.catalog]})

    async def _image(self, request: Request) -> Response:
        task = self._finished(request.path_params["task_id"], request.path_params["index"])
        if isinstance(task, str):
            return _error(404, "Not Found", task)
        self.state.counters["image_downloads"] += 1
        png = await self._png(task, request.path_params["index"])
        return Response(png, media_type="image/png", headers={"Cache-Control": "public, max-age=3600"})

    async def _low_res(self, request: Request) -> Response:
        task = self._finished(request.path_params["task_id"], request.path_params["index"])
        if isinstance(task, str):
            return _error(404, "Not Found", task)
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
                return _error(400, "Bad Request", f"invalid sandbox config: {exc}")
        return JSONResponse(self.state.config.model_dump(mode="json"))

    # --- internals -----------------------------------------------------------------------------------

    def _refuse_key(self, request: Request) -> Response | None:
        key = _api_key(request)
        if key and (self.state.config.api_keys is None or key in self.state.config.api_keys):
            return None
        self.state.counters["unauthorized"] += 1
        if not key:
            return _error(401, "Unauthorized", "Missing API key: send X-API-Key or Authorization: Bearer.")
        return _error(401, "Unauthorized", "Invalid API key.")

    async def _parse(self, request: Request) -> tuple[Response | None, GenerateRequest | None, ModelInfo | None]:
        try:
            body = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _error(400, "Bad Request", "The request body must be JSON."), None, None
        if not isinstance(body, dict):
            return _error(400, "Bad Request", "The request body must be a JSON object."), None, None
        try:
            parsed = GenerateRequest.model_validate(body)
        except ValidationError as exc:
            return _error(400, "Bad Request", _validation_message(exc)), None, None
        if parsed.model_extra:
            unknown = ", ".join(sorted(parsed.model_extra))
            return _error(400, "Bad Request", f"Unknown field(s): {unknown}."), None, None
        model = self.state.catalog.get(parsed.model)
        if model is None:
            known = ", ".join(self.state.catalog.ids())
            return (
                _error(400, "Bad Request", f"Unknown model '{parsed.model}'. Supported models: {known}."),
                None,
                None,
            )
        problem = _check_model_fields(parsed, model)
        if problem is not None:
            return _error(400, "Bad Request", problem), None, None
        return None, parsed, model

    async def _read_inputs(self, parsed: GenerateRequest, request: Request) -> _Inputs | Response:
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
            return _error(400, "Image URL Error", str(exc))
        return _Inputs(sources=tuple(sources), references=tuple(references), mask=mask)

    async def _read_input(self, name: str, url: str, base_url: str) -> bytes:
        """The image file behind one input, from a data: URI or one of this sandbox's own finished images."""
        if url[:5].lower() == "data:":
            try:
                return await anyio.to_thread.run_sync(_read_data_uri, url, limiter=self._drawing)
            except InputImageError as exc:
                raise InputImageError(f"{name}: {exc}") from None
        own = _own_image(url, base_url)
        if own is None:
            raise InputImageError(
                f"{name}: the sandbox reads only data: URIs (data:image/...;base64,...) and its own image URLs "
                f"({base_url.rstrip('/')}/_sandbox/images/<task_id>/<index>.png); it fetches nothing over the "
                f"network, so it cannot read {_short(url)}"
            )
        task = self._finished(*own)
        if isinstance(task, str):
            raise InputImageError(f"{name}: {_short(url)} is not an image this sandbox can read ({task})")
        return await self._png(task, own[1])

    def _finished(self, task_id: str, index: int) -> _Task | str:
        """The task whose image ``index`` exists, or why there is none."""
        now = time.time()
        task = self.state.find(task_id, now)
        if isinstance(task, str):
            return task
        if task.status(now) != "SUCCESS":
            return f"Task {task_id} has not finished with SUCCESS"
        if not 0 <= index < _published(task):
            return f"Task {task_id} has no image {index}"
        return task

    async def _png(self, task: _Task, index: int) -> bytes:
        key = (task.task_id, index, "png")
        png = self._cache.get(key)
        if png is None:
            png = await anyio.to_thread.run_sync(partial(_draw_image, task, index), limiter=self._drawing)
            self._cache.put(key, png)
        return png

    async def _jpeg(self, task: _Task, index: int) -> bytes:
        key = (task.task_id, index, "low.jpg")
        jpeg = self._cache.get(key)
        if jpeg is None:
            png = await self._png(task, index)
            jpeg = await anyio.to_thread.run_sync(low_res_jpeg, png, limiter=self._drawing)
            self._cache.put(key, jpeg)
        return jpeg

    def _create(self, request: GenerateRequest, model: ModelInfo, inputs: _Inputs) -> _Task:
        state = self.state
        now = time.time()
        state.expire(now)
        width, height = model.dimensions(request.aspect_ratio, request.quality)
        if inputs.sources and request.aspect_ratio is None:  # an edit keeps its source's shape
            width, height = _source_shape(inputs.sources[0], max(width, height)) or (width, height)
        shape = state.config.poll_shape
        task = _Task(
            task_id=f"task_{int(now * 1000)}_{secrets.token_hex(4)}",
            request=request,
            model=model,
            seed=request.seed if request.seed is not None else secrets.randbelow(2**31),
            width=width,
            height=height,
            created=now,
            latency=state.config.latency,
            fails=state.roll("failed_task", "submit"),
            shape=state.rng.choice(_SHAPES) if shape == "mixed" else shape,
            nsfw=state.config.nsfw,
            inputs=inputs,
            plain=state.config.pictures == "plain" and not (inputs.sources or inputs.references or inputs.mask),
        )
        state.tasks[task.task_id] = task
        return task

    def _images(self, task: _Task, request: Request) -> list[ImageOutput]:
        base = str(request.base_url).rstrip("/")
        return [
            ImageOutput(
                url=f"{base}/_sandbox/images/{task.task_id}/{index}.png",
                width=task.width,
                height=task.height,
                content_type="image/png",
            )
            for index in range(_published(task))
        ]

    def _usage(self, task: _Task) -> Usage:
        credits = _count(task) * task.model.credits_for(task.request.quality)
        return Usage(images_generated=_count(task), cost_usd=round(credits * CREDIT_USD, 6), cost_credits=credits)

    def _result(self, task: _Task, request: Request) -> dict[str, Any]:
        return {
            "task_id": task.task_id,
            "prompt": task.request.prompt,
            "seed": task.seed,
            "images": [image.model_dump(mode="json") for image in self._images(task, request)],
            "usage": self._usage(task).model_dump(mode="json"),
        }

    def _task_body(self, task: _Task, request: Request) -> dict[str, Any]:
        now = time.time()
        status = task.status(now)
        backend = task.shape == "backend"
        detail = "error_data" if backend else "error_detail"
        body: dict[str, Any] = {
            "task_id": task.task_id,
            "type": "image",
            "status": status,
            "model": task.model.id,
            "created_at": _iso(task.created),
            "progress": min(100, round(100 * (now - task.created) / task.latency)) if task.latency else 100,
            "output": None,
            "error": None,
            detail: None,
        }
        if status == "FAILED":
            body["completed_at"] = _iso(task.created + task.latency)
            body["error"] = "Generation Error" if backend else "Generation failed"
            body[detail] = "The model returned no image (sandbox-injected failure)."
        elif status == "SUCCESS":
            body["completed_at"] = _iso(task.created + task.latency)
            result = self._result(task, request)
            images = result["images"]
            if backend:
                urls = [image["url"] for image in images]
                body["output"] = {
                    "result": urls,
                    "low_res_urls": [url.removesuffix(".png") + ".low.jpg" for url in urls],
                    "Has_NSFW_Content": _nsfw_flags(task),
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
                body.update(_nsfw_field(task))
        return body


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


def _source_shape(source: bytes, long_side: int) -> tuple[int, int] | None:
    """The source image's proportions at ``long_side`` pixels on its longer side (read from its header only)."""
    try:
        with Image.open(io.BytesIO(source)) as image:
            w, h = image.size
    except (OSError, ValueError):
        return None
    if w <= 0 or h <= 0:
        return None
    scale = long_side / max(w, h)
    return max(1, round(w * scale)), max(1, round(h * scale))


def _count(task: _Task) -> int:
    """How many images the task generated (and is charged for)."""
    return task.request.num_images or 1


def _published(task: _Task) -> int:
    """How many of its images the task shows: none when the safety filter removed them all."""
    return 0 if task.nsfw == "all" else _count(task)


def _nsfw_flags(task: _Task) -> list[bool]:
    """Whether the provider's safety filter flagged each image generated."""
    return [task.nsfw == "all" or (task.nsfw == "some" and index == 0) for index in range(_count(task))]


def _nsfw_field(task: _Task) -> dict[str, list[bool]]:
    """The flags as a top-level field, for the shapes that do not carry them in ``output``; none if none is set."""
    return {} if task.nsfw == "none" else {"Has_NSFW_Content": _nsfw_flags(task)}


_OWN_IMAGE = re.compile(r"/_sandbox/images/([^/]+)/([0-9]{1,6})\.png")
_DEFAULT_PORTS = {"http": 80, "https": 443}


def _own_image(url: str, base_url: str) -> tuple[str, int] | None:
    """The task id and index of one of this sandbox's image URLs (same scheme, host and port), else None."""
    try:
        parts, base = urlsplit(url), urlsplit(base_url)
        port, base_port = parts.port, base.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if (scheme, parts.hostname, port or _DEFAULT_PORTS.get(scheme)) != (
        base.scheme,
        base.hostname,
        base_port or _DEFAULT_PORTS.get(base.scheme),
    ):
        return None
    prefix = base.path.rstrip("/")
    found = _OWN_IMAGE.fullmatch(parts.path.removeprefix(prefix)) if parts.path.startswith(prefix) else None
    if found is None or parts.query or parts.fragment:
        return None
    return found[1], int(found[2])


def _read_data_uri(uri: str) -> bytes:
    """The image file in a data: URI, decoded once now so that bad pixel data is refused at submission."""
    data = decode_data_uri(uri, max_bytes=MAX_INPUT_BYTES)
    load_image(data).close()
    return data


def _draw_image(task: _Task, index: int) -> bytes:
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


def _rate_limited(retry_after: float) -> JSONResponse:
    return _error(429, "Rate Limited", "Too many requests (sandbox fault).", retryAfter=retry_after)
