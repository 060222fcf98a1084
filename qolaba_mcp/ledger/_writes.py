"""Ledger writes that must land: tried at once, and when the database says "not now", retried until they do.

A write that fails for a reason that passes (busy, locked, connection lost, disk full: ``LedgerError.transient``)
is kept, in order behind any earlier write to the same row, and retried with backoff in the queue's own task
group; a later write to a row with writes pending waits its turn instead of overtaking them. ``pending(row_id)``
says whether a row's record is behind (a write of it was refused for now and has not landed since). On exit the
queue keeps trying for ``flush_grace`` seconds, then logs every write still pending (row and what) as an error.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Literal, Self

import anyio
import anyio.abc

from ._records import LedgerError, LedgerStore

log = logging.getLogger("qolaba_mcp.ledger")

Write = Callable[[LedgerStore], Awaitable[None]]
"""One write (it may be several statements that belong together, such as an update and the settling it implies)."""

RETRY_MIN_S = 0.05
RETRY_MAX_S = 2.0
FLUSH_GRACE_S = 30.0


class WriteQueue:
    """Writes to one ledger, per row in order, none dropped while the process lives (enter it for the server's life)."""

    def __init__(
        self,
        *,
        ledger: LedgerStore,
        retry_min: float = RETRY_MIN_S,
        retry_max: float = RETRY_MAX_S,
        flush_grace: float = FLUSH_GRACE_S,
        on_write: Callable[[float, Literal["ok", "retry", "failed"]], None] | None = None,
    ) -> None:
        self._ledger = ledger
        self._on_write = on_write  # each write's duration and outcome, for metrics
        self._retry_min, self._retry_max, self._flush_grace = retry_min, retry_max, flush_grace
        self._rows: dict[str, deque[tuple[str, Write]]] = {}  # writes not landed yet, oldest first, per row
        self._busy: set[str] = set()  # rows a writer is working through (a caller, or a retrying task)
        self._behind: set[str] = set()  # rows with a write the ledger refused for now
        self._group: anyio.abc.TaskGroup | None = None

    async def __aenter__(self) -> Self:
        group = anyio.create_task_group()
        await group.__aenter__()
        self._group = group
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        group, self._group = self._group, None
        assert group is not None
        # The retrying tasks stop (a write of theirs under way finishes: its thread is waited for); then this flush
        # tries every row itself, shielded: a server stopped by cancellation (stdio's SIGTERM) flushes too.
        group.cancel_scope.cancel()
        try:
            await group.__aexit__(None, None, None)
        finally:
            await self._flush()

    async def _flush(self) -> None:
        with anyio.CancelScope(shield=True):
            if self._rows:
                log.warning("stopping with %d generation record(s) not written yet: trying for up to %g s",
                            len(self._rows), self._flush_grace)  # fmt: skip
            with anyio.move_on_after(self._flush_grace):
                while self._rows:
                    for row_id in list(self._rows):
                        await self._drain(row_id)
                    if self._rows:
                        await anyio.sleep(self._retry_min)
        for row_id, writes in self._rows.items():
            for what, _ in writes:
                log.error("the ledger never took %s for generation %s: it is lost with this process", what, row_id)

    def pending(self, row_id: str) -> bool:
        """Whether a write to ``row_id`` was refused for now and has not landed yet."""
        return row_id in self._behind

    def pending_rows(self) -> list[str]:
        return list(self._behind)

    async def write(self, row_id: str, what: str, write: Write) -> bool:
        """Land ``write`` now if the row has nothing pending and the ledger takes it; else keep it for the retrying
        task. True once it (and all before it) landed; never raises for a ledger that says "not now"."""
        self._rows.setdefault(row_id, deque()).append((what, write))
        if row_id in self._busy:
            return False  # behind an earlier write of this row, which its writer is landing
        self._busy.add(row_id)
        with anyio.CancelScope(shield=True):  # a record is never half-kept because its caller left
            if await self._drain(row_id):
                return True
        if self._group is None:  # not entered (a one-off use): the caller waits for the write itself
            with anyio.CancelScope(shield=True):
                await self._retry(row_id)
            return True
        self._group.start_soon(self._retry, row_id)
        return False

    async def _drain(self, row_id: str) -> bool:
        """One try at each of the row's writes, oldest first: True when none is left (the row is no longer busy)."""
        writes = self._rows[row_id]
        while writes:
            what, write = writes[0]
            started = time.monotonic()
            try:
                await write(self._ledger)
            except LedgerError as exc:
                self._observe(started, "retry" if exc.transient else "failed")
                if exc.transient:
                    log.warning("the ledger did not take %s for generation %s yet (%s); retrying", what, row_id, exc)
                    self._behind.add(row_id)
                    return False
                # Trying again cannot help (the row is gone, the ledger is closed): said loudly, not retried forever.
                log.exception("the ledger refused %s for generation %s; it is not kept", what, row_id)
            except Exception:
                self._observe(started, "failed")
                log.exception("writing %s for generation %s failed; it is not kept", what, row_id)
            else:
                self._observe(started, "ok")
            writes.popleft()
        del self._rows[row_id]
        self._busy.discard(row_id)
        self._behind.discard(row_id)
        return True

    def _observe(self, started: float, outcome: Literal["ok", "retry", "failed"]) -> None:
        if self._on_write is not None:
            self._on_write(time.monotonic() - started, outcome)

    async def _retry(self, row_id: str) -> None:
        delay = self._retry_min
        while True:
            await anyio.sleep(delay)
            if await self._drain(row_id):
                return
            delay = min(delay * 2, self._retry_max)
