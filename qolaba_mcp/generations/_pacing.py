"""The pace of a job: when to poll, when to retry, and its progress as the caller is told it."""

from __future__ import annotations

import math
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

ProgressFn = Callable[[float, float | None, str], Awaitable[None]]
"""Receives (progress, total or None, message); progress strictly increases within one call."""


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


class Forecast:
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
    submit_seconds: float = 60.0
    base_backoff: float = 0.5
    max_backoff: float = 8.0
    rng: random.Random = field(default_factory=random.Random, compare=False)

    def backoff(self, attempt: int, retry_after: float | None = None) -> float:
        """Exponential backoff with full jitter, never shorter than the API's retry-after."""
        ceiling = min(self.max_backoff, self.base_backoff * 2**attempt)
        wait = self.rng.uniform(ceiling / 2, ceiling)
        return max(wait, retry_after or 0.0)


class Progress:
    """Turns poll observations into strictly increasing progress notifications."""

    def __init__(self, report: ProgressFn | None) -> None:
        self._report = report
        self._last = 0.0
        self._count = 0

    async def __call__(self, message: str, fraction: float | None = None) -> None:
        if self._report is None:
            return
        if fraction is not None and not math.isfinite(fraction):
            fraction = None
        elif fraction is not None:
            fraction = min(max(fraction, 0.0), 1.0)
        self._count += 1
        value, total = (round(fraction * 100, 2), 100.0) if fraction is not None else (float(self._count), None)
        value = max(value, round(self._last + 0.01, 2))
        self._last = value
        await self._report(value, total, message)
