"""What the ledger stores, and the one interface its backends (SQLite, PostgreSQL) implement.

A row is written before the API is called (state ``submitting``) and moves on as the generation does:

    submitting -> submitted (task_id known) -> running -> succeeded | failed
    submitting -> unknown   (the submission was sent but its answer never recorded: check before retrying)

A ``submitting`` row is owned: ``owner`` names the server process submitting it, which renews ``lease_until``
(``renew_leases``) while it lives. A row whose lease ran out belongs to nobody any more (its process died between
sending and recording): the next identical call turns it ``unknown`` and is warned instead of submitting. For an
``unknown`` row, ``delivered`` records that a caller has been given that warning.

Money is data here: ``begin_or_join`` is atomic per (principal, api_base, request_hash), so two identical calls
can never both submit; ``delivered`` records that a caller has received the result, after which an identical
call is a new, paid generation.

Money held is data too: ``reserve`` holds a generation's estimated price against the principal's budget before
the API is called, atomically with reading what the principal has spent, so concurrent calls (and replicas on one
database) cannot together pass a budget. What counts as spent, per row created in the window: ``cost_usd`` once
known, else ``reserved_usd``. The hold then ends one of three ways: ``settle`` (the actual cost replaces it),
``release`` (the task failed: nothing was spent), or not at all (a submission in state ``unknown`` may have been
paid for, so its reservation keeps counting until it ages out of the window). A negative amount counts as 0.

A row whose generation became an MCP task keeps what the task needs beyond the generation: ``task_ttl_ms``, the
retention its creator asked for, and ``cancelled_at``, set once by ``cancel_task``. Qolaba cannot cancel, so the
generation goes on (and its row with it); the task stays cancelled, whatever the generation does next.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

LedgerState = Literal["submitting", "submitted", "running", "succeeded", "failed", "unknown"]
ACTIVE_STATES: frozenset[str] = frozenset({"submitting", "submitted", "running"})
SCHEMA_VERSION = 5
SPEND_WINDOW_S = 86_400.0  # a daily budget's window
# The backends keep each principal's spend summed by the minute (the minute of created_at, kept in step with the
# rows by triggers), so a budget check adds up at most a day of minutes and the rows of the window's first, partial
# minute, however long the history.
SPEND_MINUTE_S = 60
REPORT_MONTH_S = 30 * 86_400.0  # spend_report's longer window (the shorter is SPEND_WINDOW_S)
# Sums of float prices are inexact (ten $0.03 make $0.30000000000000004): a budget is passed by more than this.
BUDGET_TOLERANCE_USD = 1e-9


# What an abandoned submission's row says once it is found (its server died between sending and recording).
ABANDONED = "the server submitting it stopped before the API's answer was recorded"


class LedgerError(Exception):
    """The ledger cannot be used (bad URL, a schema newer than this code, a database that will not open).

    ``transient``: the same write may land if tried again (busy, locked, connection lost, disk full)."""

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


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
    estimate_usd: float | None = Field(default=None, description="The price estimated before the call, if known.")
    owner: str | None = Field(default=None, description="The server process that submits it (random per process).")
    lease_until: float | None = Field(
        default=None, description="Unix time until which its owner is known to be alive (renewed while submitting)."
    )


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
    reserved_usd: float = Field(default=0.0, description="Money held while the cost is not yet known.")
    cancelled_at: float | None = Field(default=None, description="When its MCP task was cancelled (Unix seconds).")
    task_ttl_ms: int | None = Field(default=None, description="The retention its MCP task's creator asked for.")


class Reservation(BaseModel):
    """The answer of ``reserve``: whether the amount was held, and if not, which limit refused it."""

    ok: bool
    spent_usd: float = Field(description="The principal's spend in the window before this call.")
    amount: float = Field(description="The amount asked for (held when ok).")
    limit_name: Literal["per_call", "daily"] | None = Field(default=None, description="The limit that refused.")
    limit_usd: float | None = Field(default=None, description="That limit's value.")
    frees_at: float | None = Field(
        default=None,
        description="Unix time when enough of the window's spend ages out for the amount to fit; None when it never"
        " will (the amount alone passes the limit) or the call was not refused by the daily budget.",
    )


class BudgetPolicy(Protocol):
    """The spend policy ``reserve`` applies inside its atomic section (money/ decides; the ledger stores and sums)."""

    def decide(self, *, amount: float, spent: float) -> Reservation:
        """Whether ``amount`` may be held, given ``spent``: the principal's spend in the window."""
        ...

    def need_to_age_out(self, reservation: Reservation) -> float | None:
        """How much of the window's spend must leave it before a refused amount fits; None when waiting never
        helps. The backend then works out ``frees_at`` from its rows (``leaving``, ``crossing``)."""
        ...


def minute_of(moment: float) -> int:
    """The minute spend_minutes files ``moment`` under: the same division as the backends' SQL."""
    return math.floor(moment / SPEND_MINUTE_S)


def leaving(
    first: Sequence[tuple[float, float]], minutes: Sequence[tuple[int, float]], need: float
) -> float | tuple[int, float] | None:
    """Which spend must leave the window for ``need`` USD to have left: the created_at of a row of the window's
    first minute (``first``: (created_at, usd) oldest first), else (the minute after it whose rows to walk with
    ``leaving_in_minute``, the USD that left before that minute); None if all of it is not enough."""
    found = crossing([*first, *minutes], need)
    if found is None:
        return None
    index, before = found
    return first[index][0] if index < len(first) else (minutes[index - len(first)][0], before)


def leaving_in_minute(rows: Sequence[tuple[float, float]], need: float, minute: int) -> float:
    """The created_at of the row of ``minute`` at which ``need`` USD of its rows has left; sums kept by the minute
    may differ from the rows' own in the last bits, and then the whole minute must leave."""
    found = crossing(rows, need)
    if found is not None:
        return rows[found[0]][0]
    return rows[-1][0] if rows else float((minute + 1) * SPEND_MINUTE_S)


def crossing(spending: Sequence[tuple[float, float]], need: float) -> tuple[int, float] | None:
    """Of (key, usd) pairs oldest first, the index of the one at which their running sum reaches ``need``, and the
    sum before it; None if it never does."""
    total = 0.0
    for index, (_, usd) in enumerate(spending):
        if total + usd >= need - BUDGET_TOLERANCE_USD:
            return index, total
        total += usd
    return None


def build_spend_report(by_model: list[tuple[str, int, float, float]]) -> dict[str, Any]:
    """``spend_report``'s answer from (model, rows in the last 24 h, USD in the last 24 h, USD in the last 30 days),
    one per model with a row in the last 30 days: a window lists every model with a row in it, even at $0."""
    day = {model: usd for model, rows, usd, _ in by_model if rows}
    month = {model: usd for model, _, _, usd in by_model}
    return {
        name: {
            "total_usd": round(sum(usds.values()), 6),
            "by_model": {model: round(usd, 6) for model, usd in sorted(usds.items())},
        }
        for name, usds in (("last_24h", day), ("last_30d", month))
    }


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
        """Atomically, for the same (principal, api_base, request_hash): the newest joinable row created within
        ``window_seconds`` — active, or succeeded and not yet delivered — with True; else the newest row a caller
        must be warned about first, of any age — ``unknown`` and not yet warned about, or ``submitting`` under
        another owner whose lease has run out — turned ``unknown`` and marked warned, with True; else a new
        ``submitting`` row (``new``'s owner and lease) with False.

        A joinable ``submitting`` row whose lease has run out (another owner's) is such a warning too: a returned
        row in state ``unknown`` always means "warn, do not submit"."""

    async def update(self, row_id: str, changes: Changes, *, now: float) -> LedgerRow:
        """Apply ``changes`` (fields left None are kept) and bump updated_at; the row after."""

    async def mark_delivered(self, row_id: str) -> bool:
        """Record that a caller received the result; True for the first caller only."""

    async def get(self, row_id: str) -> LedgerRow | None: ...

    async def cancel_task(self, row_id: str, *, now: float) -> tuple[LedgerRow, bool]:
        """Atomically, mark the row's task cancelled at ``now`` if it is not cancelled already and its generation is
        still active (ACTIVE_STATES): the row after, and whether this call cancelled it. A task that ended, or that
        another call cancelled first, is left as it is. A LedgerError if there is no such row."""

    async def keep_task_ttl(self, row_id: str, *, ttl_ms: int) -> LedgerRow:
        """Record the retention (milliseconds) asked for the row's task, unless one is recorded already (a task's
        ttl, once reported, never changes); the row after. A LedgerError if there is no such row."""

    async def last_delivered(
        self, *, principal: str, api_base: str, request_hash: str, since: float
    ) -> LedgerRow | None:
        """The newest succeeded and delivered row for the same (principal, api_base, request_hash) that finished at
        or after ``since``, or None."""

    async def by_task(self, task_id: str, *, principal: str | None) -> LedgerRow | None:
        """The row for an API task id, only if it belongs to ``principal`` (None: any)."""

    async def expire_submitting(self, *, older_than: float, now: float) -> int:
        """Rows still ``submitting`` whose lease ran out before ``now``, or whose updated_at is before ``older_than``
        (no live submission lasts that long; rows from before leases have only this), become ``unknown``; how many."""

    async def renew_leases(self, *, owner: str, until: float) -> int:
        """``owner``'s rows still ``submitting`` are leased until ``until``; how many."""

    async def history(self, query: Query) -> tuple[list[LedgerRow], str | None]:
        """Rows matching ``query``, newest first, and the cursor of the next page (None at the end).

        ``search`` uses the database's full-text index (SQLite FTS5, PostgreSQL tsvector), never a scan."""

    async def spend(self, *, principal: str, since: float) -> float:
        """USD cost recorded for ``principal`` since ``since`` (costs only: reservations are not counted)."""

    async def reserve(
        self,
        row_id: str,
        *,
        principal: str,
        amount: float,
        policy: BudgetPolicy,
        window_seconds: float = SPEND_WINDOW_S,
        now: float,
    ) -> Reservation:
        """Hold ``amount`` USD on ``principal``'s row ``row_id`` if ``policy`` allows it, atomically with reading the
        spend (across processes and replicas on one database).

        The spend is the sum, over ``principal``'s rows created in the last ``window_seconds`` (created_at > now -
        window_seconds) other than ``row_id``, of cost_usd when known, else reserved_usd. Refused (nothing written)
        when ``policy.decide`` says so (with ``frees_at`` where ``policy.need_to_age_out`` allows); else the row gets
        ``estimate_usd = reserved_usd = amount``. Reserving a row again replaces its reservation. A LedgerError if
        the row does not exist or is another principal's."""

    async def settle(self, row_id: str, *, actual_usd: float | None, now: float) -> LedgerRow:
        """The task finished: its actual cost, when known, replaces its reservation (cost_usd = actual_usd,
        reserved_usd = 0). ``None`` (the API reported no cost) keeps the reservation as what it cost."""

    async def release(self, row_id: str, *, now: float) -> LedgerRow:
        """The task failed, so nothing was spent: its reservation is freed (reserved_usd = 0).

        A submission in state ``unknown`` is neither settled nor released: it may have been paid for, so its
        reservation keeps counting until it leaves the window (or a later check settles or releases it)."""

    async def spend_report(self, *, principal: str | None, now: float) -> dict[str, Any]:
        """``principal``'s (None: every principal's) spend (cost when known, else reservation) over the last 24 h
        and 30 days: ``{"last_24h": {"total_usd": x, "by_model": {model: x}}, "last_30d": {...}}``, in USD rounded
        to 1e-6."""


def abandoned(row: LedgerRow, *, owner: str | None, now: float) -> bool:
    """Whether ``row`` is a submission nobody owns any more: ``submitting``, another owner's, its lease run out."""
    return row.state == "submitting" and row.lease_until is not None and row.lease_until < now and row.owner != owner


def principal_of(api_key: str) -> str:
    """Who asked: a salted hash of the key, enough to tell callers apart and useless to recover the key."""
    return hashlib.sha256(f"qolaba-mcp principal:{api_key}".encode()).hexdigest()[:32]


def request_hash(request: dict[str, Any]) -> str:
    """The identity of a normalised request: same fields and values, same hash, whatever their order."""
    return hashlib.sha256(json.dumps(request, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
