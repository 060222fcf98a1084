"""The sandbox's knobs: its configuration, the faults it injects and the shapes of its answers it can choose."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

FaultKind = Literal["rate_limit", "server_error", "disconnect", "lost_response", "malformed", "failed_task"]
FaultTarget = Literal["submit", "poll", "both"]
ModelsEndpoint = Literal["ok", "404", "500", "garbage"]
PollShape = Literal["output-object", "output-list", "output-urls", "top-level", "backend", "mixed"]
SHAPES: tuple[PollShape, ...] = ("output-object", "output-list", "output-urls", "top-level", "backend")
Nsfw = Literal["none", "some", "all"]

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
