"""Generations kept in the ledger: written before the API is called, joined instead of paid twice, answerable later.

The job runner (``Runner``) talks to the API; this layer keeps the record around it and decides, per call, whether
a generation is new (submit) or the same as one already paid for (join). It knows nothing of MCP.

Each process is an owner (a random id): the rows it is submitting carry it and a lease its heartbeat renews every
``heartbeat_seconds`` while it lives (enter ``RecordedRunner`` for the server's life). A retry that finds an identical
submission whose lease ran out (its process died between sending and recording) does not wait on it or pay again
blindly: the row becomes ``unknown`` and the caller is told it may have been charged; calling again after that
warning submits. Records are written through a ``WriteQueue``: a ledger that is busy or unreachable delays a
record, never loses it, and never costs the caller a paid result (the result says its record is not written yet).
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import anyio
from pydantic import SecretStr

from .._errors import (
    QolabaError,
    TaskNotFoundError,
)
from .._identity import acting_person
from ..api._wire import GenerateRequest
from ..ledger import (
    ACTIVE_STATES,
    Changes,
    LedgerError,
    LedgerRow,
    LedgerStore,
    NewGeneration,
    Query,
    WriteQueue,
    abandoned,
    principal_of,
    request_hash,
)
from ..money._budget import DailyBudget
from ..money._spend import Quote, SpendRefusedError, refusal
from ._pacing import ProgressFn
from ._rows import Recorded, changes_of, failure_changes, from_row, warning_of, without_image_bytes
from ._runner import Generation, Runner, is_local_task_id, unknown_sync

log = logging.getLogger("qolaba_mcp.tracked")

# A row still "submitting" this long after the longest a live submission can take belongs to a process that died
# between sending and recording.
SUBMITTING_GRACE = 5.0
# A new generation identical to one delivered this recently gets a note: the caller may not know it pays again.
REPEAT_NOTICE_SECONDS = 600.0
LEASE_S = 20.0  # how long a submitting row stays owned without its owner's heartbeat
HEARTBEAT_S = 5.0  # how often a live process renews its submitting rows' leases
_FOLLOW_INTERVAL = 0.25  # seconds between looks at a row another call is submitting
RECORD_PENDING = (
    "the ledger was busy, so this generation's record is not written yet; the server keeps retrying it (spend "
    "and history catch up once it lands)"
)


@dataclass(frozen=True, kw_only=True)
class SpendLimits:
    """What a new generation must fit: its quote, held against these limits (None: no such limit)."""

    quote: Quote
    daily_budget: float | None = None
    per_call_cap: float | None = None


class RecordedRunner:
    """Runner with a ledger: every generation recorded, identical retries joined, tasks answerable after restarts."""

    def __init__(
        self,
        *,
        runner: Runner,
        ledger: LedgerStore,
        api_base: str,
        api_key: SecretStr | None,
        join_window: float,
        submitting_grace: float = SUBMITTING_GRACE,
        repeat_notice: float = REPEAT_NOTICE_SECONDS,
        lease_seconds: float = LEASE_S,
        heartbeat_seconds: float = HEARTBEAT_S,
        writes: WriteQueue | None = None,
    ) -> None:
        self.runner = runner
        self.ledger = ledger
        self._api_base = api_base
        self._api_key = api_key
        self._window = join_window
        self._grace = submitting_grace
        self._saving = anyio.Lock()  # saved paths are read, merged and written back one at a time
        self._repeat_notice = repeat_notice
        self._lease = lease_seconds
        self._heartbeat = heartbeat_seconds
        self.owner = uuid.uuid4().hex  # this process, as the owner of the rows it submits
        # Given a queue, its owner enters it (the server: around Runner, so that records of what Runner ends on the way
        # out are flushed too); else this runner enters its own.
        self._own_writes = writes is None
        self.writes = writes or WriteQueue(ledger=ledger)
        self._beating: anyio.CancelScope | None = None  # set while the heartbeat runs: only then are rows leased
        self._group: Any = None
        self._submitting = 0  # submissions of this process in flight: the heartbeat beats only while there are

    async def __aenter__(self) -> Self:
        """Start the heartbeat (and the write queue, if it is this runner's own)."""
        if self._own_writes:
            await self.writes.__aenter__()
        self._group = anyio.create_task_group()
        await self._group.__aenter__()
        self._beating = anyio.CancelScope()
        self._group.start_soon(self._beat, self._beating)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Stop the heartbeat, then (its own queue) flush the records not written yet (see ``WriteQueue``)."""
        if self._beating is not None:
            self._beating.cancel()
            self._beating = None
        group, self._group = self._group, None
        try:
            if group is not None:
                await group.__aexit__(None, None, None)
        finally:
            if self._own_writes:
                await self.writes.__aexit__(exc_type, exc, tb)

    async def _beat(self, scope: anyio.CancelScope) -> None:
        """Renew the leases of this process's submitting rows, for as long as it lives."""
        with scope:
            while True:
                await anyio.sleep(self._heartbeat)
                if not self._submitting and not self.writes.pending_rows():
                    continue  # nothing of this process can be left submitting: no write needed
                try:
                    await self.ledger.renew_leases(owner=self.owner, until=time.time() + self._lease)
                except LedgerError as exc:  # the next beat tries again; a lease outlives a few missed beats
                    log.warning("the ledger did not take this server's heartbeat (%s)", exc)

    def pending(self, row_id: str) -> bool:
        """Whether a record of ``row_id`` could not be written yet (the ledger said "not now"; it is retried)."""
        return self.writes.pending(row_id)

    def principal(self, api_key: SecretStr | None) -> str:
        """Who asks: the signed-in person (OAuth), else a hash of the key in use (the caller's own, or the server's)."""
        person = acting_person()
        if person is not None:
            return person.principal
        key = api_key or self._api_key
        return principal_of(key.get_secret_value() if key else "")

    async def expire_stale(self, *, longest_submission: float) -> int:
        """Rows left "submitting" by a process that died become "unknown" (never silently lost): those whose lease
        ran out, and any older than the longest submission (rows from before leases have only this rule)."""
        now = time.time()
        return await self.ledger.expire_submitting(older_than=now - longest_submission - self._grace, now=now)

    async def generate(
        self,
        request: GenerateRequest,
        *,
        wait_seconds: float,
        on_progress: ProgressFn | None = None,
        api_key: SecretStr | None = None,
        inputs: list[str] | None = None,
        limits: SpendLimits | None = None,
    ) -> Recorded:
        """Join the identical generation already running or undelivered, or record a new one and submit it.

        A new one records ``limits``' estimate; under a daily budget it first holds the estimate in the ledger,
        atomically against the caps: refused, it is recorded as failed and nothing is sent. Its actual cost
        replaces the hold once known; a failure frees it; a submission whose fate is unknown keeps it."""
        body = request.to_api()
        body.pop("celery", None)  # sync or async, the same images are paid for
        new = NewGeneration(
            principal=self.principal(api_key),
            api_base=self._api_base,
            request_hash=request_hash(body),  # of the whole request: the same local file joins, another does not
            request=without_image_bytes(body),
            model=request.model,
            prompt=request.prompt,
            inputs=inputs or [],
            estimate_usd=limits.quote.estimate_usd if limits else None,
            owner=self.owner,
        )
        deadline = time.monotonic() + wait_seconds
        row, joined = await self._begin(new)
        if joined and row.state == "submitting":  # another call's submission: its task id, or its owner's death
            row = await self._await_submission(row, deadline=deadline)
            if abandoned(row, owner=self.owner, now=time.time()):
                row, joined = await self._begin(new)
        if joined and row.state == "unknown":
            log.warning("generation %s may have been paid for without a recorded answer: warning, not submitting",
                        row.id)  # fmt: skip
            return warning_of(row)
        if joined:
            log.info("joining generation %s (task %s) instead of submitting again", row.id, row.task_id)
            return await self._follow(row, deadline=deadline, on_progress=on_progress, api_key=api_key)
        if limits is not None and limits.quote.estimate_usd is not None and limits.daily_budget is not None:
            await self._reserve(row, limits)  # money is held only where a budget counts it
        repeat = await self._repeat_note(new)
        self._submitting += 1
        try:
            result = await self._submit(
                row, request, wait_seconds=wait_seconds, on_progress=on_progress, api_key=api_key
            )
        finally:
            self._submitting -= 1
        notes = result.notes if repeat is None else [repeat, *result.notes]
        estimate = limits.quote.estimate_usd if limits else None
        return result.model_copy(update={"estimate_usd": estimate, "notes": notes})

    async def _begin(self, new: NewGeneration) -> tuple[LedgerRow, bool]:
        now = time.time()
        leased = new.model_copy(update={"lease_until": now + self._lease if self._beating is not None else None})
        try:
            row, joined = await self.ledger.begin_or_join(leased, window_seconds=self._window, now=now)
        except LedgerError as exc:  # no record, no submission: a paid result must never go unrecorded
            raise QolabaError(
                f"The generation ledger is unavailable ({exc}); nothing was submitted. Retry shortly, or ask the "
                "server's operator to check QOLABA_LEDGER_URL."
            ) from exc
        if joined and self.writes.pending(row.id):  # the ledger's copy is behind what this process knows
            raise QolabaError(
                f"An identical generation (ledger row {row.id}) has a record this server could not write yet (the "
                "ledger is busy), so whether it can be joined is not known; nothing was submitted. Call "
                "generate_image again in a few seconds."
            )
        return row, joined

    async def _repeat_note(self, new: NewGeneration) -> str | None:
        """A note when an identical generation was delivered moments ago: a client that could not read that result
        (or a model that lost it) calls again, and this call pays again."""
        try:
            earlier = await self.ledger.last_delivered(
                principal=new.principal,
                api_base=new.api_base,
                request_hash=new.request_hash,
                since=time.time() - self._repeat_notice,
            )
        except LedgerError:  # a courtesy: the generation goes on without it
            log.warning("the ledger could not be read for an earlier identical generation", exc_info=True)
            return None
        if earlier is None or earlier.finished_at is None:
            return None
        when = time.strftime("%H:%M:%S", time.gmtime(earlier.finished_at))
        return (
            f"an identical image (task {earlier.task_id}, finished {when} UTC) was already delivered; this is a new "
            "paid generation"
        )

    async def _await_submission(self, row: LedgerRow, *, deadline: float) -> LedgerRow:
        """The row once it is no longer submitting, its owner's lease ran out, or the deadline came."""
        while row.state == "submitting" and time.monotonic() < deadline:
            if abandoned(row, owner=self.owner, now=time.time()):
                break
            await anyio.sleep(min(_FOLLOW_INTERVAL, max(deadline - time.monotonic(), 0)))
            row = await self.ledger.get(row.id) or row
        return row

    async def _reserve(self, row: LedgerRow, limits: SpendLimits) -> None:
        """Hold the estimate on the new row, or record the refusal and raise it: nothing is submitted then."""
        assert limits.quote.estimate_usd is not None
        try:
            with anyio.CancelScope(shield=True):  # a hold must never be half-written by a leaving caller
                held = await self.ledger.reserve(
                    row.id,
                    principal=row.principal,
                    amount=limits.quote.estimate_usd,
                    policy=DailyBudget(daily_budget=limits.daily_budget, per_call_cap=limits.per_call_cap),
                    now=time.time(),
                )
        except LedgerError as exc:
            await self._record(
                row.id, Changes(state="failed", error="the spend ledger was unavailable", finished_at=time.time())
            )
            raise QolabaError(
                f"The spend ledger is unavailable ({exc}), so the budget cannot be checked; nothing was submitted. "
                "Retry shortly, or ask the server's operator to check QOLABA_LEDGER_URL."
            ) from exc
        if not held.ok:
            text = refusal(held, limits.quote)
            await self._record(row.id, Changes(state="failed", error=text[:500], finished_at=time.time()))
            raise SpendRefusedError(text)

    async def _submit(
        self,
        row: LedgerRow,
        request: GenerateRequest,
        *,
        wait_seconds: float,
        on_progress: ProgressFn | None,
        api_key: SecretStr | None,
    ) -> Recorded:
        task: list[str] = []

        async def submitted(task_id: str) -> None:
            task.append(task_id)
            await self._record(row.id, Changes(state="submitted", task_id=task_id))

        async def settled(outcome: Generation | QolabaError) -> None:
            if isinstance(outcome, Generation):
                await self._record_generation(row.id, outcome)
            else:
                await self._record(row.id, failure_changes(outcome, task_sent=True))

        try:
            generation = await self.runner.generate(
                request,
                wait_seconds=wait_seconds,
                on_progress=on_progress,
                api_key=api_key,
                on_submitted=submitted,
                on_settled=settled,
            )
        except QolabaError as exc:
            if not task:  # whatever ended the call before a task id, the record says what is known
                await self._record(row.id, failure_changes(exc, task_sent=False))
            raise
        except BaseException:
            if not task:  # cancelled mid-submission: it may have reached the API
                await self._record(row.id, Changes(state="unknown", error="the call ended during its submission"))
            raise
        if generation.done or not is_local_task_id(generation.task_id):
            # (a synchronous request still running was recorded by on_submitted; on_settled records its end)
            await self._record_generation(row.id, generation)
        notes = [*generation.notes, RECORD_PENDING] if self.writes.pending(row.id) else generation.notes
        return Recorded(**generation.model_dump(exclude={"notes"}), notes=notes, row_id=row.id)

    async def _follow(
        self, row: LedgerRow, *, deadline: float, on_progress: ProgressFn | None, api_key: SecretStr | None
    ) -> Recorded:
        """Follow a generation another call started, once it has its task id (or ended): the task itself."""
        if row.state in ("succeeded", "failed", "unknown", "submitting") or row.task_id is None:
            return from_row(row, joined=True)
        generation = await self._poll(row, wait_seconds=max(deadline - time.monotonic(), 0), progress=on_progress,
                                      api_key=api_key)  # fmt: skip
        return Recorded(**generation.model_dump(exclude={"estimate_usd"}), estimate_usd=row.estimate_usd, row_id=row.id,
                       joined=True)  # fmt: skip

    async def get_task(
        self, task_id: str, *, wait_seconds: float, on_progress: ProgressFn | None, api_key: SecretStr | None
    ) -> Recorded:
        """A task from the ledger (finished ones without asking the API), polled while it runs; the caller's only."""
        principal = self.principal(api_key)
        try:
            row = await self.ledger.by_task(task_id, principal=None)
        except LedgerError:  # the API can still answer: a read-only call need not fail with the ledger
            log.exception("the ledger could not be read for task %s; asking the API", task_id)
            row = None
        if row is not None and row.principal != principal:
            # Another caller's: answered exactly as a task that does not exist, so nothing about it leaks.
            if is_local_task_id(task_id):
                raise unknown_sync(task_id)
            raise TaskNotFoundError(f"No task {task_id!r}.", status_code=404)
        if row is None:
            generation = await self.runner.get_task(
                task_id, wait_seconds=wait_seconds, on_progress=on_progress, api_key=api_key
            )
            return Recorded(**generation.model_dump())
        if row.state in ("succeeded", "failed", "unknown"):
            return from_row(row, joined=False)
        generation = await self._poll(row, wait_seconds=wait_seconds, progress=on_progress, api_key=api_key)
        return Recorded(**generation.model_dump(exclude={"estimate_usd"}), estimate_usd=row.estimate_usd, row_id=row.id)

    async def _poll(
        self, row: LedgerRow, *, wait_seconds: float, progress: ProgressFn | None, api_key: SecretStr | None
    ) -> Generation:
        """Poll the row's task and record what the API says; once the API has forgotten it, the ledger answers."""
        assert row.task_id is not None
        try:
            generation = await self.runner.get_task(
                row.task_id, wait_seconds=wait_seconds, on_progress=progress, api_key=api_key
            )
        except TaskNotFoundError:
            if is_local_task_id(row.task_id):  # its process is gone; the row says whether it ever settled
                latest = await self.ledger.get(row.id) or row
                if latest.state in ACTIVE_STATES:
                    latest = await self.ledger.update(
                        row.id, Changes(state="unknown", error="the server holding it stopped"), now=time.time()
                    )
                return from_row(latest, joined=False)
            found = from_row(row, joined=False)
            return found.model_copy(
                update={"notes": [*found.notes, "the API no longer knows this task; this is what the ledger holds"]}
            )
        if not is_local_task_id(generation.task_id) or generation.done:
            await self._record_generation(row.id, generation)
        return generation

    async def delivered(self, row_id: str) -> None:
        """A caller has the result: an identical call after this is a new generation."""

        async def write(ledger: LedgerStore) -> None:
            await ledger.mark_delivered(row_id)

        await self.writes.write(row_id, "its delivery", write)

    async def saved(self, row_id: str, paths: list[str | None]) -> None:
        await self._record(row_id, Changes(saved_files=paths))

    async def saved_files(self, row_id: str) -> list[str | None]:
        """The files recorded as saved for a generation's images (none when the ledger cannot be read)."""
        try:
            row = await self.ledger.get(row_id)
        except LedgerError:
            log.exception("the ledger could not be read for %s", row_id)
            return []
        return list(row.saved_files) if row is not None else []

    async def add_saved(self, row_id: str, paths: list[str | None]) -> list[str | None]:
        """Record the files saved for some images, keeping those recorded before for the others; all of them."""
        with anyio.CancelScope(shield=True):
            async with self._saving:
                merged = await self.saved_files(row_id)
                merged += [None] * (len(paths) - len(merged))
                for index, path in enumerate(paths):
                    merged[index] = path or merged[index]
                await self.saved(row_id, merged)
        return merged

    async def history(self, query: Query) -> tuple[list[LedgerRow], str | None]:
        return await self.ledger.history(query)

    async def _record_generation(self, row_id: str, generation: Generation) -> None:
        await self._record(row_id, changes_of(generation))

    async def _record(self, row_id: str, changes: Changes) -> None:
        """Write to the ledger even while the call is being cancelled, and keep retrying it while the ledger is
        busy or unreachable: the record outlives the call (``pending`` says when it has not landed yet)."""
        now = time.time()

        async def write(ledger: LedgerStore) -> None:
            row = await ledger.update(row_id, changes, now=now)
            # The money follows the outcome: a success costs what the API reported (else what was held), a
            # failure costs nothing. An unknown outcome keeps its hold: it may have been paid for.
            if row.reserved_usd <= 0:
                pass
            elif changes.state == "succeeded":
                await ledger.settle(row_id, actual_usd=changes.cost_usd, now=now)
            elif changes.state == "failed":
                await ledger.release(row_id, now=now)

        await self.writes.write(row_id, f"its {changes.state or 'files'} record", write)
