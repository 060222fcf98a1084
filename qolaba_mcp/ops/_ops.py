"""What operating the server needs from inside it: readiness, and the hooks that feed metrics and traces.

Every hook is cheap and does nothing with metrics off; span attributes go to the current span, which is a
non-recording one unless tracing is on (``opentelemetry-api`` comes with the MCP SDK; the SDK is the extra).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Literal

import anyio
from opentelemetry import trace

if TYPE_CHECKING:
    from ._metrics import Metrics

log = logging.getLogger("qolaba_mcp.ops")

Refusal = Literal["per_call_cap", "budget", "confirmation_declined", "validation"]
READY_PROBE_TIMEOUT = 2.0
"""Seconds the ledger gets to answer a readiness probe before the replica counts as not ready."""

# A delivery note's reason, from the words delivery uses (images/_delivery.py): a fixed set of label values.
_NOTE_REASONS = (
    ("download_cap", re.compile(r"download cap|over the")),
    ("incomplete", re.compile(r"incomplete|cut short")),
    ("timeout", re.compile(r"within|timed out|deadline")),
    ("not_public", re.compile(r"public|private|loopback")),
    ("save_failed", re.compile(r"sav(e|ed)|folder|disk")),
    ("not_an_image", re.compile(r"not an image|not unpacked|unsupported|format")),
)


def note_reason(note: str) -> str:
    lowered = note.lower()
    return next((reason for reason, pattern in _NOTE_REASONS if pattern.search(lowered)), "other")


class Ops:
    """Readiness (set by the lifespan and the drain) and the metric and trace hooks; one per server."""

    def __init__(self, *, metrics: Metrics | None = None, tracing: bool = False, trace_prompts: bool = False) -> None:
        self.metrics = metrics
        self.tracing = tracing
        self.trace_prompts = trace_prompts
        self.draining = False
        self.known_models: frozenset[str] = frozenset()
        self.known_tools: frozenset[str] = frozenset()
        self._probe: Callable[[], Awaitable[object]] | None = None

    # readiness

    def ready(self, *, probe: Callable[[], Awaitable[object]], models: Iterable[str]) -> None:
        """The lifespan has built everything (catalogue loaded); ``probe`` asks the ledger something cheap."""
        self._probe, self.known_models = probe, frozenset(models)

    def stopped(self) -> None:
        self._probe = None

    def drain(self) -> None:
        self.draining = True

    async def not_ready(self) -> str | None:
        """Why this replica should get no traffic now; None when it should."""
        if self.draining:
            return "draining: the server is shutting down"
        probe = self._probe
        if probe is None:
            return "starting: the catalogue and ledger are not loaded yet"
        try:
            with anyio.fail_after(READY_PROBE_TIMEOUT):
                await probe()
        except Exception as exc:  # any failure of the probe is the answer, never a crash of the endpoint
            return f"ledger unreachable ({type(exc).__name__})"
        return None

    # labels: bounded by what the server knows, whatever a caller sends

    def model_label(self, model: str | None) -> str:
        return model if model in self.known_models else "other"

    def tool_label(self, name: object) -> str:
        return name if isinstance(name, str) and name in self.known_tools else "other"

    # generation hooks (the MCP surface calls these)

    def generation_started(self, model: str, *, estimate_usd: float | None, prompt: str | None) -> None:
        span = trace.get_current_span()
        if span.is_recording():
            span.set_attribute("gen_ai.request.model", model)
            if estimate_usd is not None:
                span.set_attribute("qolaba.estimate_usd", estimate_usd)
            if self.trace_prompts and prompt:
                span.set_attribute("qolaba.prompt", prompt)
        if self.metrics is not None:
            label = self.model_label(model)
            self.metrics.started.labels(label).inc()
            if estimate_usd is not None:
                self.metrics.spend.labels(label, "estimated").inc(estimate_usd)

    def generation_ended(
        self,
        model: str | None,
        *,
        outcome: str,
        task_id: str | None = None,
        images: int = 0,
        cost_usd: float | None = None,
        notes: Iterable[str] = (),
    ) -> None:
        """A generation call (generate_image or get_task) ended with ``outcome`` (its status, or ERROR)."""
        span = trace.get_current_span()
        if span.is_recording():
            if model:
                span.set_attribute("gen_ai.request.model", model)
            if task_id:
                span.set_attribute("qolaba.task_id", task_id)
            span.set_attribute("qolaba.status", outcome)
            span.set_attribute("qolaba.images", images)
            if cost_usd is not None:
                span.set_attribute("qolaba.cost_usd", cost_usd)
        if self.metrics is None:
            return
        label = self.model_label(model)
        self.metrics.finished.labels(label, outcome if outcome in _OUTCOMES else "other").inc()
        if images:
            self.metrics.images.labels(label).inc(images)
        if cost_usd:
            self.metrics.spend.labels(label, "reported").inc(cost_usd)
        for note in notes:
            self.metrics.notes.labels(note_reason(note)).inc()

    def refused(self, reason: Refusal) -> None:
        trace.get_current_span().set_attribute("qolaba.refusal", reason)
        if self.metrics is not None:
            self.metrics.refusals.labels(reason).inc()

    def api_malformed(self) -> None:
        """An API answer we could not read (the transport counts the statuses and timeouts)."""
        if self.metrics is not None:
            self.metrics.api_errors.labels("malformed").inc()

    # ledger hooks (the write queue calls these)

    def ledger_write(self, seconds: float, outcome: Literal["ok", "retry", "failed"]) -> None:
        if self.metrics is not None:
            self.metrics.ledger_duration.labels(outcome).observe(seconds)
            if outcome == "retry":
                self.metrics.ledger_retries.inc()


_OUTCOMES = frozenset({"SUCCESS", "PENDING", "PROCESSING", "FAILED", "UNKNOWN", "ERROR"})
