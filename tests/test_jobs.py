"""The job lifecycle's policies, and its retry rules against the sandbox over loopback."""

from __future__ import annotations

import itertools
import random

import pytest

from qolaba_mcp._errors import NetworkError, RateLimitError
from qolaba_mcp.api._client import QolabaClient
from qolaba_mcp.api._wire import GenerateRequest
from qolaba_mcp.generations._pacing import Forecast, PollPolicy, Progress, RetryPolicy
from qolaba_mcp.generations._runner import Runner
from qolaba_mcp.sandbox import Fault, SandboxServer

pytestmark = pytest.mark.anyio


def test_poll_backoff_starts_quick_and_is_capped() -> None:
    policy = PollPolicy(min_interval=0.25, max_interval=2.0, growth=1.5)
    delays = [policy.delay(polls=n, remaining=None) for n in range(10)]
    assert delays[0] == 0.25 and delays[1] == 0.375
    assert delays == sorted(delays) and max(delays) == 2.0


@pytest.mark.parametrize(
    ("remaining", "expected"),
    [(None, 0.375), (1.0, 1.05), (0.0, 0.25), (0.01, 0.1), (9.0, 2.0), (1.75, 1.8)],
    ids=["no-forecast", "near", "says-done", "imminent", "far-capped", "later-than-backoff"],
)
def test_poll_aims_just_past_the_predicted_end(remaining: float | None, expected: float) -> None:
    policy = PollPolicy(min_interval=0.25, max_interval=2.0, growth=1.5)
    assert policy.delay(polls=1, remaining=remaining) == pytest.approx(expected)


def test_forecast_from_the_start_or_from_two_observations() -> None:
    from_start = Forecast(task_started=100.0)
    from_start.observe(0.25, at=101.0)  # a quarter done after 1 s: 3 s to go
    assert from_start.remaining(101.0) == pytest.approx(3.0) and from_start.remaining(102.5) == pytest.approx(1.5)
    unknown_start = Forecast(task_started=None)
    unknown_start.observe(0.40, at=10.0)
    assert unknown_start.remaining(10.0) is None  # one observation and no start: no pace yet
    unknown_start.observe(0.60, at=12.0)  # 20 % in 2 s: 4 s to go
    assert unknown_start.remaining(12.0) == pytest.approx(4.0)
    unknown_start.observe(1.0, at=13.0)
    assert unknown_start.remaining(13.0) == 0.0
    unknown_start.observe(None, at=14.0)
    assert unknown_start.remaining(14.0) is None


def test_retry_backoff_honours_retry_after_and_jitters() -> None:
    policy = RetryPolicy(base_backoff=0.5, max_backoff=8, rng=random.Random(1))
    waits = [policy.backoff(attempt) for attempt in range(8)]
    assert all(0.25 <= w <= 8 for w in waits) and len(set(waits)) == len(waits)
    assert policy.backoff(0, retry_after=30) == 30


async def test_progress_strictly_increases_whatever_it_is_fed() -> None:
    seen: list[tuple[float, float | None, str]] = []

    async def record(progress: float, total: float | None, message: str) -> None:
        seen.append((progress, total, message))

    progress = Progress(record)
    for fraction in (None, 0.4, 0.4, 0.2, None, 1.0, 1.0):
        await progress("PROCESSING", fraction)
    values = [value for value, _, _ in seen]
    assert all(b > a for a, b in itertools.pairwise(values)), values
    assert seen[1][1] == 100.0 and seen[0][1] is None


def request() -> GenerateRequest:
    return GenerateRequest(model="vertex/nano-banana-flash", prompt="cat", celery=True)


@pytest.mark.qolaba_sandbox(latency=0)
async def test_submission_retried_on_429_only_as_often_as_allowed(qolaba_sandbox: SandboxServer) -> None:
    qolaba_sandbox.configure(faults=[Fault(kind="rate_limit", rate=1, on="submit")], retry_after=0.05)
    async with QolabaClient(base_url=qolaba_sandbox.base_url, api_key="k") as client:
        jobs = Runner(client=client, retry=RetryPolicy(submit_attempts=4, base_backoff=0.01))
        with pytest.raises(RateLimitError):
            await jobs.generate(request(), wait_seconds=5)
    assert qolaba_sandbox.stats()["submit_requests"] == 4


@pytest.mark.qolaba_sandbox(latency=0)
@pytest.mark.parametrize(("kind", "created"), [("disconnect", 0), ("lost_response", 1)])
async def test_submission_never_retried_once_sent(qolaba_sandbox: SandboxServer, kind: str, created: int) -> None:
    qolaba_sandbox.configure(faults=[Fault(kind=kind, rate=1, on="submit")])  # type: ignore[arg-type]
    async with QolabaClient(base_url=qolaba_sandbox.base_url, api_key="k") as client:
        with pytest.raises(NetworkError) as caught:
            await Runner(client=client).generate(request(), wait_seconds=5)
    assert caught.value.request_sent
    stats = qolaba_sandbox.stats()
    assert stats["submit_requests"] == 1 and stats["submissions"] == created


@pytest.mark.qolaba_sandbox(latency=0.2)
async def test_garbled_submission_answer_is_followed_not_resubmitted(qolaba_sandbox: SandboxServer) -> None:
    qolaba_sandbox.configure(faults=[Fault(kind="malformed", rate=1, on="submit")])
    async with QolabaClient(base_url=qolaba_sandbox.base_url, api_key="k") as client:
        generation = await Runner(client=client).generate(request(), wait_seconds=10)
    assert generation.status == "SUCCESS" and generation.images
    stats = qolaba_sandbox.stats()
    assert stats["submit_requests"] == 1 and stats["submissions"] == 1


@pytest.mark.qolaba_sandbox(latency=0.3)
async def test_poll_failures_are_ridden_out(qolaba_sandbox: SandboxServer) -> None:
    qolaba_sandbox.configure(
        faults=[
            Fault(kind="server_error", rate=0.3, on="poll"),
            Fault(kind="malformed", rate=0.2, on="poll"),
            Fault(kind="disconnect", rate=0.2, on="poll"),
        ],
        random_seed=1,  # the first poll's die comes up 0.13: a server error, so the retry path surely runs
    )
    async with QolabaClient(base_url=qolaba_sandbox.base_url, api_key="k") as client:
        jobs = Runner(client=client, retry=RetryPolicy(base_backoff=0.05), poll=PollPolicy(min_interval=0.05))
        generation = await jobs.generate(request(), wait_seconds=20)
    assert generation.status == "SUCCESS" and generation.images
    assert qolaba_sandbox.stats()["faults_total"] > 0


@pytest.mark.qolaba_sandbox(latency=1.0)
async def test_a_stopping_runner_lets_a_synchronous_request_finish_within_its_grace(
    qolaba_sandbox: SandboxServer,
) -> None:
    """A server that stops while a synchronous request runs (a replica drained by SIGTERM) waits for it, within the
    grace, so its outcome is recorded and answerable elsewhere instead of cancelled mid-request."""
    settled: list[object] = []

    async def record(outcome: object) -> None:
        settled.append(outcome)

    sync = GenerateRequest(model="vertex/nano-banana-flash", prompt="cat", celery=False)
    async with (
        QolabaClient(base_url=qolaba_sandbox.base_url, api_key="k") as client,
        Runner(client=client, shutdown_grace=30) as runner,
    ):
        pending = await runner.generate(sync, wait_seconds=0, on_settled=record)
        assert pending.status == "PENDING" and pending.task_id is not None
    # the runner's context has ended: the request was waited for, not cancelled
    assert [getattr(outcome, "status", None) for outcome in settled] == ["SUCCESS"]
    assert qolaba_sandbox.stats()["submissions"] == 1
