"""docs/operations.md: /healthz and /readyz (through a drain), /metrics scraped and parsed by prometheus-client's own
parser with bounded label sets, and spans exported by the OpenTelemetry SDK (in memory, and over OTLP/HTTP)."""

from __future__ import annotations

import http.server
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp import Client
from opentelemetry import context, propagate, trace
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from qolaba_mcp._config import Settings
from qolaba_mcp.ops import Ops
from qolaba_mcp.ops._metrics import Metrics
from qolaba_mcp.ops._tracing import tracing_requested
from qolaba_mcp.sandbox import SandboxServer
from qolaba_mcp.sandbox._png import render_png
from qolaba_mcp.server import build_server

from .conftest import HttpServer, connect, free_port, server_env
from .hostile import HostileServer, json_reply, raw_reply

CALL = {"model": "vertex/nano-banana-flash", "prompt": "A secret cat", "wait_seconds": 10}
PARENT_TRACE = "0af7651916cd43dd8448eb211c80319c"
PARENT_SPAN = "b7ad6b7169203331"
TRACEPARENT = f"00-{PARENT_TRACE}-{PARENT_SPAN}-01"
METRIC_NAMES = {
    "mcp_server_operation_duration_seconds",
    "qolaba_generations_started",
    "qolaba_generations_finished",
    "qolaba_generations_in_flight",
    "qolaba_images_delivered",
    "qolaba_delivery_notes",
    "qolaba_spend_usd",
    "qolaba_refusals",
    "qolaba_api_request_duration_seconds",
    "qolaba_api_errors",
    "qolaba_image_download_bytes",
    "qolaba_image_download_duration_seconds",
    "qolaba_ledger_write_duration_seconds",
    "qolaba_ledger_write_retries",
}


def families(text: str) -> dict[str, Any]:
    return {family.name: family for family in text_string_to_metric_families(text)}


def test_health_metrics_and_readiness_through_a_drain(sandbox: SandboxServer) -> None:
    metrics_port = free_port()
    server = HttpServer(server_env(sandbox.base_url), "--metrics-port", str(metrics_port))
    base = server.url.removesuffix("/mcp")
    try:
        with httpx2.Client(timeout=10) as http:  # one keep-alive connection: it outlives the listening socket
            assert http.get(f"{base}/healthz").json() == {"status": "ok"}
            deadline = time.monotonic() + 10
            while (ready := http.get(f"{base}/readyz")).status_code != 200 and time.monotonic() < deadline:
                assert ready.json()["reason"].startswith("starting")
                time.sleep(0.05)
            assert ready.json() == {"status": "ready"}
            assert http.post(f"{base}/readyz").status_code == 405

            sandbox.configure(latency=3.0, pictures="plain")
            results: list[Any] = []

            def call() -> None:
                async def run() -> Any:
                    async with Client(server.url) as client:
                        await client.list_tools()  # the result's schema, known before the server stops listing
                        return await client.call_tool("generate_image", CALL)

                results.append(anyio.run(run))

            caller = threading.Thread(target=call)
            caller.start()
            time.sleep(1.0)  # the call is waiting on its generation
            text = httpx2.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
            assert families(text)["qolaba_generations_in_flight"].samples[0].value == 1
            # A request that holds the drain open (its body never finishes), so the drain lasts long enough to probe
            stalled = socket.create_connection(("127.0.0.1", server.port))
            stalled.sendall(
                b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                b"Accept: application/json, text/event-stream\r\nContent-Length: 100\r\n\r\n{"
            )
            time.sleep(0.3)
            server.proc.send_signal(signal.SIGTERM)
            time.sleep(0.3)
            drained = http.get(f"{base}/readyz")
            assert drained.status_code == 503 and drained.json()["reason"].startswith("draining")
            stalled.close()
            caller.join(15)
            assert results and not results[0].is_error  # the call returned its task_id (PENDING) first
    finally:
        server.stop()
    parsed = families(text)
    assert set(parsed) >= METRIC_NAMES
    started = {
        s.labels["model"]: s.value for s in parsed["qolaba_generations_started"].samples if s.name.endswith("_total")
    }
    assert started == {"vertex/nano-banana-flash": 1}


@pytest.mark.anyio
async def test_readiness_reasons() -> None:
    ops = Ops()
    assert (await ops.not_ready() or "").startswith("starting")

    async def unreachable() -> object:
        raise OSError("connection refused")

    ops.ready(probe=unreachable, models=[])
    assert await ops.not_ready() == "ledger unreachable (OSError)"

    async def answers() -> object:
        return None

    ops.ready(probe=answers, models=[])
    assert await ops.not_ready() is None
    ops.drain()
    assert (await ops.not_ready() or "").startswith("draining")


@pytest.mark.anyio
async def test_metric_series_stay_bounded_however_many_varied_calls(sandbox: SandboxServer) -> None:
    """Series are fixed by the label sets, not by the calls: 150 more calls with new prompts, models, task ids, tool
    names and bad values add no series at all (any value that leaked into a label would add one per call)."""
    sandbox.configure(latency=0, pictures="plain")
    ops = Ops(metrics=Metrics())
    assert ops.metrics is not None
    settings = Settings(
        api_base_url=sandbox.base_url, api_key="k", ledger_url="sqlite:///:memory:", join_window_seconds=0
    )

    def series() -> int:
        assert ops.metrics is not None
        text = generate_latest(ops.metrics.registry).decode()
        return sum(len(family.samples) for family in text_string_to_metric_families(text))

    counts = []
    async with Client(build_server(settings, transport="http", ops=ops)) as client:
        for i in range(300):
            match i % 5:
                case 0:
                    await client.call_tool("generate_image", {**CALL, "prompt": f"secret prompt {i}", "mode": "sync"})
                case 1:
                    await client.call_tool("generate_image", {**CALL, "model": f"model-{i}"})
                case 2:
                    await client.call_tool("get_task", {"task_id": f"task-{i}"})
                case 3:
                    await client.call_tool(f"tool-{i}", {})
                case _:
                    await client.call_tool("generate_image", {**CALL, "num_images": f"many-{i}"})
            if i in (149, 299):
                counts.append(series())
    assert counts[0] == counts[1] < 700, counts
    text = generate_latest(ops.metrics.registry).decode()
    for private in ("secret prompt", "model-", "task-", "tool-", "many-", "key"):
        assert private not in text
    refusals = {s.labels["reason"] for s in families(text)["qolaba_refusals"].samples}
    assert "validation" in refusals


# --- traces -----------------------------------------------------------------------------------------------------

EXPORTED = InMemorySpanExporter()


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """The SDK's in-memory exporter behind the process's tracer provider (set once: OpenTelemetry allows one)."""
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(EXPORTED))
        trace.set_tracer_provider(provider)
    EXPORTED.clear()
    yield EXPORTED
    EXPORTED.clear()


def api_double(host: HostileServer) -> None:
    """A Qolaba API that answers one synchronous generation with one image, and records what it was sent."""
    host.route("GET", "/img.png", raw_reply(200, render_png(width=32, height=32, key="ops"), content_type="image/png"))
    body = {
        "task_id": "t-ops-1",
        "model": "vertex/nano-banana-flash",
        "images": [{"url": host.url("/img.png")}],
        "usage": {"images_generated": 1, "cost_usd": 0.03},
    }
    host.route("POST", "/api/v1/images/generate", json_reply(200, body))
    host.route("GET", "/api/v1/images/models", json_reply(404, {"error": "no list"}))


@pytest.mark.anyio
async def test_spans_in_memory_parented_on_meta_traceparent(spans: InMemorySpanExporter) -> None:
    with HostileServer() as host:
        api_double(host)
        settings = Settings(api_base_url=host.base_url, api_key="secret-key-123456", ledger_url="off")
        ops = Ops(tracing=True)
        async with Client(build_server(settings, transport="http", ops=ops)) as client:
            result = await client.call_tool(
                "generate_image", {**CALL, "mode": "sync"}, meta={"traceparent": TRACEPARENT}
            )
        assert not result.is_error, result.content
        sent = next(r for r in host.requests if r.path == "/api/v1/images/generate")
    by_name = {span.name: span for span in spans.get_finished_spans()}
    server = by_name["tools/call generate_image"]
    assert server.kind == trace.SpanKind.SERVER
    assert f"{server.context.trace_id:032x}" == PARENT_TRACE
    assert server.parent is not None and f"{server.parent.span_id:016x}" == PARENT_SPAN
    attributes = dict(server.attributes or {})
    assert attributes["gen_ai.tool.name"] == "generate_image"
    assert attributes["gen_ai.request.model"] == "vertex/nano-banana-flash"
    assert attributes["qolaba.task_id"] == "t-ops-1" and attributes["qolaba.images"] == 1
    assert attributes["qolaba.cost_usd"] == 0.03 and "qolaba.estimate_usd" in attributes
    assert "qolaba.prompt" not in attributes  # QOLABA_TRACE_PROMPTS is off
    client_span = by_name["POST /api/v1/images/generate"]
    assert client_span.kind == trace.SpanKind.CLIENT and client_span.parent is not None
    assert client_span.parent.span_id == server.context.span_id
    # the API received the W3C traceparent of its client span
    assert sent.headers["traceparent"] == f"00-{PARENT_TRACE}-{client_span.context.span_id:016x}-01"
    assert "GET image" in by_name
    assert _no_secret(spans.get_finished_spans(), "secret-key-123456")


def _no_secret(spans: Any, secret: str) -> bool:
    return all(secret not in str(dict(span.attributes or {})) for span in spans)


class _Receiver(http.server.BaseHTTPRequestHandler):
    bodies: list[bytes]

    def do_POST(self) -> None:
        self.bodies.append(self.rfile.read(int(self.headers["content-length"])))
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.anyio
async def test_stdio_spans_over_otlp_http_to_a_receiver(tmp_path: Path) -> None:
    bodies: list[bytes] = []
    handler = type("Receiver", (_Receiver,), {"bodies": bodies})
    receiver = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{receiver.server_address[1]}/v1/traces"
    try:
        with HostileServer() as host:
            api_double(host)
            async with connect(
                "stdio",
                "auto",
                base_url=host.base_url,
                OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=endpoint,
                OTEL_SERVICE_NAME="qolaba-test",
                OTEL_BSP_SCHEDULE_DELAY="100",  # export while the server runs, not only as it exits
                QOLABA_TRACE_PROMPTS="true",
                QOLABA_OUTPUT_DIR=str(tmp_path),
            ) as client:  # stdio: any stray byte on stdout would break this session
                # the caller's trace is current too: were this process traced, its client span would continue it
                token = context.attach(propagate.extract({"traceparent": TRACEPARENT}))
                try:
                    result = await client.call_tool(
                        "generate_image", {**CALL, "mode": "sync"}, meta={"traceparent": TRACEPARENT}
                    )
                finally:
                    context.detach(token)
                assert not result.is_error, result.content
            deadline = time.monotonic() + 15
            while not any(b"tools/call generate_image" in body for body in bodies) and time.monotonic() < deadline:
                await anyio.sleep(0.05)
    finally:
        receiver.shutdown()
    exported = []
    for body in bodies:
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        for resource in request.resource_spans:
            service = {a.key: a.value.string_value for a in resource.resource.attributes}["service.name"]
            assert service == "qolaba-test"
            exported += [span for scope in resource.scope_spans for span in scope.spans]
    by_name = {span.name: span for span in exported}
    server = by_name["tools/call generate_image"]
    assert server.trace_id.hex() == PARENT_TRACE and server.parent_span_id
    attributes = {a.key: a.value for a in server.attributes}
    assert attributes["qolaba.prompt"].string_value == "A secret cat"  # QOLABA_TRACE_PROMPTS=true
    assert by_name["POST /api/v1/images/generate"].parent_span_id == server.span_id


@pytest.mark.parametrize(
    ("environ", "on"),
    [
        ({}, False),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x"}, True),
        ({"OTEL_TRACES_EXPORTER": "console"}, True),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}, False),
    ],
)
def test_tracing_is_opt_in(environ: dict[str, str], on: bool) -> None:
    assert tracing_requested(environ) is on


def test_nothing_of_otel_sdk_or_prometheus_is_imported_when_off() -> None:
    code = (
        "import sys; from qolaba_mcp.server import build_server; from qolaba_mcp._config import Settings;"
        "import qolaba_mcp._cli, qolaba_mcp._http; build_server(Settings(ledger_url='off'));"
        "print(sorted(m for m in sys.modules if m.startswith(('prometheus_client', 'opentelemetry.sdk'))))"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "QOLABA_"))}
    import subprocess

    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert done.stdout.strip() == "[]", done.stderr
