"""Operating the server at scale: health and readiness, Prometheus metrics, OpenTelemetry traces (docs/operations.md).

Metrics need the extra ``qolaba-mcp[metrics]``, traces ``qolaba-mcp[otel]``; each is imported only when turned on.
"""

from __future__ import annotations

import logging

from ._health import Health
from ._middleware import OperationDuration
from ._ops import Ops
from ._tracing import start_tracing
from ._transport import ObservedTransport

__all__ = ["Health", "ObservedTransport", "OperationDuration", "Ops", "start_ops", "start_tracing"]

log = logging.getLogger("qolaba_mcp.ops")


def start_ops(*, metrics_host: str, metrics_port: int | None, tracing: bool, trace_prompts: bool) -> Ops:
    """The server's Ops; with a metrics port, its /metrics listener already serving."""
    metrics = None
    if metrics_port is not None:
        from ._metrics import Metrics  # prometheus-client: the [metrics] extra

        metrics = Metrics()
        metrics.serve(host=metrics_host, port=metrics_port)
        log.warning("metrics at http://%s:%d/metrics", metrics_host, metrics_port)
    return Ops(metrics=metrics, tracing=tracing, trace_prompts=trace_prompts)
