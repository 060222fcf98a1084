"""A task as each era shows it: the view of a ledger row, the working task's progress, a cancelled task's answers.

Plain data and text, shared by the tasks extension's methods; no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from mcp.types import CallToolResult, TextContent

from ..generations._rows import Recorded
from ..ledger import ACTIVE_STATES, LedgerRow

LEGACY = "2025-11-25"  # the one handshake-era version with tasks
MODERN = "2026-07-28"
MIN_POLL_S = 1.0  # at most one poll a second: the API is asked at most that often per task
MAX_POLL_S = 5.0
CANCEL_NOTE = (
    "Cancelled: this server stopped following the generation. Qolaba has no way to cancel it, so it may still "
    "finish and be charged; list_generations and get_task still show it."
)


@dataclass
class TaskView:
    """A task as both eras show it, before their field names differ."""

    task_id: str
    status: str
    created_at: float
    updated_at: float
    message: str | None = None
    poll_s: float = MIN_POLL_S
    result: dict[str, Any] | None = None
    ttl_ms: int | None = None  # what a 2025-11-25 creator asked for; None: kept without limit

    def fields(self, era: str) -> dict[str, Any]:
        out: dict[str, Any] = {
            "taskId": self.task_id,
            "status": self.status,
            "createdAt": iso(self.created_at),
            "lastUpdatedAt": iso(self.updated_at),
        }
        if self.message:
            out["statusMessage"] = self.message
        # The ledger keeps every generation (no retention), so the task never expires here and a requested ttl is
        # honoured as asked; its image URLs are the API's, and a finished task answers from the ledger after the
        # API forgets it. 2026-07-28 has no requested ttl.
        if era == MODERN:
            out.update(ttlMs=None, pollIntervalMs=round(self.poll_s * 1000))
        else:
            out.update(ttl=self.ttl_ms, pollInterval=round(self.poll_s * 1000))
        return out


def cancelled_view(row: LedgerRow) -> TaskView:
    assert row.task_id is not None and row.cancelled_at is not None
    return TaskView(row.task_id, "cancelled", row.created_at, row.cancelled_at, CANCEL_NOTE, ttl_ms=row.task_ttl_ms)


def listed_view(row: LedgerRow) -> TaskView:
    """A task as tasks/list shows it: from its row alone (the API is not asked)."""
    assert row.task_id is not None
    if row.cancelled_at is not None:
        return cancelled_view(row)
    status = "working" if row.state in ACTIVE_STATES else "completed"
    return TaskView(row.task_id, status, row.created_at, row.updated_at, ttl_ms=row.task_ttl_ms)


def cancelled_result(task_id: str) -> dict[str, Any]:
    """tasks/result of a cancelled task: the call ended without its images, as a tool error the agent can act on."""
    text = f"{CANCEL_NOTE} Its task_id is {task_id}."
    result = CallToolResult(content=[TextContent(type="text", text=text)], is_error=True)
    return result.model_dump(by_alias=True, exclude_none=True, mode="json")


def progress_text(
    generation: Recorded, messages: list[tuple[float, float | None, str]], elapsed: float
) -> tuple[str, float]:
    """The working task's status message (state, percent, elapsed, what next) and the poll interval to suggest."""
    fraction = None
    text: str = generation.status
    if messages:
        done, total, message = messages[-1]
        text = message
        if total:
            fraction = done / total
    percent = f", {fraction:.0%}" if fraction is not None and "%" not in text else ""
    poll = MIN_POLL_S
    if fraction is not None and 0 < fraction < 1 and elapsed > 0:
        poll = min(MAX_POLL_S, max(MIN_POLL_S, elapsed * (1 - fraction) / fraction + 0.05))
    return f"{text}{percent}; {elapsed:.0f} s elapsed. Next: poll tasks/get in {poll:.0f} s for the images.", poll


def iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
