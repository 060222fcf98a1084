"""QolabaClient against the sandbox over real loopback HTTP: both modes, every error class, no key leaks."""

from __future__ import annotations

import logging
import socket

import anyio
import pytest

from qolaba_mcp._errors import (
    APITimeoutError,
    BadRequestError,
    InvalidTaskIdError,
    MissingApiKeyError,
    NetworkError,
    RateLimitError,
    ResponseFormatError,
    ServerError,
    TaskNotFoundError,
)
from qolaba_mcp.api._client import QolabaClient
from qolaba_mcp.api._wire import GenerateRequest, GenerateResult, TaskCreated
from qolaba_mcp.sandbox import Fault, SandboxServer

pytestmark = pytest.mark.anyio

KEY = "qk_live_SECRET_0123456789abcdef"


def client_for(sandbox: SandboxServer, **kwargs: object) -> QolabaClient:
    return QolabaClient(base_url=sandbox.base_url, api_key=kwargs.pop("api_key", KEY), **kwargs)  # type: ignore[arg-type]


def cat(**fields: object) -> GenerateRequest:
    return GenerateRequest.model_validate(
        {"model": "vertex/nano-banana-flash", "prompt": "A cat on the Eiffel Tower", **fields}
    )


@pytest.mark.qolaba_sandbox(latency=0.05)
async def test_sync_generation_returns_images(qolaba_sandbox: SandboxServer) -> None:
    async with client_for(qolaba_sandbox) as client:
        result = await client.generate(cat(aspect_ratio="16:9", seed=5))
    assert isinstance(result, GenerateResult)
    assert result.seed == 5 and result.prompt == "A cat on the Eiffel Tower"
    assert [(i.width, i.height, i.content_type) for i in result.images] == [(1280, 720, "image/png")]
    assert result.usage is not None and result.usage.images_generated == 1
    assert qolaba_sandbox.stats()["sync_generations"] == 1


@pytest.mark.qolaba_sandbox(latency=0.3)
async def test_async_generation_polls_to_success(qolaba_sandbox: SandboxServer) -> None:
    seen = []
    async with client_for(qolaba_sandbox) as client:
        created = await client.generate(cat(celery=True, num_images=3))
        assert isinstance(created, TaskCreated) and created.status == "PENDING"
        while True:
            task = await client.get_task(created.task_id)
            seen.append(task.status)
            if task.done:
                break
            await anyio.sleep(0.05)
    assert seen[0] in ("PENDING", "PROCESSING") and seen[-1] == "SUCCESS"
    assert "PROCESSING" in seen
    assert len(task.images) == 3 and task.usage is not None and task.usage.images_generated == 3
    stats = qolaba_sandbox.stats()
    assert stats["submissions"] == 1 and stats["polls"] == len(seen)


@pytest.mark.parametrize("shape", ["output-object", "output-list", "output-urls", "top-level"])
async def test_every_sandbox_poll_shape_parses(shape: str) -> None:
    with SandboxServer() as sandbox:
        sandbox.configure(latency=0, poll_shape=shape)
        async with client_for(sandbox) as client:
            created = await client.generate(cat(celery=True, num_images=2))
            task = await client.get_task(created.task_id)
    assert task.status == "SUCCESS" and len(task.images) == 2
    assert all(image.url.endswith(".png") for image in task.images)


async def test_bad_request_carries_the_api_message(qolaba_sandbox: SandboxServer) -> None:
    async with client_for(qolaba_sandbox) as client:
        with pytest.raises(BadRequestError) as caught:
            await client.generate(cat(model="vertex/imagen-4", num_images=5))
    assert caught.value.status_code == 400
    assert "num_images" in str(caught.value) and "at most 4" in str(caught.value)


async def test_unknown_model_lists_known_models(qolaba_sandbox: SandboxServer) -> None:
    async with client_for(qolaba_sandbox) as client:
        with pytest.raises(BadRequestError, match="vertex/imagen-4-ultra"):
            await client.generate(cat(model="acme/nope"))


async def test_refused_key_is_an_authentication_error(qolaba_sandbox: SandboxServer) -> None:
    async with client_for(qolaba_sandbox, api_key="   ") as client:
        with pytest.raises(MissingApiKeyError, match="QOLABA_API_KEY"):
            await client.generate(cat())
    # The sandbox refuses a request with no key at all: send one by hand.
    async with client_for(qolaba_sandbox) as client:
        response = await client._http.post("/api/v1/images/generate", json={"model": "x"})
    assert response.status_code == 401


async def test_unknown_task_is_task_not_found(qolaba_sandbox: SandboxServer) -> None:
    async with client_for(qolaba_sandbox) as client:
        with pytest.raises(TaskNotFoundError):
            await client.get_task("task_missing")
        with pytest.raises(InvalidTaskIdError):
            await client.get_task("../../_sandbox/stats")  # refused before any request: it would change the path
    assert qolaba_sandbox.stats()["polls"] == 1  # only task_missing reached the API


async def test_rate_limit_carries_retry_after(qolaba_sandbox: SandboxServer) -> None:
    qolaba_sandbox.configure(faults=[Fault(kind="rate_limit", rate=1.0)], retry_after=7)
    async with client_for(qolaba_sandbox) as client:
        with pytest.raises(RateLimitError) as caught:
            await client.generate(cat())
    assert caught.value.retry_after == 7
    assert qolaba_sandbox.stats()["submissions"] == 0


async def test_server_error(qolaba_sandbox: SandboxServer) -> None:
    qolaba_sandbox.configure(faults=[Fault(kind="server_error", rate=1.0, on="poll")], latency=0)
    async with client_for(qolaba_sandbox) as client:
        created = await client.generate(cat(celery=True))
        with pytest.raises(ServerError) as caught:
            await client.get_task(created.task_id)
    assert caught.value.status_code == 503


async def test_malformed_json_is_a_format_error(qolaba_sandbox: SandboxServer) -> None:
    qolaba_sandbox.configure(faults=[Fault(kind="malformed", rate=1.0, on="poll")], latency=0)
    async with client_for(qolaba_sandbox) as client:
        created = await client.generate(cat(celery=True))
        with pytest.raises(ResponseFormatError, match="not valid JSON"):
            await client.get_task(created.task_id)


async def test_dropped_connection_is_a_network_error_after_sending(
    qolaba_sandbox: SandboxServer,
) -> None:
    qolaba_sandbox.configure(faults=[Fault(kind="lost_response", rate=1.0, on="submit")])
    async with client_for(qolaba_sandbox) as client:
        with pytest.raises(NetworkError) as caught:
            await client.generate(cat(celery=True))
    assert caught.value.request_sent is True
    assert qolaba_sandbox.stats()["submissions"] == 1  # the task exists though the answer was lost


async def test_refused_connection_was_never_sent() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: connections are refused
        async with QolabaClient(base_url=f"http://127.0.0.1:{port}", api_key=KEY) as client:
            with pytest.raises(NetworkError) as caught:
                await client.generate(cat())
    assert caught.value.request_sent is False


@pytest.mark.qolaba_sandbox(latency=2)
async def test_slow_answer_is_a_timeout(qolaba_sandbox: SandboxServer) -> None:
    async with client_for(qolaba_sandbox, sync_timeout=0.2) as client:
        with pytest.raises(APITimeoutError) as caught:
            await client.generate(cat())
    assert caught.value.request_sent is True


async def test_key_sent_both_ways_and_never_shown(
    qolaba_sandbox: SandboxServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    qolaba_sandbox.configure(latency=0)
    texts = []
    async with client_for(qolaba_sandbox) as client:
        texts.append(repr(client))
        await client.generate(cat())
        for bad in (cat(model="acme/nope"), cat(model="vertex/imagen-4", num_images=10)):
            try:
                await client.generate(bad)
            except BadRequestError as exc:
                texts += [str(exc), repr(exc), repr(exc.body)]
        try:
            await client.get_task("missing")
        except TaskNotFoundError as exc:
            texts += [str(exc), repr(exc)]
    texts += [record.getMessage() for record in caplog.records]
    assert any("POST /api/v1/images/generate" in text for text in texts)  # debug logging did run
    assert not [text for text in texts if KEY in text]
