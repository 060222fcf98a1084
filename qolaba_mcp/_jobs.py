"""The job lifecycle: submit once, poll with backoff, report progress, and never wait past the caller's budget."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import anyio
from pydantic import BaseModel, Field, SecretStr

from ._client import QolabaClient
from ._errors import NetworkError, QolabaError, RateLimitError, ResponseFormatError, ServerError
from ._models import GenerateRequest, GenerateResult, ImageOutput, Task, TaskCreated, TaskStatus, Usage

log = logging.getLogger("qolaba_mcp.jobs")

ProgressFn = Callable[[float, float | None, str], Awaitable[None]]
"""Receives (progress, total or None, message); progress strictly increases within one call."""

# Failures of a single poll that say nothing about the task: try again while the budget lasts.
_TRANSIENT = (RateLimitError, ServerError, NetworkError, ResponseFormatError)


class Generation(BaseModel):
    """What a generation looks like to the caller after submitting and/or waiting."""

    task_id: str | None = Field(description="The Qolaba task id; pass it to get_task.")
    status: TaskStatus
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

    @property
    def done(self) -> bool:
        return self.status in ("SUCCESS", "FAILED")


@dataclass(frozen=True, kw_only=True)
class PollPolicy:
    """How often to poll: quick at first and backing off to a cap, or aimed at the end the task predicts."""

    min_interval: float = 0.25
    max_interval: float = 2.0
    growth: float = 1.5

    def delay(self, *, polls: int, remaining: float | None) -> float:
        """Seconds until the next poll, given the polls so far and the task's predicted seconds left."""
        if remaining is None:
            return min(self.max_interval, self.min_interval * self.growth**polls)
        if remaining <= 0:
            return self.min_interval  # it says it is complete but is not done yet: any moment now
        # Aim just past the predicted end, sooner or later than the backoff would go; never past the cap,
        # which bounds what a wrong prediction costs.
        return max(0.1, min(self.max_interval, remaining + 0.05))


class _Forecast:
    """Predicts a task's seconds left from the progress it reports, assuming a steady pace."""

    def __init__(self, task_started: float | None) -> None:
        self._started = task_started  # when the task began, where this call saw it begin
        self._last: tuple[float, float] | None = None  # (time, progress) of the last observation
        self._remaining: float | None = None

    def observe(self, progress: float | None, at: float) -> None:
        previous, self._last = self._last, (at, progress) if progress is not None else None
        self._remaining = None
        if progress is None or progress <= 0:
            return
        if progress >= 1:
            self._remaining = 0.0
            return
        pace = None
        if self._started is not None and at > self._started:
            pace = progress / (at - self._started)
        elif previous is not None and progress > previous[1]:
            pace = (progress - previous[1]) / (at - previous[0])
        if pace:
            self._remaining = (1 - progress) / pace

    def remaining(self, now: float) -> float | None:
        if self._remaining is None or self._last is None:
            return None
        return max(0.0, self._remaining - (now - self._last[0]))


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """Retries for one call: polls retry any transient failure; a submission only when nothing was created."""

    submit_attempts: int = 3
    submit_budget: float = 60.0
    base_backoff: float = 0.5
    max_backoff: float = 8.0
    rng: random.Random = field(default_factory=random.Random, compare=False)

    def backoff(self, attempt: int, retry_after: float | None = None) -> float:
        """Exponential backoff with full jitter, never shorter than the API's retry-after."""
        ceiling = min(self.max_backoff, self.base_backoff * 2**attempt)
        wait = self.rng.uniform(ceiling / 2, ceiling)
        return max(wait, retry_after or 0.0)


class _Progress:
    """Turns poll observations into strictly increasing progress notifications."""

    def __init__(self, report: ProgressFn | None) -> None:
        self._report = report
        self._last = 0.0
        self._count = 0

    async def __call__(self, message: str, fraction: float | None = None) -> None:
        if self._report is None:
            return
        self._count += 1
        value, total = (round(fraction * 100, 2), 100.0) if fraction is not None else (float(self._count), None)
        value = max(value, round(self._last + 0.01, 2))
        self._last = value
        await self._report(value, total, message)


class Jobs:
    """Runs generations against the API for the MCP tools; knows nothing of MCP."""

    def __init__(
        self,
        *,
        client: QolabaClient,
        poll: PollPolicy | None = None,
        retry: RetryPolicy | None = None,
        heartbeat: float = 1.0,
    ) -> None:
        self._client = client
        self._poll = poll or PollPolicy()
        self._retry = retry or RetryPolicy()
        self._heartbeat = heartbeat

    async def generate(
        self,
        request: GenerateRequest,
        *,
        wait_seconds: float,
        on_progress: ProgressFn | None = None,
        api_key: SecretStr | None = None,
    ) -> Generation:
        """Submit once (sync or async, per ``request.celery``), then wait up to ``wait_seconds`` for the result."""
        started = time.monotonic()
        progress = _Progress(on_progress)
        if not request.celery:
            result = await self._with_heartbeat(
                self._submit(request, api_key=api_key, budget=wait_seconds), progress, started
            )
        else:
            result = await self._submit(request, api_key=api_key, budget=wait_seconds)
        if isinstance(result, GenerateResult):
            return _from_result(result, request.model, started)
        await progress(f"PENDING · submitted {result.task_id}")
        pending = Generation(
            task_id=result.task_id,
            status="PENDING",
            model=request.model,
            prompt=request.prompt,
            elapsed_seconds=_since(started),
        )
        return await self._wait(
            pending, started=started, deadline=started + wait_seconds, progress=progress,
            api_key=api_key, forecast=_Forecast(time.monotonic()), poll_first=False,
        )  # fmt: skip

    async def get_task(
        self,
        task_id: str,
        *,
        wait_seconds: float,
        on_progress: ProgressFn | None = None,
        api_key: SecretStr | None = None,
    ) -> Generation:
        """The task's state now, or after waiting up to ``wait_seconds`` for it to finish."""
        started = time.monotonic()
        known = Generation(task_id=task_id, status="PENDING", elapsed_seconds=0)
        return await self._wait(
            known, started=started, deadline=started + wait_seconds, progress=_Progress(on_progress),
            api_key=api_key, forecast=_Forecast(None), poll_first=True,
        )  # fmt: skip

    async def _submit(
        self, request: GenerateRequest, *, api_key: SecretStr | None, budget: float
    ) -> GenerateResult | TaskCreated:
        """POST the request; retried only where the API provably created nothing (429, connection refused)."""
        deadline = time.monotonic() + min(self._retry.submit_budget, max(budget, 10.0))
        # An async submission answers at once; a hung one must not hold the call far past its budget.
        timeout = max(budget, 10.0) if request.celery else None
        attempt = 0
        while True:
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
            if attempt >= self._retry.submit_attempts or time.monotonic() + wait > deadline:
                raise last
            log.info("submission not accepted (%s); retry %d in %.1f s", type(last).__name__, attempt, wait)
            await anyio.sleep(wait)

    async def _wait(
        self,
        known: Generation,
        *,
        started: float,
        deadline: float,
        progress: _Progress,
        api_key: SecretStr | None,
        forecast: _Forecast,
        poll_first: bool,
    ) -> Generation:
        """Poll until done or ``deadline``; ``poll_first`` polls at once (a task this call did not submit)."""
        assert known.task_id is not None
        polls = 0
        failures = 0
        not_before = started
        fraction: float | None = None
        poll_error: str | None = None
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
            await anyio.sleep(delay)
            polls += 1
            try:
                # A hung API must not hold the call much past its budget.
                with anyio.fail_after(max(deadline - time.monotonic(), 0) + 2.0):
                    task = await self._client.get_task(known.task_id, api_key=api_key)
            except (*_TRANSIENT, TimeoutError) as exc:
                failures += 1
                retry_after = exc.retry_after if isinstance(exc, RateLimitError) else None
                not_before = time.monotonic() + self._retry.backoff(failures - 1, retry_after)
                poll_error = str(exc) if isinstance(exc, QolabaError) else "the poll timed out"
                await progress(f"{known.status} · {_since(started):.0f} s · poll failed, retrying", fraction)
                continue
            except QolabaError as exc:
                exc.task_id = known.task_id
                raise
            failures, poll_error = 0, None
            fraction = task.progress
            forecast.observe(fraction, time.monotonic())
            known = _merge(known, task)
            if task.done:
                return known.model_copy(update={"elapsed_seconds": _since(started), "polls": polls})
            await progress(f"{task.status} · {_since(started):.0f} s", fraction)
        return known.model_copy(update={"elapsed_seconds": _since(started), "polls": polls, "poll_error": poll_error})

    async def _with_heartbeat(
        self, work: Awaitable[GenerateResult | TaskCreated], progress: _Progress, started: float
    ) -> GenerateResult | TaskCreated:
        """Await one long request while telling the host, every second, that it is still running."""
        result: list[GenerateResult | TaskCreated] = []
        failure: list[QolabaError] = []

        async def beat() -> None:
            while True:
                await anyio.sleep(self._heartbeat)
                await progress(f"PROCESSING · {_since(started):.0f} s (synchronous request)")

        async with anyio.create_task_group() as group:
            group.start_soon(beat)
            try:
                result.append(await work)
            except QolabaError as exc:  # raised after the group, not wrapped in an ExceptionGroup
                failure.append(exc)
            finally:
                group.cancel_scope.cancel()
        if failure:
            raise failure[0]
        return result[0]


def _since(started: float) -> float:
    return round(time.monotonic() - started, 3)


def _from_result(result: GenerateResult, model: str, started: float) -> Generation:
    return Generation(
        task_id=result.task_id,
        status="SUCCESS",
        model=model,
        prompt=result.prompt,
        seed=result.seed,
        images=result.images,
        usage=result.usage,
        elapsed_seconds=_since(started),
    )


def _merge(known: Generation, task: Task) -> Generation:
    model = task.raw.get("model") if isinstance(task.raw.get("model"), str) else known.model
    return known.model_copy(
        update={
            "status": task.status,
            "model": model,
            "prompt": task.prompt or known.prompt,
            "seed": task.seed if task.seed is not None else known.seed,
            "images": task.images,
            "usage": task.usage,
            "error": task.error,
        }
    )
