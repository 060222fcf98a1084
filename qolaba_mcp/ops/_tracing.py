"""OpenTelemetry tracing from the standard ``OTEL_*`` variables, when they ask for it and the SDK is installed.

Opt-in: ``OTEL_TRACES_EXPORTER`` (``otlp`` or ``console``) or an ``OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT``;
``OTEL_SDK_DISABLED=true`` wins. The SDK and the OTLP/HTTP exporter are the extra ``qolaba-mcp[otel]``: without
them nothing is imported and one warning says why. Console spans go to stderr (stdout is the stdio protocol).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Mapping

log = logging.getLogger("qolaba_mcp.ops")


def tracing_requested(environ: Mapping[str, str]) -> bool:
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter:
        return exporter != "none"
    return any(environ.get(name) for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


def start_tracing(version: str, environ: Mapping[str, str] | None = None) -> Callable[[], None] | None:
    """Install a tracer provider as the ``OTEL_*`` variables say; its shutdown (flushes spans), or None if off."""
    env = os.environ if environ is None else environ
    if not tracing_requested(env):
        return None
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
    except ImportError:
        log.warning("OTEL_* asks for traces but the OpenTelemetry SDK is missing: pip install 'qolaba-mcp[otel]'")
        return None
    exporters: list[SpanExporter] = []
    for name in (env.get("OTEL_TRACES_EXPORTER") or "otlp").split(","):
        name = name.strip().lower()
        if name == "console":
            exporters.append(ConsoleSpanExporter(out=sys.stderr))
        elif name == "otlp":
            protocol = env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
            if protocol not in (None, "", "http/protobuf"):
                log.warning("OTLP protocol %r is not supported here; spans go over http/protobuf", protocol)
            try:
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            except ImportError:
                log.warning("the OTLP/HTTP exporter is missing: pip install 'qolaba-mcp[otel]'")
                continue
            exporters.append(OTLPSpanExporter())  # endpoint, headers, timeout: from OTEL_EXPORTER_OTLP_*
        elif name != "none":
            log.warning("OTEL_TRACES_EXPORTER=%s is not supported (otlp, console); ignored", name)
    if not exporters:
        return None
    # Resource.create reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES; our name only where they give none.
    resource = Resource.create({"service.version": version})
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": "qolaba-mcp"}))
    provider = TracerProvider(resource=resource)
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))  # sampler: OTEL_TRACES_SAMPLER, read by the SDK
    trace.set_tracer_provider(provider)
    return provider.shutdown
