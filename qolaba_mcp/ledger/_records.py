"""What the ledger stores, and the one interface its backends (SQLite, PostgreSQL) implement.

A row is written before the API is called (state ``submitting``) and moves on as the generation does:

    submitting -> submitted (task_id known) -> running -> succeeded | failed
    submitting -> unknown   (the submission was sent but its answer never recorded: check before retrying)

Money is data here: ``begin_or_join`` is atomic per (principal, api_base, request_hash), so two identical calls
can never both submit; ``delivered`` records that a caller has received the result, after which an identical
call is a new, paid generation.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

LedgerState = Literal["submitting", "submitted", "running", "succeeded", "failed", "unknown"]
ACTIVE_STATES: frozenset[str] = frozenset({"submitting", "submitted", "running"})
SCHEMA_VERSION = 1


class LedgerError(Exception):
    """The ledger cannot be used (bad URL, a schema newer than this code, a database that will not open)."""


class ImageRecord(BaseModel):
    """One image of a generation, as the API gave it."""

    model_config = ConfigDict(extra="ignore")

    url: str
    width: int | None = None
    height: int | None = None
    content_type: str | None = None


class NewGeneration(BaseModel):
    """What is known before the API is called."""

    principal: str = Field(description="Hash of the Qolaba key in use (principal_of); never the key.")
    api_base: str
    request_hash: str
    request: dict[str, Any] = Field(description="The normalised request, as sent (no secrets).")
    model: str
    prompt: str | None = None
    inputs: list[str] = Field(default_factory=list, description="What the input images were made from.")


class LedgerRow(NewGeneration):
    """A generation as the ledger knows it."""

    id: str
    state: LedgerState
    task_id: str | None = None
    created_at: float = Field(description="Unix seconds.")
    updated_at: float
    finished_at: float | None = None
    images: list[ImageRecord] = Field(default_factory=list)
    usage: dict[str, Any] | None = None
    cost_usd: float | None = None
    error: str | None = None
    saved_files: list[str | None] = Field(default_factory=list)
    delivered: bool = False


class Changes(BaseModel):
    """Fields to update on a row; ``None`` leaves a field as it is."""

    state: LedgerState | None = None
    task_id: str | None = None
    finished_at: float | None = None
    images: list[ImageRecord] | None = None
    usage: dict[str, Any] | None = None
    cost_usd: float | None = None
    error: str | None = None
    saved_files: list[str | None] | None = None


class Query(BaseModel):
    """A history query; every filter is optional. Newest first."""

    principal: str | None = Field(default=None, description="None: every principal (the local CLI only).")
    search: str | None = None
    model: str | None = None
    state: LedgerState | None = None
    since: float | None = None
    until: float | None = None
    limit: int = Field(default=20, ge=1, le=200)
    cursor: str | None = None


class LedgerStore(Protocol):
    """One ledger backend. Every method is safe to call concurrently, from many processes on one database."""

    async def open(self) -> None:
        """Connect, then create or migrate the schema; a newer schema than SCHEMA_VERSION is a LedgerError."""

    async def close(self) -> None: ...

    async def begin_or_join(self, new: NewGeneration, *, window_seconds: float, now: float) -> tuple[LedgerRow, bool]:
        """Atomically: the newest joinable row for the same (principal, api_base, request_hash) created within
        ``window_seconds`` — active, or succeeded and not yet delivered — with True; else a new ``submitting`` row
        with False."""

    async def update(self, row_id: str, changes: Changes, *, now: float) -> LedgerRow:
        """Apply ``changes`` (fields left None are kept) and bump updated_at; the row after."""

    async def mark_delivered(self, row_id: str) -> bool:
        """Record that a caller received the result; True for the first caller only."""

    async def get(self, row_id: str) -> LedgerRow | None: ...

    async def by_task(self, task_id: str, *, principal: str | None) -> LedgerRow | None:
        """The row for an API task id, only if it belongs to ``principal`` (None: any)."""

    async def expire_submitting(self, *, older_than: float, now: float) -> int:
        """Rows still ``submitting`` whose updated_at is before ``older_than`` become ``unknown``; how many."""

    async def history(self, query: Query) -> tuple[list[LedgerRow], str | None]:
        """Rows matching ``query``, newest first, and the cursor of the next page (None at the end).

        ``search`` uses the database's full-text index (SQLite FTS5, PostgreSQL tsvector), never a scan."""

    async def spend(self, *, principal: str, since: float) -> float:
        """USD cost recorded for ``principal`` since ``since`` (for spend control)."""


def principal_of(api_key: str) -> str:
    """Who asked: a salted hash of the key, enough to tell callers apart and useless to recover the key."""
    return hashlib.sha256(f"qolaba-mcp principal:{api_key}".encode()).hexdigest()[:32]


def request_hash(request: dict[str, Any]) -> str:
    """The identity of a normalised request: same fields and values, same hash, whatever their order."""
    return hashlib.sha256(json.dumps(request, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
