"""An httpx2 transport that times each exchange, classifies its failures, and (tracing on) makes it a client span
whose W3C ``traceparent`` goes out with the request."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from typing import Literal

import httpx2
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, StatusCode

from ._ops import Ops

_tracer = trace.get_tracer("qolaba_mcp")


def _api_route(path: str) -> tuple[str, str]:
    """(operation, url template) of an API path: the task id never becomes a label or a span name."""
    if path.endswith("/images/generate"):
        return "generate", path
    if "/tasks/" in path:
        return "get_task", path[: path.index("/tasks/")] + "/tasks/{task_id}"
    if path.endswith("/models"):
        return "list_models", path
    return "other", "other"


def _status_class(status: int) -> str:
    if status == 429:
        return "429"
    return f"{status // 100}xx"


class ObservedTransport(httpx2.AsyncBaseTransport):
    """Wraps the real transport of the API client (``kind="api"``) or of image downloads (``kind="image"``)."""

    def __init__(self, inner: httpx2.AsyncBaseTransport, *, ops: Ops, kind: Literal["api", "image"]) -> None:
        self._inner, self._ops, self._kind = inner, ops, kind

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        if self._kind == "api":
            operation, template = _api_route(request.url.path)
            name = f"{request.method} {template}"
        else:
            operation, template, name = "download", "", "GET image"
        started = time.monotonic()
        span = _tracer.start_span(name, kind=SpanKind.CLIENT, attributes=self._attributes(request, template))
        try:
            if self._ops.tracing:
                carrier: dict[str, str] = {}
                propagate.inject(carrier, context=trace.set_span_in_context(span))
                request.headers.update(carrier)
            try:
                response = await self._inner.handle_async_request(request)
            except httpx2.TimeoutException as exc:
                self._failed(span, "timeout", operation, started, exc)
                raise
            except httpx2.TransportError as exc:
                self._failed(span, "network", operation, started, exc)
                raise
        except BaseException:
            span.end()
            raise
        span.set_attribute("http.response.status_code", response.status_code)
        if response.status_code >= 400:
            span.set_attribute("error.type", str(response.status_code))
            span.set_status(StatusCode.ERROR)
        if self._kind == "api":
            span.end()
            self._api_done(operation, _status_class(response.status_code), started)
            return response
        # a download is timed to its last byte: the body is counted as the caller reads it
        assert isinstance(response.stream, httpx2.AsyncByteStream)  # an async transport's body
        stream = _Counted(response.stream, lambda size, ok: self._downloaded(span, size, ok, started))
        return httpx2.Response(
            response.status_code, headers=response.headers, stream=stream, extensions=response.extensions
        )

    def _attributes(self, request: httpx2.Request, template: str) -> dict[str, str | int]:
        attributes: dict[str, str | int] = {
            "http.request.method": request.method,
            "server.address": request.url.host,
            "server.port": request.url.port or (443 if request.url.scheme == "https" else 80),
        }
        if template:
            attributes["url.template"] = template
        return attributes

    def _failed(self, span: trace.Span, error: str, operation: str, started: float, exc: BaseException) -> None:
        span.set_attribute("error.type", type(exc).__name__)
        span.set_status(StatusCode.ERROR, error)
        if self._kind == "api":
            self._api_done(operation, error, started)
        else:
            self._downloaded(span, 0, False, started, end=False)

    def _api_done(self, operation: str, status_class: str, started: float) -> None:
        metrics = self._ops.metrics
        if metrics is None:
            return
        metrics.api_duration.labels(operation, status_class).observe(time.monotonic() - started)
        if status_class in ("429", "timeout", "network") or status_class.startswith(("4", "5")):
            metrics.api_errors.labels(status_class).inc()

    def _downloaded(self, span: trace.Span, size: int, ok: bool, started: float, *, end: bool = True) -> None:
        span.set_attribute("http.response.body.size", size)
        if end:
            span.end()
        metrics = self._ops.metrics
        if metrics is not None:
            metrics.download_bytes.inc(size)
            metrics.download_duration.labels("ok" if ok else "error").observe(time.monotonic() - started)

    async def aclose(self) -> None:
        await self._inner.aclose()


class _Counted(httpx2.AsyncByteStream):
    """A response body that reports its size, and whether it was read to the end, once closed."""

    def __init__(self, inner: httpx2.AsyncByteStream, done: Callable[[int, bool], None]) -> None:
        self._inner, self._done = inner, done
        self._size, self._whole, self._reported = 0, False, False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._inner:
            self._size += len(chunk)
            yield chunk
        self._whole = True

    async def aclose(self) -> None:
        try:
            await self._inner.aclose()
        finally:
            if not self._reported:
                self._reported = True
                self._done(self._size, self._whole)
