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
    AuthenticationError,
    BadRequestError,
    MissingApiKeyError,
    NetworkError,
    QolabaError,
    RateLimitError,
    TaskNotFoundError,
)
from ..api._wire import GenerateRequest, ImageOutput, Usage
from ..ledger import (
    ACTIVE_STATES,
    Changes,
    ImageRecord,
    LedgerError,
    LedgerRow,
    LedgerState,
    LedgerStore,
    NewGeneration,
    Query,
    WriteQueue,
    abandoned,
    principal_of,
    request_hash,
)
from ..money._spend import Quote, SpendRefusedError, refusal
from ._runner import Generation, ProgressFn, Runner, is_local_task_id, unknown_sync

log = logging.getLogger("qolaba_mcp.tracked")

# A row still "submitting" this long after the longest a live submission can take belongs to a process that died
# between sending and recording.
SUBMITTING_GRACE = 5.0
# A new generation identical to one delivered this recently gets a note: the caller may not know it pays again.
REPEAT_NOTICE_SECONDS = 600.0
# The ledger has no seed column: the seed the API reported is kept with the usage it reported, under this key.
_SEED = "seed"
LEASE_S = 20.0  # how long a submitting row stays owned without its owner's heartbeat
HEARTBEAT_S = 5.0  # how often a live process renews its submitting rows' leases
_FOLLOW_INTERVAL = 0.25  # seconds between looks at a row another call is submitting
RECORD_PENDING = (
    "the ledger was busy, so this generation's record is not written yet; the server keeps retrying it (spend "
    "and history catch up once it lands)"
)
_UNKNOWN_NEXT = (
    "The submission was sent but its answer was never recorded (the server stopped or the connection broke), so "
    "whether a task exists is unknown. Check the Qolaba dashboard before retrying: a retry may be a second paid "
    "generation."
)


@dataclass(frozen=True, kw_only=True)
class SpendLimits:
    """What a new generation must fit: its quote, held against these limits (None: no such limit)."""

    quote: Quote
    daily_budget: float | None = None
    per_call_cap: float | None = None


class Recorded(Generation):
    """A generation with its ledger row: ``joined`` when this call joined an identical earlier one."""

    row_id: str | None = None
    joined: bool = False


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
        """Who asks: a hash of the key in use (the caller's own, or the server's)."""
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
            request=_without_image_bytes(body),
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
            return _warning(row)
        if joined:
            log.info("joining generation %s (task %s) instead of submitting again", row.id, row.task_id)
            return await self._follow(row, deadline=deadline, on_progress=on_progress, api_key=api_key)
        if limits is not None and limits.quote.estimate_usd is not None and limits.daily_budget is not None:
            await self._reserve(row, limits)  # money is held only where a budget counts it
        repeat = await self._repeat_note(new)
        self._submitting += 1
        try:
            tracked = await self._submit(
                row, request, wait_seconds=wait_seconds, on_progress=on_progress, api_key=api_key
            )
        finally:
            self._submitting -= 1
        notes = tracked.notes if repeat is None else [repeat, *tracked.notes]
        estimate = limits.quote.estimate_usd if limits else None
        return tracked.model_copy(update={"estimate_usd": estimate, "notes": notes})

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
                    daily_budget=limits.daily_budget,
                    per_call_cap=limits.per_call_cap,
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
                await self._record(row.id, _failure(outcome, task_sent=True))

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
                await self._record(row.id, _failure(exc, task_sent=False))
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
            return _from_row(row, joined=True)
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
            return _from_row(row, joined=False)
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
                return _from_row(latest, joined=False)
            found = _from_row(row, joined=False)
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
        await self._record(row_id, _changes(generation))

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


def _without_image_bytes(body: dict[str, Any]) -> dict[str, Any]:
    """The request as the ledger keeps it: a ``data:`` URI (a local file's bytes) becomes a short placeholder."""

    def short(value: Any) -> Any:
        if isinstance(value, str) and value[:5].lower() == "data:":
            return f"{value[: value.find(',') + 1 or 40][:60]}... ({len(value)} characters, not kept)"
        return value

    kept = dict(body)
    if isinstance(kept.get("image_urls"), list):
        kept["image_urls"] = [short(url) for url in kept["image_urls"]]
    if isinstance(kept.get("reference_images"), list):
        kept["reference_images"] = [
            {**ref, "url": short(ref.get("url"))} if isinstance(ref, dict) else ref for ref in kept["reference_images"]
        ]
    if "mask_url" in kept:
        kept["mask_url"] = short(kept["mask_url"])
    return kept


def _changes(generation: Generation) -> Changes:
    state: LedgerState = "succeeded" if generation.status == "SUCCESS" else "running"
    if generation.status == "FAILED":
        state = "failed"
    usage = generation.usage.model_dump(mode="json", exclude_none=True) if generation.usage else None
    if generation.seed is not None:  # the seed the API used (chosen by it when none was asked for)
        usage = {**(usage or {}), _SEED: generation.seed}
    return Changes(
        state=state,
        task_id=generation.task_id,
        finished_at=time.time() if generation.done else None,
        images=_images(generation) if generation.done else None,
        usage=usage,
        cost_usd=generation.usage.cost_usd if generation.usage else None,
        error=generation.error,
    )


def _images(generation: Generation) -> list[ImageRecord]:
    return [
        ImageRecord(**image.model_dump(include={"url", "width", "height", "content_type"}))
        for image in generation.images
    ]


def _failure(exc: QolabaError, *, task_sent: bool) -> Changes:
    """What a failed call leaves in the record: refused (nothing created), or unknown (it may have been created)."""
    refused = isinstance(exc, BadRequestError | MissingApiKeyError | RateLimitError) or (
        isinstance(exc, NetworkError) and not exc.request_sent
    )
    if isinstance(exc, AuthenticationError) and not task_sent:
        refused = True
    if exc.task_id is not None:
        return Changes(state="submitted", task_id=exc.task_id)
    if refused:
        return Changes(state="failed", error=exc.message[:500], finished_at=time.time())
    return Changes(state="unknown", error=exc.message[:500])


def row_seed(row: LedgerRow) -> int | None:
    """The seed a generation used: the one the API reported, else the one asked for."""
    for seed in ((row.usage or {}).get(_SEED), row.request.get("seed")):
        if isinstance(seed, int) and not isinstance(seed, bool):
            return seed
    return None


def _warning(row: LedgerRow) -> Recorded:
    """What a retry is told instead of submitting when an identical earlier submission may have been charged."""
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(row.created_at))
    task = f" (task {row.task_id})" if row.task_id else ""
    why = (row.error or "reason unknown")[:200]
    text = (
        f"Nothing was submitted: an identical generate_image call at {when} (ledger row {row.id}{task}) was sent to "
        f"the Qolaba API but its answer was never recorded ({why}), so it may have been "
        "charged. Check the Qolaba dashboard for it first. To generate anyway, call generate_image again with the "
        "same arguments (this warning is given once per such call) or change an argument such as the seed."
    )
    found = _from_row(row, joined=False)
    return found.model_copy(update={"notes": [], "error": text})


def _from_row(row: LedgerRow, *, joined: bool) -> Recorded:
    """A result from the record alone (the task finished, or the API no longer knows it)."""
    status: Any = {"succeeded": "SUCCESS", "failed": "FAILED", "unknown": "UNKNOWN"}.get(row.state, "PENDING")
    billing = {key: value for key, value in (row.usage or {}).items() if key != _SEED}
    usage = Usage.model_validate(billing) if billing else None
    notes = []
    if row.state == "unknown":
        notes.append(_UNKNOWN_NEXT)
    if row.state == "submitting":
        notes.append("an identical call is submitting this generation; call generate_image again to join it")
    return Recorded(
        task_id=row.task_id,
        status=status,
        model=row.model,
        prompt=row.prompt,
        seed=row_seed(row),
        images=[ImageOutput(**image.model_dump()) for image in row.images],
        usage=usage,
        error=row.error if row.state != "succeeded" else None,
        elapsed_seconds=0.0,
        notes=notes,
        estimate_usd=row.estimate_usd,
        row_id=row.id,
        joined=joined,
    )
