"""The hardening issue against a misbehaving Qolaba API: each item's class of input, scripted byte for byte.

Unit-ish tests point QolabaClient/Runner at a HostileServer; end-to-end ones run the real server over stdio (or
HTTP) against it. Images are served by the same HostileServer, so they stay on the API's own (trusted) origin.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx2
import pytest
from mcp import Client, MCPError
from mcp.client.streamable_http import streamable_http_client
from mcp.types import CallToolResult, ResourceLink
from pydantic import SecretStr

from qolaba_mcp._errors import (
    APITimeoutError,
    InvalidTaskIdError,
    MissingApiKeyError,
    ResponseFormatError,
    ServerError,
)
from qolaba_mcp.api._client import MAX_RESPONSE_BYTES, QolabaClient
from qolaba_mcp.api._wire import MAX_IMAGES, GenerateRequest, GenerateResult, ImageOutput, Task, TaskCreated
from qolaba_mcp.generations._pacing import PollPolicy, RetryPolicy
from qolaba_mcp.generations._runner import Generation, Runner
from qolaba_mcp.sandbox import SandboxServer
from qolaba_mcp.sandbox._png import render_png
from qolaba_mcp.server._results import TEXT_BUDGET, generation_result

from .conftest import SERVER_KEY, HttpServer, connect, server_env
from .hostile import Handler, HostileServer, Request, json_reply, raw_reply, sequence, trickle_reply
from .results import data, text

pytestmark = pytest.mark.anyio

KEY = "qk_live_hostile_8d2f6b1e0c4a"
GEN = "/api/v1/images/generate"
CAT = {"model": "vertex/nano-banana-flash", "prompt": "a cat"}
PNG = render_png(width=64, height=48, key="hostile")


def task_path(task_id: str) -> str:
    return f"/api/v1/tasks/{task_id}"


def links(result: CallToolResult) -> list[ResourceLink]:
    return [block for block in result.content if isinstance(block, ResourceLink)]


def wire_size(result: CallToolResult) -> int:
    return len(result.model_dump_json(by_alias=True, exclude_none=True).encode())


def later(seconds: float, handler: Handler) -> Handler:
    """``handler``, after ``seconds`` of silence."""

    async def handle(request: Request, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(seconds)
        await handler(request, writer)

    return handle


def image_host(host: HostileServer, count: int = 1) -> list[str]:
    """``count`` PNGs served by the API's own host; their URLs."""
    for index in range(count):
        host.route("GET", f"/img/{index}.png", raw_reply(200, PNG, content_type="image/png"))
    return [host.url(f"/img/{index}.png") for index in range(count)]


def serve(host: HostileServer, **env: str | None) -> Any:
    return connect("memory", "auto", base_url=host.base_url, **{"QOLABA_SAVE": "off", "QOLABA_PREVIEW": "off", **env})


@asynccontextmanager
async def api(host: HostileServer, **kwargs: Any) -> AsyncIterator[QolabaClient]:
    async with QolabaClient(base_url=host.base_url, api_key=kwargs.pop("api_key", KEY), **kwargs) as client:
        yield client


def quick_jobs(client: QolabaClient) -> Runner:
    return Runner(
        client=client, poll=PollPolicy(min_interval=0.05, max_interval=0.2), retry=RetryPolicy(base_backoff=0.05)
    )


def async_request() -> GenerateRequest:
    return GenerateRequest(**CAT, celery=True)


# 1. A bad image never discards the others or the task.

BAD_URLS = [
    "http://x/a b.png",
    "http://x/a\x00b.png",
    "http://x/a\nb.png",
    "http://x:99999/a.png",
    "http://[::1/x.png",
    "ftp://x/a.png",
    "javascript:alert(1)",
    "",
    "http:///no-host.png",
]


@pytest.mark.parametrize("bad", BAD_URLS)
def test_an_unusable_url_costs_only_its_own_link(bad: str) -> None:
    good = "https://cdn.example/0.png"
    generation = Generation(
        task_id="t1",
        status="SUCCESS",
        images=[ImageOutput(url=good), ImageOutput(url=bad), ImageOutput(url=good)],
        elapsed_seconds=1,
    )
    result = generation_result(generation, None, wait_seconds=5, max_wait=50)
    assert not result.is_error
    assert [link.uri for link in links(result)] == [good, good]
    body = data(result)
    assert body["task_id"] == "t1" and [image["url"] for image in body["images"]] == [good, bad, good]
    assert any(note.startswith("image 2: no link") for note in body["notes"]), body["notes"]
    assert "2. (no usable URL)" in text(result)


async def test_bad_image_urls_end_to_end_keep_the_task_and_the_good_images() -> None:
    with HostileServer() as host:
        [good] = image_host(host)
        images = [{"url": url} for url in BAD_URLS] + [{"url": good, "width": 64, "height": 48}]
        body = {"task_id": "task_bad_urls", "status": "SUCCESS", "images": images}
        host.route("POST", GEN, json_reply(200, body))
        host.route("GET", task_path("task_bad_urls"), json_reply(200, body))
        # Previews on: delivery meets every bad URL too, and must not cost the result either.
        async with serve(host, QOLABA_PREVIEW="on") as client:
            generated = await client.call_tool("generate_image", {**CAT, "mode": "sync"})
            fetched = await client.call_tool("get_task", {"task_id": "task_bad_urls"})
    for result in (generated, fetched):
        assert not result.is_error, text(result)
        assert data(result)["task_id"] == "task_bad_urls"
        assert len(data(result)["images"]) == len(images)
        assert [link.uri for link in links(result)] == [good]
        noted = {note.split(":")[0] for note in data(result)["notes"] if "no link" in note}
        assert noted == {f"image {n}" for n in range(1, len(BAD_URLS) + 1)}, data(result)["notes"]
    assert host.count("POST", GEN) == 1


# 2. Paid results are parsed as tolerantly as polls.

IMG = "https://cdn.example/0.png"


@pytest.mark.parametrize(
    ("body", "check"),
    [
        ({"task_id": "t", "images": [IMG, IMG]}, lambda r: [i.url for i in r.images] == [IMG, IMG]),
        ({"task_id": 12345, "images": [IMG]}, lambda r: r.task_id == "12345"),
        ({"task_id": "t", "images": [IMG], "seed": 42.0}, lambda r: r.seed == 42 and not r.notes),
        ({"task_id": "t", "images": [IMG], "seed": 42.5}, lambda r: r.seed is None and "seed 42.5" in r.notes[0]),
        ({"task_id": "t", "images": [IMG], "seed": "7"}, lambda r: r.seed == 7),
        (
            {"task_id": "t", "images": [{"url": IMG, "width": "1024px", "height": "n/a"}]},
            lambda r: (r.images[0].width, r.images[0].height) == (1024, None) and "height 'n/a'" in r.notes[0],
        ),
        (
            {"task_id": "t", "images": [IMG], "usage": {"images_generated": "1", "cost_usd": "n/a", "cost_credits": 6}},
            lambda r: r.usage.images_generated == 1 and r.usage.cost_usd is None and r.usage.cost_credits == 6.0,
        ),
        ({"task_id": "t", "images": [IMG], "usage": "n/a"}, lambda r: r.usage is None and "usage" in r.notes[0]),
        ({"task_id": "t", "output": {"images": [IMG]}}, lambda r: len(r.images) == 1),
        ({"images": [IMG]}, lambda r: r.task_id is None and "no task_id" in r.notes[0]),
        ({"task_id": "t", "images": [IMG, 7, {"width": 3}]}, lambda r: len(r.images) == 1 and len(r.notes) == 2),
    ],
    ids=[
        "url-strings", "numeric-task-id", "whole-float-seed", "fractional-seed", "text-seed", "odd-sizes",
        "odd-usage", "usage-not-object", "under-output", "no-task-id", "junk-entries",
    ],
)  # fmt: skip
async def test_a_paid_sync_result_keeps_what_it_can(body: dict[str, Any], check: Callable[[Any], bool]) -> None:
    with HostileServer() as host:
        host.route("POST", GEN, json_reply(200, body))
        async with api(host) as client:
            result = await client.generate(GenerateRequest(**CAT))
    assert isinstance(result, GenerateResult)
    assert check(result), result


@pytest.mark.parametrize("task_id", [98765, "98765", " t-1 "])
async def test_a_created_task_id_of_any_type_is_followed(task_id: object) -> None:
    with HostileServer() as host:
        host.route("POST", GEN, json_reply(202, {"task_id": task_id, "status": "PENDING"}))
        async with api(host) as client:
            created = await client.generate(async_request())
    assert isinstance(created, TaskCreated) and created.task_id == str(task_id).strip()


async def test_odd_paid_result_end_to_end() -> None:
    with HostileServer() as host:
        [url] = image_host(host)
        body = {
            "task_id": 4242,
            "images": [url, {"url": url, "width": "64px", "height": 48.0}],
            "seed": 42.5,
            "usage": {"images_generated": "2", "cost_usd": "n/a", "cost_credits": "4"},
        }
        host.route("POST", GEN, json_reply(200, body))
        async with serve(host) as client:
            result = await client.call_tool("generate_image", {**CAT, "mode": "sync"})
    assert not result.is_error, text(result)
    out = data(result)
    assert out["status"] == "SUCCESS" and out["task_id"] == "4242" and out["seed"] is None
    assert [(i["width"], i["height"]) for i in out["images"]] == [(None, None), (64, 48)]
    assert out["usage"] == {"images_generated": 2, "cost_usd": None, "cost_credits": 4.0}
    assert any("seed 42.5" in note for note in out["notes"]) and any("cost_usd" in note for note in out["notes"])
    assert len(links(result)) == 2


# 4. Bounded bodies, nesting and image counts.


def endless_reply(served: list[int], total: int = 300 * 1024 * 1024) -> Handler:
    """A 200 that declares and starts sending ``total`` bytes of JSON whitespace; records how much got out."""

    async def handle(request: Request, writer: asyncio.StreamWriter) -> None:
        head = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {total}\r\n\r\n"
        writer.write(head.encode())
        sent = 0
        try:
            while sent < total:
                writer.write(b" " * 65536)
                await writer.drain()
                sent += 65536
        except ConnectionError:
            pass
        finally:
            served.append(sent)

    return handle


async def test_a_huge_poll_body_is_cut_off_at_the_cap() -> None:
    served: list[int] = []
    with HostileServer() as host:
        host.route("GET", task_path("t1"), endless_reply(served))
        async with api(host) as client:
            with pytest.raises(ResponseFormatError, match="over"):
                await client.get_task("t1")
        with anyio.fail_after(10):
            while not served:
                await anyio.sleep(0.05)
    assert served[0] < 8 * MAX_RESPONSE_BYTES, "the client read far past its cap"


NESTED = b"[" * 200_000 + b"]" * 200_000


@pytest.mark.parametrize(
    "body",
    [NESTED, b'{"task_id": "t1", "status": "RUNNING", "progress": ' + NESTED + b"}"],
    ids=["whole-body", "in-a-field"],
)
async def test_deep_nesting_is_a_format_error_and_a_transient_poll(body: bytes) -> None:
    done = {"task_id": "t1", "status": "SUCCESS", "images": [IMG]}
    with HostileServer() as host:
        host.route("POST", GEN, json_reply(202, {"task_id": "t1"}))
        host.route("GET", task_path("t1"), sequence(raw_reply(200, body), raw_reply(200, body), json_reply(200, done)))
        async with api(host) as client:
            with pytest.raises(ResponseFormatError) as caught:
                await client.get_task("t1")
            generation = await quick_jobs(client).generate(async_request(), wait_seconds=10)
    assert "JSON" in caught.value.message
    assert generation.status == "SUCCESS" and generation.task_id == "t1" and generation.polls == 2


async def test_deep_nesting_inside_a_failure_message_still_reads() -> None:
    deep: Any = "the model refused"
    for _ in range(400):
        deep = [deep]
    with HostileServer() as host:
        host.route("GET", task_path("t1"), json_reply(200, {"task_id": "t1", "status": "FAILED", "error": deep}))
        async with api(host) as client:
            task = await client.get_task("t1")
    assert task.status == "FAILED" and task.error


@pytest.mark.parametrize("count", [17, 500])
async def test_only_a_bounded_number_of_images_is_handled(count: int) -> None:
    urls = [f"https://cdn.example/{n}.png" for n in range(count)]
    with HostileServer() as host:
        host.route("GET", task_path("t1"), json_reply(200, {"task_id": "t1", "status": "SUCCESS", "images": urls}))
        async with api(host) as client:
            task = await client.get_task("t1")
    assert [image.url for image in task.images] == urls[:MAX_IMAGES]
    assert any(str(count) in note and str(count - MAX_IMAGES) in note for note in task.notes), task.notes


# 5. Every promise about time holds against slow peers.


async def test_trickling_poll_end_to_end_returns_near_the_wait_with_the_task_id() -> None:
    running = json.dumps({"task_id": "t_slow", "status": "RUNNING", "padding": "x" * 200}).encode()
    with HostileServer() as host:
        host.route("POST", GEN, json_reply(202, {"task_id": "t_slow", "status": "PENDING"}))
        host.route("GET", task_path("t_slow"), trickle_reply(200, running, every=1.0))
        async with serve(host) as client:
            started = time.monotonic()
            result = await client.call_tool("generate_image", {**CAT, "wait_seconds": 3})
            took = time.monotonic() - started
    assert took < 10, f"a trickling poll held the call {took:.1f} s past wait_seconds=3"
    assert not result.is_error, text(result)
    assert data(result)["task_id"] == "t_slow" and data(result)["status"] == "PENDING"
    assert "get_task" in data(result)["next_step"] and data(result)["poll_error"]
    assert host.count("POST", GEN) == 1


async def test_trickling_submission_end_to_end_is_bounded_and_says_the_state_is_unknown() -> None:
    created = json.dumps({"task_id": "t_drip", "status": "PENDING", "padding": "x" * 200}).encode()
    with HostileServer() as host:
        host.route("POST", GEN, trickle_reply(202, created, every=1.0))
        async with serve(host) as client:
            started = time.monotonic()
            result = await client.call_tool("generate_image", {**CAT, "wait_seconds": 3})
            took = time.monotonic() - started
    # An async submission gets max(wait_seconds, 10 s) as a whole, however slowly its answer arrives.
    assert took < 10 + 5, f"a trickling submission held the call {took:.1f} s"
    assert result.is_error and "state is unknown" in text(result)
    assert host.count("POST", GEN) == 1


async def test_trickling_submission_is_bounded_as_a_whole_and_never_resent() -> None:
    with HostileServer() as host:
        host.route("POST", GEN, trickle_reply(202, json.dumps({"task_id": "t1"}).encode() * 50, every=0.5))
        async with api(host, request_timeout=2) as client:
            started = time.monotonic()
            with pytest.raises(APITimeoutError) as caught:
                await quick_jobs(client).generate(async_request(), wait_seconds=1)
            took = time.monotonic() - started
    assert took < 8, f"a trickling submission held the call {took:.1f} s"
    assert caught.value.request_sent and host.count("POST", GEN) == 1


async def test_slow_sync_request_returns_a_local_id_and_is_not_abandoned() -> None:
    with HostileServer() as host:
        [url] = image_host(host)
        host.route("POST", GEN, later(3, json_reply(200, {"task_id": "t_sync", "images": [url], "seed": 9})))
        async with serve(host) as client:
            started = time.monotonic()
            first = await client.call_tool("generate_image", {**CAT, "mode": "sync", "wait_seconds": 1})
            took = time.monotonic() - started
            local = data(first)["task_id"]
            done = await client.call_tool("get_task", {"task_id": local, "wait_seconds": 15})
            again = await client.call_tool("get_task", {"task_id": local})
    assert took < 1 + 4, f"sync mode held the call {took:.1f} s past wait_seconds=1"
    assert data(first)["status"] == "PENDING" and local.startswith("sync-")
    assert f'task_id="{local}"' in data(first)["next_step"] and "not abandoned" in data(first)["next_step"]
    for result in (done, again):
        assert data(result)["status"] == "SUCCESS" and data(result)["task_id"] == "t_sync", text(result)
        assert data(result)["seed"] == 9 and [link.uri for link in links(result)] == [url]
    assert host.count("POST", GEN) == 1, "the synchronous request was sent twice"


async def test_a_sync_request_that_fails_after_the_wait_reports_its_error_once_asked() -> None:
    with HostileServer() as host:
        host.route("POST", GEN, later(2, json_reply(400, {"message": "prompt refused by the safety filter"})))
        async with serve(host) as client:
            first = await client.call_tool("generate_image", {**CAT, "mode": "sync", "wait_seconds": 0.5})
            later_result = await client.call_tool("get_task", {"task_id": data(first)["task_id"], "wait_seconds": 10})
            unknown = await client.call_tool("get_task", {"task_id": "sync-0123456789abcdef"})
    assert data(first)["status"] == "PENDING"
    assert later_result.is_error and "safety filter" in text(later_result)
    assert data(first)["task_id"] in text(later_result)
    assert unknown.is_error and "sync-0123456789abcdef" in text(unknown)
    assert host.count("POST", GEN) == 1


async def test_a_quick_sync_request_still_answers_in_the_call() -> None:
    with HostileServer() as host:
        [url] = image_host(host)
        host.route("POST", GEN, json_reply(200, {"task_id": "t_fast", "images": [url]}))
        async with api(host) as client, quick_jobs(client) as jobs:
            generation = await jobs.generate(GenerateRequest(**CAT), wait_seconds=5)
            with pytest.raises(RuntimeError):  # a sync request needs the background group it may outlive a call in
                await quick_jobs(client).generate(GenerateRequest(**CAT), wait_seconds=5)
    assert generation.status == "SUCCESS" and generation.task_id == "t_fast" and generation.polls == 0


async def test_concurrent_slow_sync_calls_submit_once_each_and_all_deliver(sandbox: SandboxServer) -> None:
    sandbox.configure(latency=2.0)
    async with connect("memory", "auto", base_url=sandbox.base_url, QOLABA_SAVE="off", QOLABA_PREVIEW="off") as client:
        firsts: list[CallToolResult] = []

        async def one(n: int) -> None:
            firsts.append(
                await client.call_tool(
                    "generate_image", {**CAT, "prompt": f"cat {n}", "mode": "sync", "wait_seconds": 0.3}
                )
            )

        async with anyio.create_task_group() as group:
            for n in range(8):
                group.start_soon(one, n)
        ids = [data(result)["task_id"] for result in firsts]
        finals = [await client.call_tool("get_task", {"task_id": local, "wait_seconds": 20}) for local in ids]
    assert all(local.startswith("sync-") for local in ids) and len(set(ids)) == 8
    assert all(data(result)["status"] == "SUCCESS" and data(result)["images"] for result in finals)
    assert len({data(result)["task_id"] for result in finals}) == 8
    stats = sandbox.stats()
    assert stats["submit_requests"] == 8 and stats["sync_generations"] == 8 and stats["polls"] == 0


# 7. Secrets and sizes in everything the API says.

OTHER_KEY = "qk_live_per_request_key_77aa"


@pytest.mark.parametrize(
    "echo",
    [
        lambda key: key,
        lambda key: key.replace("_", "\\u005f"),  # the key spelt with JSON escapes
        lambda key: f"Bearer {key}",
    ],
    ids=["plain", "escaped", "bearer"],
)
@pytest.mark.parametrize("which", ["configured", "per-request"])
async def test_api_text_never_carries_the_key(echo: Callable[[str], str], which: str) -> None:
    key = KEY if which == "configured" else OTHER_KEY
    message = f"invalid header {echo(key)} " + "x" * 3000
    failed = ('{"task_id": "t1", "status": "FAILED", "error": "' + message + '"}').encode()
    error = ('{"error": "Bad Gateway", "message": "' + message + '"}').encode()
    with HostileServer() as host:
        host.route("GET", task_path("t1"), raw_reply(200, failed))
        host.route("GET", task_path("t2"), raw_reply(502, error))
        per_request = SecretStr(OTHER_KEY) if which == "per-request" else None
        async with api(host) as client:
            task = await client.get_task("t1", api_key=per_request)
            with pytest.raises(ServerError) as caught:
                await client.get_task("t2", api_key=per_request)
    for said in (task.error or "", caught.value.message, repr(caught.value.body)):
        assert key not in said and "[redacted]" in said
    assert task.error is not None and len(task.error) <= 500 and len(caught.value.message) < 700


async def test_failed_and_refused_texts_end_to_end_are_short_and_keyless() -> None:
    secret_text = f"token {SERVER_KEY} rejected; " + "é" * 20_000
    with HostileServer() as host:
        host.route("POST", GEN, json_reply(202, {"task_id": "t_fail"}))
        host.route(
            "GET", task_path("t_fail"), json_reply(200, {"task_id": "t_fail", "status": "FAILED", "error": secret_text})
        )
        async with serve(host) as client:
            failed = await client.call_tool("generate_image", {**CAT, "wait_seconds": 10})
        host.route("POST", GEN, json_reply(400, {"message": secret_text}))
        async with serve(host) as client:
            refused = await client.call_tool("generate_image", CAT)
    assert failed.is_error and data(failed)["status"] == "FAILED" and "t_fail" in text(failed)
    assert len(text(failed).encode()) <= TEXT_BUDGET and len(data(failed)["error"]) <= 500
    assert refused.is_error and len(text(refused).encode()) < 1200
    for result in (failed, refused):
        assert SERVER_KEY not in result.model_dump_json()


@pytest.mark.parametrize(("count", "url_length"), [(300, 200), (16, 4096), (300, 4096)])
async def test_results_stay_under_a_mebibyte_whatever_the_task_lists(count: int, url_length: int) -> None:
    with HostileServer() as host:
        urls = [host.url(f"/img/{n}-" + "a" * url_length)[:url_length] for n in range(count)]
        body = {
            "task_id": "t_many",
            "status": "SUCCESS",
            "images": [{"url": u, "width": 64, "height": 48} for u in urls],
        }
        host.route("GET", task_path("t_many"), json_reply(200, body))
        async with serve(host, QOLABA_PREVIEW="on") as client:
            result = await client.call_tool("get_task", {"task_id": "t_many"})
    assert not result.is_error, text(result)
    assert wire_size(result) < 1024 * 1024
    assert len(data(result)["images"]) == min(count, MAX_IMAGES) and len(text(result).encode()) <= TEXT_BUDGET
    if count > MAX_IMAGES:
        assert any(str(count) in note for note in data(result)["notes"])


# 8. Transient answers are transient.


async def test_a_new_task_unknown_at_first_is_polled_again() -> None:
    with HostileServer() as host:
        [url] = image_host(host)
        not_yet = json_reply(404, {"error": "Not Found", "message": "no such task"})
        host.route("POST", GEN, json_reply(202, {"task_id": "t_new"}))
        host.route(
            "GET",
            task_path("t_new"),
            sequence(not_yet, not_yet, json_reply(200, {"task_id": "t_new", "status": "SUCCESS", "images": [url]})),
        )
        async with serve(host) as client:
            result = await client.call_tool("generate_image", {**CAT, "wait_seconds": 15})
            unknown = await client.call_tool("get_task", {"task_id": "t_other"})  # not made by this call: 404 stands
    assert data(result)["status"] == "SUCCESS" and data(result)["task_id"] == "t_new", text(result)
    assert host.count("GET", task_path("t_new")) == 3
    assert unknown.is_error and "knows no task" in text(unknown)


@pytest.mark.parametrize("status", [401, 403])
async def test_a_key_refused_after_submission_names_the_created_task(status: int) -> None:
    with HostileServer() as host:
        host.route("POST", GEN, json_reply(202, {"task_id": "t_keyed"}))
        host.route("GET", task_path("t_keyed"), json_reply(status, {"error": "Unauthorized"}))
        async with serve(host) as client:
            result = await client.call_tool("generate_image", {**CAT, "wait_seconds": 5})
    assert result.is_error and str(status) in text(result)
    assert 'task_id="t_keyed"' in text(result) and "get_task" in text(result)


async def test_odd_progress_values_never_break_progress() -> None:
    values: list[object] = [math.nan, -5, 250, math.inf, 40, -math.inf, 1e308, "half", 10**400, 0.5, 30]
    replies = [json_reply(200, {"task_id": "t1", "status": "RUNNING", "progress": value}) for value in values[:-1]]
    replies.append(raw_reply(200, b'{"task_id": "t1", "status": "SUCCESS", "progress": NaN, "images": []}'))
    seen: list[tuple[float, float | None]] = []

    async def record(progress: float, total: float | None, message: str) -> None:
        seen.append((progress, total))

    with HostileServer() as host:
        host.route("POST", GEN, json_reply(202, {"task_id": "t1"}))
        host.route("GET", task_path("t1"), sequence(*replies))
        async with api(host) as client:
            jobs = Runner(client=client, poll=PollPolicy(min_interval=0.01, max_interval=0.05))
            generation = await jobs.generate(async_request(), wait_seconds=20, on_progress=record)
    assert generation.status == "SUCCESS" and generation.polls == len(values)
    assert all(math.isfinite(value) for value, _ in seen), seen
    assert all(b > a for (a, _), (b, _) in itertools.pairwise(seen)), seen


@pytest.mark.parametrize(
    ("value", "expected"),
    [(math.nan, None), (math.inf, None), (-math.inf, None), (-5, 0.0), (250, 1.0), (1e308, 1.0), (10**400, 1.0)],
)
def test_progress_values_are_clamped_or_ignored(value: object, expected: float | None) -> None:
    assert Task.from_api({"task_id": "t", "status": "RUNNING", "progress": value}).progress == expected


async def test_a_retry_after_beyond_the_wait_is_reported_as_such() -> None:
    with HostileServer() as host:
        host.route("POST", GEN, json_reply(202, {"task_id": "t_busy"}))
        host.route(
            "GET", task_path("t_busy"), json_reply(429, {"error": "Too Many Requests"}, headers={"Retry-After": "3600"})
        )
        async with serve(host) as client:
            started = time.monotonic()
            result = await client.call_tool("generate_image", {**CAT, "wait_seconds": 5})
            took = time.monotonic() - started
    assert not result.is_error, text(result)
    out = data(result)
    assert out["task_id"] == "t_busy" and out["retry_after"] == 3600
    assert "asked to wait 3600 s" in out["next_step"] and "Not finished after waiting" not in out["next_step"]
    assert took < 5 + 5


# 9. Task ids and resource indexes that would change what is requested.

BAD_IDS = [".", "..", "...", "a/b", "%2e%2e", "a?b", "a#b", "a b", " t1", "t1\n", "٣", "x" * 201, ""]


@pytest.fixture(scope="module")
def idle_host() -> Iterator[HostileServer]:
    with HostileServer() as host:
        yield host


@pytest.mark.parametrize("task_id", BAD_IDS)
async def test_the_client_refuses_unsafe_task_ids_before_any_request(idle_host: HostileServer, task_id: str) -> None:
    async with api(idle_host) as client:
        with pytest.raises(InvalidTaskIdError):
            await client.get_task(task_id)
    assert idle_host.requests == []


async def test_the_tool_and_the_resources_refuse_unsafe_ids_and_indexes() -> None:
    with HostileServer() as host:
        [url] = image_host(host)
        host.route("GET", task_path("t1"), json_reply(200, {"task_id": "t1", "status": "SUCCESS", "images": [url]}))
        failures: dict[str, str] = {}
        async with serve(host) as client:
            for task_id in BAD_IDS:
                result = await client.call_tool("get_task", {"task_id": task_id})
                assert result.is_error and "task_id" in text(result), (task_id, text(result))
            for index in ["٣", "²", "-1", "1.5", "0x1", ""]:
                with pytest.raises(MCPError) as caught:
                    await client.read_resource(f"qolaba://images/t1/{index}")
                failures[index] = str(caught.value)
            polls_before_range = host.count("GET", task_path("t1"))
            for index in ["1", "99999", "1" * 5000]:  # digits: the task is asked how many it has
                with pytest.raises(MCPError) as caught:
                    await client.read_resource(f"qolaba://images/t1/{index}")
                failures[index] = str(caught.value)
    assert polls_before_range == 0, "a malformed index reached the API"
    assert all("not an image index" in failures[i] for i in ["٣", "²", "-1", "1.5", "0x1", ""]), failures
    assert all("images 0 to 0" in failures[i] for i in ["1", "99999", "1" * 5000]), failures
    assert not [r for r in host.requests if not r.path.startswith(("/api/v1/tasks/t1", "/img/"))], host.requests


# 13. Booleans are not numbers; a key must fit in a header.


@pytest.mark.parametrize("field", ["num_images", "seed", "num_inference_steps", "guidance_scale", "temperature"])
async def test_booleans_are_refused_for_numeric_fields(field: str) -> None:
    with HostileServer() as host:
        async with serve(host) as client:
            result = await client.call_tool("generate_image", {**CAT, field: True})
            waited = await client.call_tool("get_task", {"task_id": "t1", "wait_seconds": True})
    assert result.is_error and field in text(result) and "boolean" in text(result)
    assert waited.is_error and "wait_seconds" in text(waited)
    assert host.requests == []


@pytest.mark.parametrize("key", ["ключ_секрет_123456", "qk_live_\u00e9t\u00e9_123456", "qk_live_\x01_123456"])
async def test_a_key_no_header_can_carry_is_named_not_echoed(key: str) -> None:
    with HostileServer() as host:
        async with serve(host, QOLABA_API_KEY=key) as client:
            result = await client.call_tool("generate_image", CAT)
        async with api(host) as client:
            with pytest.raises(MissingApiKeyError) as caught:
                await client.generate(GenerateRequest(**CAT), api_key=SecretStr(key))
    assert result.is_error and "QOLABA_API_KEY" in text(result) and key not in text(result)
    assert "for this request" in caught.value.message and key not in caught.value.message
    assert host.requests == []


async def test_a_header_key_no_header_can_carry_is_named_not_echoed() -> None:
    with HostileServer() as host:
        server = HttpServer(server_env(host.base_url), "--allow-client-keys")
        try:
            key = "ключ_секрет_123456"
            http = httpx2.AsyncClient(headers={"X-Qolaba-Api-Key": key.encode()}, timeout=30)
            async with http, Client(streamable_http_client(server.url, http_client=http)) as client:
                result = await client.call_tool("generate_image", CAT)
        finally:
            _, err = server.stop()
    assert result.is_error and "X-Qolaba-Api-Key" in text(result)
    assert key not in text(result) and key.encode().decode("latin-1") not in text(result)
    assert key not in err and host.requests == []
