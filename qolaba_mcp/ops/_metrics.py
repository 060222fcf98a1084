"""The Prometheus collectors: one registry per server, every label from a fixed set (no prompt, key, task or person).

Imported only when ``--metrics-port`` is given: prometheus-client is the optional extra ``qolaba-mcp[metrics]``.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

# The MCP semantic conventions' advice for mcp.server.operation.duration, in seconds.
_MCP_BUCKETS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30, 60, 120, 300)
_API_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_LEDGER_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)


class Metrics:
    """The server's collectors, in a registry of their own (never the library's process-wide default)."""

    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry()
        self.operation_duration = Histogram(
            "mcp_server_operation_duration",
            "MCP request duration as observed on the server (mcp.server.operation.duration)",
            ["mcp_method_name", "gen_ai_tool_name", "error_type", "network_transport", "mcp_protocol_version"],
            unit="seconds",
            buckets=_MCP_BUCKETS,
            registry=registry,
        )
        self.started = Counter(
            "qolaba_generations_started", "Generations a call started (joined ones included)", ["model"],
            registry=registry,
        )  # fmt: skip
        self.finished = Counter(
            "qolaba_generations_finished",
            "Generation calls that ended, by the status the caller got (SUCCESS, PENDING, FAILED, UNKNOWN, ERROR)",
            ["model", "outcome"],
            registry=registry,
        )
        self.in_flight = Gauge(
            "qolaba_generations_in_flight", "generate_image and get_task calls under way", registry=registry
        )
        self.images = Counter("qolaba_images_delivered", "Images put in results", ["model"], registry=registry)
        self.notes = Counter(
            "qolaba_delivery_notes", "Images delivered with a problem, by reason", ["reason"], registry=registry
        )
        self.spend = Counter(
            "qolaba_spend_usd",
            "USD by model: estimated at submission, reported by the API on completion",
            ["model", "kind"],
            registry=registry,
        )
        self.refusals = Counter(
            "qolaba_refusals",
            "generate_image calls refused before submission, by reason",
            ["reason"],
            registry=registry,
        )
        self.api_duration = Histogram(
            "qolaba_api_request_duration",
            "Qolaba API requests, by operation and status class",
            ["operation", "status_class"],
            unit="seconds",
            buckets=_API_BUCKETS,
            registry=registry,
        )
        self.api_errors = Counter(
            "qolaba_api_errors",
            "Qolaba API failures by class (429, 5xx, 4xx, timeout, network, malformed)",
            ["error_class"],
            registry=registry,
        )
        self.download_bytes = Counter(
            "qolaba_image_download_bytes", "Image bytes downloaded from image hosts", registry=registry
        )
        self.download_duration = Histogram(
            "qolaba_image_download_duration",
            "Image downloads, by outcome (ok or error)",
            ["outcome"],
            unit="seconds",
            buckets=_API_BUCKETS,
            registry=registry,
        )
        self.ledger_duration = Histogram(
            "qolaba_ledger_write_duration",
            "Ledger writes, by outcome (ok, retry, failed)",
            ["outcome"],
            unit="seconds",
            buckets=_LEDGER_BUCKETS,
            registry=registry,
        )
        self.ledger_retries = Counter(
            "qolaba_ledger_write_retries", "Ledger writes tried again after a transient refusal", registry=registry
        )

    def serve(self, *, host: str, port: int) -> None:
        """The /metrics listener, in a daemon thread of its own: a stuck scrape never holds the event loop."""
        start_http_server(port, addr=host, registry=self.registry)
