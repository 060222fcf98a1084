"""What the sandbox remembers: its tasks and their inputs, its counters, the fault dice and the render cache."""

from __future__ import annotations

import random
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import Any, Literal

from ..api._catalog import Catalog, ModelInfo
from ..api._wire import GenerateRequest, TaskStatus
from ._config import FaultKind, Nsfw, PollShape, SandboxConfig


@dataclass(frozen=True)
class Inputs:
    """A request's input images as image files (at most 16 + 14 + 1 of them, each at most MAX_INPUT_BYTES)."""

    sources: tuple[bytes, ...] = ()
    references: tuple[bytes, ...] = ()
    mask: bytes | None = None


@dataclass
class Task:
    task_id: str
    request: GenerateRequest
    model: ModelInfo
    seed: int
    width: int
    height: int
    created: float  # wall clock, seconds
    latency: float
    fails: bool
    shape: PollShape
    nsfw: Nsfw
    inputs: Inputs
    plain: bool = False  # drawn as a cheap gradient (pictures="plain", no input images)

    def status(self, now: float) -> TaskStatus:
        elapsed = now - self.created
        if elapsed >= self.latency:
            return "FAILED" if self.fails else "SUCCESS"
        return "PENDING" if elapsed < self.latency * 0.2 else "PROCESSING"


@dataclass
class SandboxState:
    """Everything the sandbox remembers: its config, its tasks and its counters."""

    config: SandboxConfig = field(default_factory=SandboxConfig)
    catalog: Catalog = field(default_factory=Catalog.builtin)
    tasks: dict[str, Task] = field(default_factory=dict)
    expired: set[str] = field(default_factory=set)  # ids of tasks forgotten after result_ttl
    counters: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    polls_by_task: Counter[str] = field(default_factory=Counter)
    rng: random.Random = field(default_factory=random.Random)

    def reset(self) -> None:
        self.tasks.clear()
        self.expired.clear()
        self.counters.clear()
        self.faults.clear()
        self.polls_by_task.clear()
        self.rng.seed(self.config.random_seed)

    def roll(self, kind: FaultKind, endpoint: Literal["submit", "poll"]) -> bool:
        """Whether to inject ``kind`` now; each configured fault rolls its own die."""
        for fault in self.config.faults:
            if fault.kind == kind and fault.on in (endpoint, "both") and self.rng.random() < fault.rate:
                self.faults[f"{kind}:{endpoint}"] += 1
                return True
        return False

    def expire(self, now: float) -> None:
        """Forget the finished tasks older than ``result_ttl``, remembering only their ids."""
        ttl = self.config.result_ttl
        if ttl is None:
            return
        for task_id, task in list(self.tasks.items()):
            if now > task.created + task.latency + ttl:
                del self.tasks[task_id]
                self.expired.add(task_id)

    def find(self, task_id: str, now: float) -> Task | str:
        """The task, or why there is none: its id is unknown, or it has expired."""
        self.expire(now)
        task = self.tasks.get(task_id)
        if task is not None:
            return task
        return f"Task {task_id} has expired" if task_id in self.expired else f"Unknown task: {task_id}"

    def stats(self) -> dict[str, Any]:
        return {
            **{name: self.counters[name] for name in _COUNTERS},
            "faults": dict(self.faults),
            "faults_total": sum(self.faults.values()),
            "tasks": len(self.tasks),
            "polls_by_task": dict(self.polls_by_task),
        }


_COUNTERS = (
    "submit_requests",  # every POST to the generate endpoint
    "submissions",  # generations accepted (each one a charge on the real API)
    "sync_generations",
    "async_tasks",
    "polls",
    "model_lists",  # every GET of the model list
    "image_downloads",
    "rejected",  # 400s
    "unauthorized",  # 401s
)


class RenderCache:
    """The last few files drawn, so that downloading an image again does not draw it again."""

    def __init__(self, *, entries: int = 16, max_bytes: int = 128 * 1024 * 1024) -> None:
        self._files: OrderedDict[tuple[str, int, str], bytes] = OrderedDict()
        self._entries = entries
        self._max_bytes = max_bytes

    def get(self, key: tuple[str, int, str]) -> bytes | None:
        data = self._files.get(key)
        if data is not None:
            self._files.move_to_end(key)
        return data

    def put(self, key: tuple[str, int, str], data: bytes) -> None:
        self._files[key] = data
        self._files.move_to_end(key)
        while len(self._files) > self._entries or (
            len(self._files) > 1 and sum(map(len, self._files.values())) > self._max_bytes
        ):
            self._files.popitem(last=False)

    def clear(self) -> None:
        self._files.clear()


def image_count(task: Task) -> int:
    """How many images the task generated (and is charged for)."""
    return task.request.num_images or 1


def published(task: Task) -> int:
    """How many of its images the task shows: none when the safety filter removed them all."""
    return 0 if task.nsfw == "all" else image_count(task)


def nsfw_flags(task: Task) -> list[bool]:
    """Whether the provider's safety filter flagged each image generated."""
    return [task.nsfw == "all" or (task.nsfw == "some" and index == 0) for index in range(image_count(task))]
