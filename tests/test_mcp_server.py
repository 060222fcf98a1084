"""qolaba-mcp end to end against the sandbox: tool semantics in this process (the SDK's in-memory transport), and
the suite's one real-transport matrix (a stdio subprocess and HTTP, in both protocol eras)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp.types import ResourceLink

from qolaba_mcp.sandbox import Fault, SandboxServer

from .conftest import HttpServer, connect, polls_settle, server_env
from .results import data, text

pytestmark = pytest.mark.anyio

CAT = {"model": "vertex/nano-banana-flash", "prompt": "A cat on the Eiffel Tower", "aspect_ratio": "16:9"}
ERAS = ["auto", "legacy"]  # auto settles on 2026-07-28 with this server; legacy is the 2025-11-25 handshake
# The real-transport matrix: progress, bounded waits and cancellation cross each real transport in each era.
COMBOS = [("stdio", "auto"), ("stdio", "legacy"), ("http", "auto"), ("http", "legacy")]


class Progress:
    def __init__(self) -> None:
        self.events: list[tuple[float, float | None, str | None, float]] = []

    async def __call__(self, progress: float, total: float | None, message: str | None) -> None:
        self.events.append((progress, total, message, time.monotonic()))

    @property
    def values(self) -> list[float]:
        return [event[0] for event in self.events]


@pytest.fixture(params=COMBOS, ids=[f"{t}-{m}" for t, m in COMBOS])
def combo(request: pytest.FixtureRequest) -> tuple[str, str]:
    return request.param  # type: ignore[no-any-return]


def opener(combo: tuple[str, str], sandbox: SandboxServer, request: pytest.FixtureRequest) -> Any:
    transport, mode = combo
    http_url = request.getfixturevalue("http_server").url if transport == "http" else None
    return lambda **env: connect(transport, mode, base_url=sandbox.base_url, http_url=http_url, **env)


async def test_async_generation_streams_progress(
    combo: tuple[str, str], sandbox: SandboxServer, request: pytest.FixtureRequest
) -> None:
    # 2.5 s: the first poll (0.25 s) sees PENDING, the forecast sends the next to ~2.25 s (PROCESSING), then done
    sandbox.configure(latency=2.5)
    progress = Progress()
    async with opener(combo, sandbox, request)() as client:
        result = await client.call_tool("generate_image", {**CAT, "num_images": 2}, progress_callback=progress)
        returned = time.monotonic()
        await anyio.sleep(0.6)  # time for any stray notification to arrive
    assert not result.is_error, text(result)
    body = data(result)
    assert body["status"] == "SUCCESS" and len(body["images"]) == 2
    assert body["task_id"].startswith("task_") and body["model"] == CAT["model"]
    assert body["usage"]["images_generated"] == 2 and body["seed"] is not None
    links = [block for block in result.content if isinstance(block, ResourceLink)]
    assert [link.uri for link in links] == [image["url"] for image in body["images"]]
    assert all(link.mime_type == "image/png" for link in links)
    assert len(progress.values) >= 3
    assert all(b > a for a, b in zip(progress.values, progress.values[1:], strict=False)), progress.values
    assert any("PROCESSING" in (event[2] or "") for event in progress.events)
    assert all(event[3] <= returned for event in progress.events), "progress arrived after the result"
    assert sandbox.stats()["submissions"] == 1


async def test_bounded_wait_then_get_task_completes(
    combo: tuple[str, str], sandbox: SandboxServer, request: pytest.FixtureRequest
) -> None:
    sandbox.configure(latency=3)
    async with opener(combo, sandbox, request)() as client:
        started = time.monotonic()
        first = await client.call_tool("generate_image", {**CAT, "wait_seconds": 0.6})
        assert time.monotonic() - started < 2.5
        assert not first.is_error, text(first)
        body = data(first)
        assert body["status"] in ("PENDING", "PROCESSING") and body["images"] == []
        task_id = body["task_id"]
        assert f'task_id="{task_id}"' in body["next_step"] and "get_task" in body["next_step"]
        assert task_id in text(first)
        progress = Progress()
        done = await client.call_tool("get_task", {"task_id": task_id, "wait_seconds": 10}, progress_callback=progress)
    assert data(done)["status"] == "SUCCESS" and len(data(done)["images"]) == 1
    assert progress.values and all(b > a for a, b in zip(progress.values, progress.values[1:], strict=False))
    assert sandbox.stats()["submissions"] == 1


async def test_cancelled_call_stops_polling(
    combo: tuple[str, str], sandbox: SandboxServer, request: pytest.FixtureRequest
) -> None:
    sandbox.configure(latency=60)
    async with opener(combo, sandbox, request)() as client:
        with anyio.move_on_after(1.5):
            await client.call_tool("generate_image", {**CAT, "wait_seconds": 25})
        # A live loop polls at least every 0.5 s (QOLABA_POLL_MAX_INTERVAL): polling has stopped once the count holds
        # still for three of those; it must, well before the 60 s the generation would take.
        before = sandbox.stats()["polls"]
        assert before >= 2, "the call never polled"
        settled = await anyio.to_thread.run_sync(polls_settle, sandbox)
        assert settled is not None, f"polling went on after cancellation: {before} -> {sandbox.stats()['polls']}"
        # the session is still usable
        assert not (await client.call_tool("list_models", {})).is_error


async def test_sync_generation(sandbox: SandboxServer) -> None:
    sandbox.configure(latency=0.2)
    async with connect("memory", "auto", base_url=sandbox.base_url) as client:
        result = await client.call_tool("generate_image", {**CAT, "mode": "sync"})
    body = data(result)
    assert body["status"] == "SUCCESS" and body["images"][0]["width"] == 1280 and body["polls"] == 0
    stats = sandbox.stats()
    assert stats["sync_generations"] == 1 and stats["async_tasks"] == 0 and stats["polls"] == 0


async def test_wait_zero_returns_at_once(sandbox: SandboxServer) -> None:
    sandbox.configure(latency=5)
    async with connect("memory", "legacy", base_url=sandbox.base_url) as client:
        result = await client.call_tool("generate_image", {**CAT, "wait_seconds": 0})
    body = data(result)
    assert body["status"] == "PENDING" and body["polls"] == 0 and body["elapsed_seconds"] < 1
    assert sandbox.stats()["polls"] == 0


async def test_failed_task_is_an_error_with_the_task_id(sandbox: SandboxServer) -> None:
    sandbox.configure(latency=0.3, faults=[Fault(kind="failed_task", rate=1)])
    async with connect("memory", "auto", base_url=sandbox.base_url) as client:
        result = await client.call_tool("generate_image", CAT)
    assert result.is_error
    body = data(result)
    assert body["status"] == "FAILED" and body["task_id"] in text(result)
    assert "The model returned no image" in text(result)


@pytest.mark.parametrize(
    ("arguments", "fragments"),
    [
        ({**CAT, "model": "vertex/imagen-4", "num_images": 5}, ["num_images", "at most 4"]),
        ({**CAT, "quality": "4K"}, ["quality", "'4K'", "1K", "Nothing was submitted"]),
        ({**CAT, "model": "acme/unknown"}, ["Unknown model", "Known models:", "vertex/imagen-4-ultra"]),
        ({**CAT, "quality": "4K", "mode": "sync"}, ["quality", "'4K'", "1K", "Nothing was submitted"]),
    ],
    ids=["too-many-images", "bad-quality", "unknown-model", "sync"],
)
@pytest.mark.parametrize("transport", ["memory", "http"])
async def test_api_rejections_explain_the_fix(
    sandbox: SandboxServer,
    arguments: dict[str, Any],
    fragments: list[str],
    transport: str,
    request: pytest.FixtureRequest,
) -> None:
    async with opener((transport, "auto"), sandbox, request)() as client:
        result = await client.call_tool("generate_image", arguments)
    assert result.is_error
    for fragment in fragments:
        assert fragment in text(result)
    assert sandbox.stats()["submissions"] == 0


@pytest.mark.parametrize(
    ("arguments", "field"),
    [
        ({**CAT, "num_images": 11}, "num_images"),
        ({**CAT, "prompt": "x" * 4001}, "prompt"),
        ({**CAT, "wait_seconds": 31}, "wait_seconds"),
        ({**CAT, "mode": "later"}, "mode"),
        ({"prompt": "no model"}, "model"),
        ({**CAT, "aspectRatio": "16:9"}, "aspectRatio"),
    ],
)
async def test_schema_violations_never_reach_the_api(
    sandbox: SandboxServer, arguments: dict[str, Any], field: str
) -> None:
    async with connect("memory", "auto", base_url=sandbox.base_url) as client:
        result = await client.call_tool("generate_image", arguments)
    assert result.is_error and field in text(result)
    assert sandbox.stats()["submit_requests"] == 0


async def test_refused_key(sandbox: SandboxServer) -> None:
    sandbox.configure(api_keys=["the-right-key"])
    async with connect("memory", "auto", base_url=sandbox.base_url) as client:
        result = await client.call_tool("generate_image", CAT)
    assert result.is_error and "401" in text(result) and "QOLABA_API_KEY" in text(result)


async def test_missing_key_names_the_variable(sandbox: SandboxServer) -> None:
    async with connect("memory", "auto", base_url=sandbox.base_url, QOLABA_API_KEY=None) as client:
        models = await client.call_tool("list_models", {})  # needs no key
        result = await client.call_tool("generate_image", CAT)
    assert not models.is_error
    assert result.is_error and "QOLABA_API_KEY" in text(result)
    assert sandbox.stats()["submit_requests"] == 0


async def test_rate_limit_retries_then_says_when(sandbox: SandboxServer) -> None:
    sandbox.configure(faults=[Fault(kind="rate_limit", rate=1, on="submit")], retry_after=0.2)
    async with connect("memory", "auto", base_url=sandbox.base_url) as client:
        result = await client.call_tool("generate_image", CAT)
    assert result.is_error and "Retry after 0.2 s" in text(result)
    stats = sandbox.stats()
    assert stats["submit_requests"] == 3 and stats["submissions"] == 0


async def test_rate_limited_polls_are_retried(sandbox: SandboxServer) -> None:
    sandbox.configure(latency=0.5, faults=[Fault(kind="rate_limit", rate=0.3, on="poll")], retry_after=0.1)
    async with connect("memory", "auto", base_url=sandbox.base_url) as client:
        result = await client.call_tool("generate_image", {**CAT, "wait_seconds": 20})
    assert data(result)["status"] == "SUCCESS", text(result)
    assert sandbox.stats()["submissions"] == 1


async def test_unknown_task(sandbox: SandboxServer) -> None:
    async with connect("memory", "auto", base_url=sandbox.base_url) as client:
        result = await client.call_tool("get_task", {"task_id": "task_nope"})
        bad = await client.call_tool("get_task", {"task_id": "../etc/passwd"})
    assert result.is_error and "task_nope" in text(result)
    assert bad.is_error and "task_id" in text(bad)


async def test_tools_list_schemas(sandbox: SandboxServer) -> None:
    async with connect("memory", "auto", base_url=sandbox.base_url) as client:
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
    assert sorted(tools) == ["generate_image", "get_spend", "get_task", "list_generations", "list_models"]
    schema = tools["generate_image"].input_schema
    props = schema["properties"]
    assert schema["required"] == ["model"]
    expected_fields = {
        "model", "prompt", "image_urls", "reference_images", "mask_url", "aspect_ratio", "quality",
        "num_images", "seed", "num_inference_steps", "guidance_scale", "temperature", "negative_prompt",
        "max_cost_usd", "mode", "wait_seconds", "save",
    }  # fmt: skip
    assert set(props) == expected_fields  # flat: the fields themselves, no wrapper object

    def bound(name: str, key: str) -> Any:
        prop = props[name]
        return next(p[key] for p in [prop, *prop.get("anyOf", [])] if key in p)

    assert (bound("num_images", "minimum"), bound("num_images", "maximum")) == (1, 10)
    assert bound("prompt", "maxLength") == 4000 and bound("negative_prompt", "maxLength") == 2000
    assert (bound("num_inference_steps", "minimum"), bound("num_inference_steps", "maximum")) == (1, 150)
    assert bound("guidance_scale", "maximum") == 30 and bound("temperature", "maximum") == 2
    assert bound("reference_images", "maxItems") == 14
    assert bound("mode", "enum") == ["async", "sync"] and "default async" in props["mode"]["description"]
    # QOLABA_MAX_WAIT_SECONDS=30 caps wait_seconds, and the default follows it
    assert props["wait_seconds"]["maximum"] == 30 and "default 30" in props["wait_seconds"]["description"]
    assert props["prompt"]["description"]
    assert "default 0" in tools["get_task"].input_schema["properties"]["wait_seconds"]["description"]
    capability = tools["list_models"].input_schema["properties"]["capability"]
    assert "inpainting" in json.dumps(capability) and "background-removal" in json.dumps(capability)
    for tool in tools.values():
        assert tool.output_schema is not None and tool.description
    assert tools["list_models"].annotations.read_only_hint is True  # type: ignore[union-attr]
    assert tools["get_task"].annotations.read_only_hint is True  # type: ignore[union-attr]
    assert tools["generate_image"].annotations.read_only_hint is False  # type: ignore[union-attr]


async def test_list_models_filters_and_user_file(sandbox: SandboxServer, tmp_path: Path) -> None:
    models_file = tmp_path / "models.json"
    models_file.write_text(json.dumps([{"id": "acme/brand-new", "capabilities": ["inpainting"]}]))
    async with connect("memory", "auto", base_url=sandbox.base_url, QOLABA_MODELS_FILE=str(models_file)) as client:
        inpainting = data(await client.call_tool("list_models", {"capability": "inpainting"}))
        everything = data(await client.call_tool("list_models", {}))
    assert [m["id"] for m in inpainting["models"]] == ["fal/flux-inpainting", "acme/brand-new"]
    assert len(everything["models"]) == 10 and everything["warnings"] == []
    assert all(
        {"max_images", "aspect_ratios", "qualities", "parameters", "documented"} <= set(m) for m in everything["models"]
    )


async def test_bad_models_file_is_a_warning_not_a_crash(sandbox: SandboxServer, tmp_path: Path) -> None:
    models_file = tmp_path / "models.json"
    models_file.write_text("{broken")
    async with connect("memory", "auto", base_url=sandbox.base_url, QOLABA_MODELS_FILE=str(models_file)) as client:
        result = await client.call_tool("list_models", {})
    assert len(data(result)["models"]) == 9
    assert "QOLABA_MODELS_FILE" in data(result)["warnings"][0] and "Warning" in text(result)


async def test_http_server_logs_stay_off_stdout(sandbox: SandboxServer) -> None:
    server = HttpServer(server_env(sandbox.base_url, QOLABA_API_KEY=None), "--log-level", "DEBUG")
    try:
        async with connect("http", "legacy", base_url=sandbox.base_url, http_url=server.url) as client:
            assert not (await client.call_tool("list_models", {})).is_error
    finally:
        out, err = server.stop()
    assert out == ""
    assert "DEBUG" in err
