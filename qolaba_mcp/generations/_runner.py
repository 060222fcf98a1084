"""The job lifecycle: submit once, poll with backoff, report progress, and never wait past the caller's wait.

Time: each poll is bounded, body included, by the call's remaining wait plus ``POLL_MARGIN``; an async submission
by ``max(wait_seconds, SUBMIT_MIN_SECONDS)``. A synchronous generation (``celery: false``) is one long request that
cannot be resumed elsewhere: it runs in ``Runner``' own task group (open for the server's life), and when it outlives
the call's wait the call returns PENDING with a local task id (``sync-<hex>``) that ``get_task`` answers from this
process once the request finishes. It is never abandoned and never resent.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Literal, Self

import anyio
import anyio.abc
from pydantic import BaseModel, Field, SecretStr

from .._errors import (
    NetworkError,
    QolabaError,
    RateLimitError,
    ResponseFormatError,
    ServerError,
    TaskNotFoundError,
)
from .._identity import acting_person
from ..api._client import QolabaClient
from ..api._wire import (
    MAX_API_TEXT,
    GenerateRequest,
    GenerateResult,
    ImageOutput,
    Task,
    TaskCreated,
    Usage,
    removed_text,
)
from ..ledger import principal_of
from ._pacing import Forecast, PollPolicy, Progress, ProgressFn, RetryPolicy

log = logging.getLogger("qolaba_mcp.jobs")

SubmittedFn = Callable[[str], Awaitable[None]]
"""Receives the task id as soon as a submission has one (the API's, or a ``sync-`` id), before any wait."""
SettledFn = Callable[["Generation | QolabaError"], Awaitable[None]]
"""Receives a synchronous request's outcome when it settles, even after the call that started it has returned."""

# Failures of a single poll that say nothing about the task: try again while the call's wait lasts.
_TRANSIENT = (RateLimitError, ServerError, NetworkError, ResponseFormatError)

POLL_MARGIN = 2.0  # seconds a poll may run past the call's wait before it is cut off
SUBMIT_MIN_SECONDS = 10.0  # an async submission always gets this long to answer, whatever the wait
LOCAL_ID_PREFIX = "sync-"  # task ids this process made up for synchronous requests that outlived their call
SYNC_KEEP_SECONDS = 3600.0  # how long a finished synchronous request's outcome stays answerable
SYNC_KEEP_MAX = 1000  # at most this many finished ones are kept (the oldest go first)
SYNC_SHUTDOWN_GRACE = 5.0  # seconds a stopping server waits for its synchronous requests to finish
_MAX_MODEL = 200  # characters of a model name the API reports


def is_local_task_id(task_id: str | None) -> bool:
    """Whether ``task_id`` names a synchronous request held by this process rather than a Qolaba task."""
    return task_id is not None and task_id.startswith(LOCAL_ID_PREFIX)


Status = Literal["PENDING", "PROCESSING", "SUCCESS", "FAILED", "UNKNOWN"]  # what agents see, in results and history


class Generation(BaseModel):
    """What a generation looks like to the caller after submitting and/or waiting."""

    task_id: str | None = Field(description="The Qolaba task id; pass it to get_task.")
    status: Status = Field(
        description="UNKNOWN: submitted, but whether a task exists was never learnt (check before retrying)."
    )
    model: str | None = None
    prompt: str | None = None
    seed: int | None = None
    images: list[ImageOutput] = Field(default_factory=list)
    usage: Usage | None = None
    error: str | None = Field(default=None, description="Why the task failed (status FAILED).")
    elapsed_seconds: float = Field(description="Seconds this call spent.")
    polls: int = Field(default=0, description="Task polls this call made.")
    poll_error: str | None = Field(
        default=None, description="The last failed poll, when the wait ended while polls were failing."
    )
    retry_after: float | None = Field(
        default=None, description="Seconds the API asked to wait before the next poll, when longer than the wait."
    )
    notes: list[str] = Field(
        default_factory=list, description="What could not be used: odd API fields, images left out, delivery."
    )
    estimate_usd: float | None = Field(default=None, description="The price estimated before submitting, USD.")

    @property
    def done(self) -> bool:
        return self.status in ("SUCCESS", "FAILED")


@dataclass(kw_only=True)
class _SyncRequest:
    """A synchronous generation running in the background, and its outcome once it has one."""

    local_id: str
    principal: str  # who asked (a hash of the key in use): nobody else is told it exists
    model: str
    prompt: str | None
    done: anyio.Event = field(default_factory=anyio.Event)
    outcome: GenerateResult | TaskCreated | QolabaError | None = None
    finished: float | None = None
    on_settled: SettledFn | None = None


class Runner:
    """Runs generations against the API for the MCP tools; knows nothing of MCP.

    Enter it (``async with jobs:``) for the life of the server: synchronous generations run in its task group so
    that none is lost when it outlasts the call that started it.
    """

    def __init__(
        self,
        *,
        client: QolabaClient,
        poll: PollPolicy | None = None,
        retry: RetryPolicy | None = None,
        heartbeat: float = 1.0,
        stopping: anyio.Event | None = None,
        shutdown_grace: float = SYNC_SHUTDOWN_GRACE,
    ) -> None:
        self._stopping = stopping  # once set (the server is stopping), waits end and return what they have
        self._shutdown_grace = shutdown_grace
        self._client = client
        self._poll = poll or PollPolicy()
        self._retry = retry or RetryPolicy()
        self._heartbeat = heartbeat
        self._background: anyio.abc.TaskGroup | None = None
        self._sync: dict[str, _SyncRequest] = {}

    async def __aenter__(self) -> Self:
        group = anyio.create_task_group()
        await group.__aenter__()
        self._background = group
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        group, self._background = self._background, None
        if group is not None:
            # A synchronous request that finishes within the grace is recorded (by its on_settled) and so stays
            # answerable from the ledger on any replica; one still running after it goes with the server.
            with anyio.CancelScope(shield=True), anyio.move_on_after(self._shutdown_grace):
                for entry in list(self._sync.values()):
                    await entry.done.wait()
            group.cancel_scope.cancel()
            await group.__aexit__(None, None, None)

    async def generate(
        self,
        request: GenerateRequest,
        *,
        wait_seconds: float,
        on_progress: ProgressFn | None = None,
        api_key: SecretStr | None = None,
        on_submitted: SubmittedFn | None = None,
        on_settled: SettledFn | None = None,
    ) -> Generation:
        """Submit once (sync or async, per ``request.celery``), then wait up to ``wait_seconds`` for the result.

        A synchronous request still running when the wait ends comes back PENDING under a ``sync-`` task id;
        ``on_settled`` then hears its outcome when it arrives. ``on_submitted`` hears each task id before the wait.
        """
        started = time.monotonic()
        deadline = started + wait_seconds
        progress = Progress(on_progress)
        result: GenerateResult | TaskCreated
        if not request.celery:
            entry = self._start_sync(request, api_key=api_key, wait_seconds=wait_seconds)
            outcome = await self._await_sync(entry, deadline=deadline, progress=progress, started=started)
            if outcome is None:
                log.info(
                    "synchronous request outlived its call's %g s wait; answerable as %s", wait_seconds, entry.local_id
                )
                entry.on_settled = on_settled
                if on_submitted is not None:
                    await on_submitted(entry.local_id)
                return _pending(entry.local_id, entry, started)
            self._sync.pop(entry.local_id, None)  # the caller gets the outcome itself: nobody will ask for this id
            result = _settled(outcome)
        else:
            result = await self._submit(request, api_key=api_key, wait_seconds=wait_seconds)
        if isinstance(result, GenerateResult):
            return _from_result(result, request.model, started)
        if on_submitted is not None:
            await on_submitted(result.task_id)
        await progress(f"PENDING · submitted {result.task_id}")
        pending = Generation(
            task_id=result.task_id,
            status="PENDING",
            model=request.model,
            prompt=request.prompt,
            elapsed_seconds=_since(started),
        )
        return await self._wait(
            pending, started=started, deadline=deadline, progress=progress, api_key=api_key,
            forecast=Forecast(time.monotonic()), poll_first=False, fresh=True,
        )  # fmt: skip

    async def get_task(
        self,
        task_id: str,
        *,
        wait_seconds: float,
        on_progress: ProgressFn | None = None,
        api_key: SecretStr | None = None,
    ) -> Generation:
        """The task's state now, or after waiting up to ``wait_seconds`` for it to finish.

        A ``sync-`` id is answered from this process: PENDING while its synchronous request runs, then its images
        (or its error); if the API queued that request as a task after all, that task is polled.
        """
        started = time.monotonic()
        deadline = started + wait_seconds
        progress = Progress(on_progress)
        if is_local_task_id(task_id):
            return await self._get_sync(task_id, started=started, deadline=deadline, progress=progress, api_key=api_key)
        known = Generation(task_id=task_id, status="PENDING", elapsed_seconds=0)
        return await self._wait(
            known, started=started, deadline=deadline, progress=progress, api_key=api_key,
            forecast=Forecast(None), poll_first=True, fresh=False,
        )  # fmt: skip

    def principal(self, api_key: SecretStr | None) -> str:
        """Who asks: the signed-in person (OAuth), else a hash of the key in use (the caller's own, or the server's)."""
        person = acting_person()
        return person.principal if person is not None else principal_of(self._client.key_in_use(api_key))

    def _start_sync(self, request: GenerateRequest, *, api_key: SecretStr | None, wait_seconds: float) -> _SyncRequest:
        if self._background is None:
            raise RuntimeError("a synchronous generation needs Runner entered (async with): it may outlive its call")
        self._forget_old()
        entry = _SyncRequest(
            local_id=f"{LOCAL_ID_PREFIX}{uuid.uuid4().hex}",
            principal=self.principal(api_key),
            model=request.model,
            prompt=request.prompt,
        )
        self._sync[entry.local_id] = entry
        self._background.start_soon(self._run_sync, entry, request, api_key, wait_seconds)
        return entry

    async def _run_sync(
        self, entry: _SyncRequest, request: GenerateRequest, api_key: SecretStr | None, wait_seconds: float
    ) -> None:
        try:
            entry.outcome = await self._submit(request, api_key=api_key, wait_seconds=wait_seconds)
        except QolabaError as exc:
            entry.outcome = exc
        except Exception as exc:  # one request must never take the server's task group down
            log.exception("synchronous request %s failed unexpectedly", entry.local_id)
            entry.outcome = QolabaError(f"the synchronous request failed unexpectedly ({type(exc).__name__})")
        finally:
            entry.finished = time.monotonic()
            entry.done.set()
        if entry.on_settled is not None:  # its call has returned: tell whoever keeps the record
            try:
                outcome = entry.outcome
                if isinstance(outcome, GenerateResult):
                    settled: Generation | QolabaError = _from_result(outcome, entry.model, entry.finished)
                elif isinstance(outcome, TaskCreated):
                    settled = _pending(outcome.task_id, entry, entry.finished)
                else:
                    settled = outcome if outcome is not None else QolabaError("no outcome")
                with anyio.CancelScope(shield=True):
                    await entry.on_settled(settled)
            except Exception:
                log.exception("recording the outcome of %s failed", entry.local_id)

    def _forget_old(self) -> None:
        """Drop finished requests older than SYNC_KEEP_SECONDS, and the oldest beyond SYNC_KEEP_MAX."""
        now = time.monotonic()
        finished = sorted((entry.finished, entry.local_id) for entry in self._sync.values() if entry.finished)
        for index, (at, local_id) in enumerate(finished):
            if now - at > SYNC_KEEP_SECONDS or len(finished) - index > SYNC_KEEP_MAX:
                del self._sync[local_id]

    async def _await_sync(
        self, entry: _SyncRequest, *, deadline: float, progress: Progress, started: float
    ) -> GenerateResult | TaskCreated | QolabaError | None:
        """The request's outcome, or None if it is still running at ``deadline``; a heartbeat every second."""

        async def beat() -> None:
            while True:
                await anyio.sleep(self._heartbeat)
                await progress(f"PROCESSING · {_since(started):.0f} s (synchronous request)")

        with anyio.move_on_after(max(deadline - time.monotonic(), 0.0)):
            async with anyio.create_task_group() as group:
                group.start_soon(beat)
                await entry.done.wait()
                group.cancel_scope.cancel()
        return entry.outcome if entry.done.is_set() else None

    async def _get_sync(
        self, local_id: str, *, started: float, deadline: float, progress: Progress, api_key: SecretStr | None
    ) -> Generation:
        entry = self._sync.get(local_id)
        if entry is None or entry.principal != self.principal(api_key):
            raise unknown_sync(local_id)  # another caller's is answered exactly as one that does not exist
        outcome = await self._await_sync(entry, deadline=deadline, progress=progress, started=started)
        if outcome is None:
            return _pending(local_id, entry, started)
        result = _settled(outcome)
        if isinstance(result, GenerateResult):
            generation = _from_result(result, entry.model, started)
            return generation if generation.task_id else generation.model_copy(update={"task_id": local_id})
        pending = _pending(result.task_id, entry, started)  # the API queued it as a task after all
        return await self._wait(
            pending, started=started, deadline=deadline, progress=progress, api_key=api_key,
            forecast=Forecast(None), poll_first=True, fresh=True,
        )  # fmt: skip

    async def _stopped_within(self, seconds: float) -> bool:
        """Sleep ``seconds``, or less and True if the server starts stopping meanwhile."""
        if self._stopping is None:
            await anyio.sleep(seconds)
            return False
        with anyio.move_on_after(seconds):
            await self._stopping.wait()
            return True
        return False

    async def _submit(
        self, request: GenerateRequest, *, api_key: SecretStr | None, wait_seconds: float
    ) -> GenerateResult | TaskCreated:
        """POST the request; retried only where the API provably created nothing (429, connection refused).

        An async submission, retries included, is over within ``max(wait_seconds, SUBMIT_MIN_SECONDS)``: each attempt
        is bounded as a whole, a trickling answer included. A synchronous one is bounded by the client's sync
        timeout per attempt (it runs in the background, see ``Runner``).
        """
        window = max(wait_seconds, SUBMIT_MIN_SECONDS)
        started = time.monotonic()
        retry_deadline = started + min(self._retry.submit_seconds, window)
        attempt = 0
        while True:
            timeout = max(started + window - time.monotonic(), 0.5) if request.celery else None
            try:
                return await self._client.generate(request, api_key=api_key, timeout=timeout)
            except RateLimitError as exc:
                last: QolabaError = exc
                wait = self._retry.backoff(attempt, exc.retry_after)
            except NetworkError as exc:
                if exc.request_sent:
                    raise  # the API may have created the task: resubmitting could charge twice
                last, wait = exc, self._retry.backoff(attempt)
            attempt += 1
            if attempt >= self._retry.submit_attempts or time.monotonic() + wait > retry_deadline:
                raise last
            log.info("submission not accepted (%s); retry %d in %.1f s", type(last).__name__, attempt, wait)
            await anyio.sleep(wait)

    async def _wait(
        self,
        known: Generation,
        *,
        started: float,
        deadline: float,
        progress: Progress,
        api_key: SecretStr | None,
        forecast: Forecast,
        poll_first: bool,
        fresh: bool,
    ) -> Generation:
        """Poll until done or ``deadline``.

        ``poll_first`` polls at once (a task this call did not submit); ``fresh`` marks a task this server has
        just created, for which a 404 means "not visible yet" (eventual consistency) until a poll has succeeded.
        """
        assert known.task_id is not None
        polls = 0
        failures = 0
        not_before = started
        fraction: float | None = None
        poll_error: str | None = None
        asked_wait: float | None = None
        while True:
            now = time.monotonic()
            if polls == 0 and poll_first:
                delay = 0.0
            else:
                delay = self._poll.delay(polls=polls, remaining=forecast.remaining(now))
            delay = max(delay, not_before - now)
            if now + delay > deadline:
                if polls > 0 or not poll_first:
                    break
                delay = 0.0
            if await self._stopped_within(delay):
                break
            polls += 1
            try:
                timeout = max(deadline - time.monotonic(), 0.0) + POLL_MARGIN
                task = await self._client.get_task(known.task_id, api_key=api_key, timeout=timeout)
            except (*_TRANSIENT, TaskNotFoundError) as exc:
                if isinstance(exc, TaskNotFoundError) and not fresh:
                    exc.task_id = known.task_id
                    raise
                failures += 1
                retry_after = exc.retry_after if isinstance(exc, RateLimitError) else None
                not_before = time.monotonic() + self._retry.backoff(failures - 1, retry_after)
                # A wait the API asks for that outlasts this call is reported as such, not as "not finished".
                asked_wait = retry_after if not_before > deadline else None
                poll_error = exc.message[:MAX_API_TEXT]
                await progress(f"{known.status} · {_since(started):.0f} s · poll failed, retrying", fraction)
                continue
            except QolabaError as exc:
                exc.task_id = known.task_id
                raise
            failures, poll_error, asked_wait, fresh = 0, None, None, False
            fraction = task.progress
            forecast.observe(fraction, time.monotonic())
            known = _merge(known, task)
            if task.done:
                return known.model_copy(update={"elapsed_seconds": _since(started), "polls": polls})
            await progress(f"{task.status} · {_since(started):.0f} s", fraction)
        return known.model_copy(
            update={
                "elapsed_seconds": _since(started),
                "polls": polls,
                "poll_error": poll_error,
                "retry_after": asked_wait,
            }
        )


def unknown_sync(local_id: str) -> TaskNotFoundError:
    """What a ``sync-`` id this server does not hold for the caller gets: the same words, whoever holds it."""
    return TaskNotFoundError(
        f"This server holds no synchronous request {local_id}: such ids are answered only by the server "
        f"process that gave them, for {SYNC_KEEP_SECONDS / 3600:g} h after the request ends.",
        status_code=404,
    )


def _since(started: float) -> float:
    return round(time.monotonic() - started, 3)


def _settled(outcome: GenerateResult | TaskCreated | QolabaError) -> GenerateResult | TaskCreated:
    if isinstance(outcome, QolabaError):
        raise outcome.with_traceback(None)  # raised again on each ask: no growing traceback
    return outcome


def _pending(task_id: str, entry: _SyncRequest, started: float) -> Generation:
    return Generation(
        task_id=task_id, status="PENDING", model=entry.model, prompt=entry.prompt, elapsed_seconds=_since(started)
    )


def _from_result(result: GenerateResult, model: str, started: float) -> Generation:
    removed = result.removed and not result.images  # a success with every image filtered out is a failure
    return Generation(
        task_id=result.task_id,
        status="FAILED" if removed else "SUCCESS",
        error=removed_text(result.removed) if removed else None,
        model=model,
        prompt=result.prompt,
        seed=result.seed,
        images=result.images,
        usage=result.usage,
        notes=result.notes,
        elapsed_seconds=_since(started),
    )


def _merge(known: Generation, task: Task) -> Generation:
    model = task.raw.get("model")
    return known.model_copy(
        update={
            "status": task.status,
            "model": model[:_MAX_MODEL] if isinstance(model, str) else known.model,
            "prompt": task.prompt or known.prompt,
            "seed": task.seed if task.seed is not None else known.seed,
            "images": task.images,
            "usage": task.usage,
            "error": task.error,
            "notes": task.notes,
        }
    )
