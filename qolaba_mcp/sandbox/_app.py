"""The sandbox: a local, Qolaba-compatible image API with real PNGs, the API's validation and fault injection."""

from __future__ import annotations

import json
import logging
import random
import secrets
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import anyio
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from .._catalog import CREDIT_USD, Catalog, ModelInfo
from .._models import GENERATION_FIELDS, GenerateRequest, ImageOutput, TaskStatus, Usage
from ._png import render_png

log = logging.getLogger("qolaba_mcp.sandbox")

FaultKind = Literal["rate_limit", "server_error", "disconnect", "lost_response", "malformed", "failed_task"]
FaultTarget = Literal["submit", "poll", "both"]
ModelsEndpoint = Literal["ok", "404", "500", "garbage"]
PollShape = Literal["output-object", "output-list", "output-urls", "top-level", "mixed"]
_SHAPES: tuple[PollShape, ...] = ("output-object", "output-list", "output-urls", "top-level")

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
    counters: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    polls_by_task: Counter[str] = field(default_factory=Counter)
    rng: random.Random = field(default_factory=random.Random)

    def reset(self) -> None:
        self.tasks.clear()
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


class Sandbox:
    """The ASGI application and its state; mount it anywhere or run it with ``SandboxServer``."""

    def __init__(self, config: SandboxConfig | None = None, *, catalog: Catalog | None = None) -> None:
        self.state = SandboxState(config=config or SandboxConfig(), catalog=catalog or Catalog.builtin())
        self.state.reset()
        self.app = Starlette(
            routes=[
                Route("/api/v1/images/generate", self._generate, methods=["POST"]),
                Route("/api/v1/tasks/{task_id}", self._get_task, methods=["GET"]),
                Route("/api/v1/images/models", self._models, methods=["GET"]),
                Route("/_sandbox/images/{task_id}/{index:int}.png", self._image, methods=["GET"]),
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
        task = self._create(parsed, model)
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
        return JSONResponse(self._result(task, request))

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
        task = state.tasks.get(task_id)
        if task is None:
            return _error(404, "Not Found", f"Unknown task: {task_id}")
        return JSONResponse(self._task_body(task, request))

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
        task = self.state.tasks.get(request.path_params["task_id"])
        index = request.path_params["index"]
        if task is None or task.status(time.time()) != "SUCCESS" or not 0 <= index < _count(task):
            return _error(404, "Not Found", "No such image.")
        self.state.counters["image_downloads"] += 1
        key = f"{task.seed}|{index}|{task.request.prompt or ''}|{task.model.id}"
        png = await anyio.to_thread.run_sync(lambda: render_png(width=task.width, height=task.height, key=key))
        return Response(png, media_type="image/png", headers={"Cache-Control": "public, max-age=3600"})

    # --- sandbox control ------------------------------------------------------------------------------

    async def _stats(self, request: Request) -> Response:
        return JSONResponse(self.state.stats())

    async def _reset(self, request: Request) -> Response:
        self.state.reset()
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

    def _create(self, request: GenerateRequest, model: ModelInfo) -> _Task:
        state = self.state
        now = time.time()
        width, height = model.dimensions(request.aspect_ratio, request.quality)
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
            for index in range(_count(task))
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
        body: dict[str, Any] = {
            "task_id": task.task_id,
            "type": "image",
            "status": status,
            "model": task.model.id,
            "created_at": _iso(task.created),
            "progress": min(100, round(100 * (now - task.created) / task.latency)) if task.latency else 100,
            "output": None,
            "error": None,
            "error_detail": None,
        }
        if status == "FAILED":
            body["completed_at"] = _iso(task.created + task.latency)
            body["error"] = "Generation failed"
            body["error_detail"] = "The model returned no image (sandbox-injected failure)."
        elif status == "SUCCESS":
            body["completed_at"] = _iso(task.created + task.latency)
            result = self._result(task, request)
            images = result["images"]
            if task.shape == "output-object":
                body["output"] = result
            elif task.shape == "output-list":
                body["output"] = images
            elif task.shape == "output-urls":
                body["output"] = [image["url"] for image in images]
            else:
                body.update(result)
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


def _count(task: _Task) -> int:
    return task.request.num_images or 1


def _api_key(request: Request) -> str:
    key = request.headers.get("x-api-key", "").strip()
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return key or (token.strip() if scheme.lower() == "bearer" else "")


def _rate_limited(retry_after: float) -> JSONResponse:
    return _error(429, "Rate Limited", "Too many requests (sandbox fault).", retryAfter=retry_after)
