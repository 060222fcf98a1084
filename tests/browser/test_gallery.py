"""The gallery MCP App in headless Chromium, mounted by a host built on the Apps SDK's AppBridge, against the real
qolaba-mcp (stdio, SDK Client) and the sandbox over loopback.

Each test plays a host's part: it finds the app through the tool's ``_meta.ui.resourceUri``, reads it with
``resources/read``, mounts it, sends the tool input, calls the tool for real, sends the result, and reads the DOM.
What the app asks of the host (tools/call, ui/open-link) goes through the bridge and is answered for real.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio
import pytest
from mcp import Client
from mcp.types import TextResourceContents, Tool
from playwright.async_api import Browser, Frame, expect

from qolaba_mcp.sandbox import Fault, SandboxConfig, SandboxServer

from .conftest import qolaba
from .host import APP_MIME_TYPE, APP_URI, REPO, AppHost, client_call_tool, tool_ui_uri, wire

pytestmark = pytest.mark.anyio

FLASH = "vertex/nano-banana-flash"
PROMPT = "A lighthouse on a cliff at dusk, painted in gouache"
ARGUMENTS: dict[str, Any] = {"model": FLASH, "prompt": PROMPT, "num_images": 3}
SCREENSHOTS = os.environ.get("QOLABA_SCREENSHOTS") == "1"  # writes docs/gallery-light.png and gallery-dark.png


@dataclass
class Gallery:
    client: Client
    host: AppHost
    app: Frame
    mounted: dict[str, Any]

    async def show(self, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
        """A host's turn: the input to the app, the call to the server, the result to the app; the result."""
        await self.host.tool_input(arguments)
        result = wire(await self.client.call_tool(tool, arguments))
        await self.host.tool_result(result)
        return result

    async def generated(self) -> dict[str, Any]:
        """generate_image shown, its thumbnails painted; its structured result."""
        data: dict[str, Any] = (await self.show("generate_image", ARGUMENTS))["structuredContent"]
        await painted(self.app, len(data["images"]))
        return data


async def read_app(client: Client, tool: Tool) -> tuple[str, dict[str, Any]]:
    """The app's HTML and resource _meta, found as a host finds them: from the tool's declaration."""
    assert tool_ui_uri(tool) == APP_URI
    (contents,) = (await client.read_resource(APP_URI)).contents
    assert isinstance(contents, TextResourceContents)
    assert contents.mime_type == APP_MIME_TYPE
    return contents.text, dict(contents.meta or {})


@asynccontextmanager
async def gallery(
    browser: Browser, host_url: str, sandbox: SandboxServer, tool_name: str = "generate_image", **env: str | None
) -> AsyncIterator[Gallery]:
    """The app mounted for a call of ``tool_name``, its tool calls answered by a real qolaba-mcp."""
    async with qolaba(sandbox.base_url, **env) as client:
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
        html, meta = await read_app(client, tools[tool_name])
        async with AppHost.open(browser, host_url, client_call_tool(client)) as host:
            mounted = await host.mount(html, meta=meta, tool=tools[tool_name])
            yield Gallery(client, host, await host.app(), mounted)
            # Nothing went wrong on the way: no uncaught error, no refused load (a CSP violation is logged so).
            assert host.errors == []


async def painted(app: Frame, count: int) -> None:
    """``count`` cards, each thumbnail decoded and drawn."""
    await expect(app.locator(".card img.thumb")).to_have_count(count)
    await app.wait_for_function(
        "(n) => [...document.querySelectorAll('.card img.thumb')]"
        ".filter((img) => img.complete && img.naturalWidth > 0).length === n",
        arg=count,
    )


async def submitted(sandbox: SandboxServer, count: int) -> None:
    """Wait until the sandbox has had ``count`` generate requests in all."""
    with anyio.fail_after(15):
        while sandbox.sandbox.state.stats()["submit_requests"] < count:
            await anyio.sleep(0.05)


async def screenshot(g: Gallery, theme: str) -> None:
    if SCREENSHOTS:
        await g.host.page.wait_for_timeout(300)  # the last size-changed report, after the thumbnails' layout
        await g.host.page.locator("iframe#app").screenshot(path=REPO / "docs" / f"gallery-{theme}.png")


async def test_a_generation_from_tool_input_to_painted_images(
    browser: Browser, host_url: str, sandbox: SandboxServer
) -> None:
    # No saved files: their paths (a pytest folder here) would be the screenshots' longest lines.
    async with gallery(browser, host_url, sandbox, QOLABA_SAVE="off") as g:
        assert g.mounted["app"]["name"]  # the ui/initialize handshake finished
        await g.host.tool_input(ARGUMENTS)
        await expect(g.app.locator("#prompt")).to_have_text(ARGUMENTS["prompt"])
        await expect(g.app.locator("#gallery")).to_have_attribute("data-state", "running")
        await expect(g.app.locator("#status")).not_to_be_empty()

        result = wire(await g.client.call_tool("generate_image", ARGUMENTS))
        data = result["structuredContent"]
        assert len(data["images"]) == ARGUMENTS["num_images"]
        await g.host.tool_result(result)
        await expect(g.app.locator("#gallery")).to_have_attribute("data-state", "done")
        await painted(g.app, len(data["images"]))

        sources = await g.app.eval_on_selector_all(".card img.thumb", "(imgs) => imgs.map((img) => img.src)")
        assert all(src.startswith("data:image/") for src in sources), [src[:40] for src in sources]
        fetched = await g.host.tool_calls("gallery_image")
        assert sorted(call["index"] for call in fetched) == list(range(ARGUMENTS["num_images"]))
        assert {call["task_id"] for call in fetched} == {data["task_id"]}
        for index, image in enumerate(data["images"]):
            card = g.app.locator(".card").nth(index)
            meta = card.locator(".meta")
            size, cost = f"{image['width']}x{image['height']}", f"${data['cost_usd']:.2f}"
            for shown in (FLASH, f"seed {data['seed']}", size, cost):
                await expect(meta).to_contain_text(shown)
            for action in ("variation", "edit", "open"):
                await expect(card.locator(f'button[data-action="{action}"]')).to_be_visible()
        await screenshot(g, "light")

        await g.host.set_theme("dark")
        await expect(g.app.locator("html")).to_have_attribute("data-theme", "dark")
        await screenshot(g, "dark")


async def test_variation_makes_one_new_generation_with_another_seed(
    browser: Browser, host_url: str, sandbox: SandboxServer
) -> None:
    async with gallery(browser, host_url, sandbox) as g:
        first = await g.generated()
        before = sandbox.sandbox.state.stats()["submit_requests"]
        await g.app.locator('.card button[data-action="variation"]').first.click()
        await submitted(sandbox, before + 1)

        (call,) = await g.host.tool_calls("generate_image")
        assert (call["model"], call["prompt"], call["num_images"]) == (FLASH, ARGUMENTS["prompt"], 3)
        (task,) = [task for task in sandbox.sandbox.state.tasks.values() if task.task_id != first["task_id"]]
        assert task.seed != first["seed"]
        await expect(g.app.locator(".card .meta").first).to_contain_text(f"seed {task.seed}")
        await painted(g.app, 3)
        assert sandbox.sandbox.state.stats()["submit_requests"] == before + 1


async def test_view_shows_the_image_larger_and_open_asks_the_host(
    browser: Browser, host_url: str, sandbox: SandboxServer
) -> None:
    async with gallery(browser, host_url, sandbox) as g:
        data = await g.generated()
        thumb = g.app.locator(".card img.thumb").nth(1)
        await thumb.click()
        await expect(g.app.locator("#lightbox")).to_be_visible()
        await expect(g.app.locator("#lightbox img")).to_have_attribute("src", await thumb.get_attribute("src") or "")
        await g.app.locator("#lightbox").press("Escape")
        await expect(g.app.locator("#lightbox")).to_be_hidden()

        await g.app.locator('.card button[data-action="open"]').nth(1).click()
        with anyio.fail_after(10):
            while not (opened := [e for e in await g.host.log() if e["method"] == "ui/open-link"]):
                await anyio.sleep(0.05)
        assert [entry["params"]["url"] for entry in opened] == [data["images"][1]["url"]]


async def test_edit_generates_from_the_image_with_an_editing_model(
    browser: Browser, host_url: str, sandbox: SandboxServer
) -> None:
    async with gallery(browser, host_url, sandbox) as g:
        first = await g.generated()
        card = g.app.locator(".card").first
        await card.locator('button[data-action="edit"]').click()
        editor = card.get_by_role("group")
        await editor.get_by_role("textbox").fill("Add falling snow")
        submit = editor.get_by_role("button", name="Edit image", exact=True)
        await expect(submit).to_be_enabled()  # once the editing models are listed
        before = sandbox.sandbox.state.stats()["submit_requests"]
        await submit.click()
        await submitted(sandbox, before + 1)

        (call,) = await g.host.tool_calls("generate_image")
        assert call["prompt"] == "Add falling snow"
        assert call["image_urls"] == [f"qolaba://images/{first['task_id']}/0"]
        (listed,) = await g.host.tool_calls("list_models")
        assert listed == {"capability": "image-editing"}
        await expect(g.app.locator("#gallery")).to_have_attribute("data-state", "done")
        await painted(g.app, 1)


async def test_history_with_older_generations_behind_more(
    browser: Browser, host_url: str, sandbox: SandboxServer
) -> None:
    async with gallery(browser, host_url, sandbox, tool_name="list_generations") as g:
        for n in range(3):
            await g.client.call_tool("generate_image", {"model": FLASH, "prompt": f"history {n}"})
        await g.show("list_generations", {"limit": 2})
        await expect(g.app.locator("#gallery")).to_have_attribute("data-state", "history")
        rows = g.app.locator(".history-row")
        await expect(rows).to_have_count(2)
        await expect(rows.first).to_contain_text("history 2")  # newest first
        more = g.app.locator('button[data-action="more"]')
        await expect(more).to_be_visible()

        await more.click()
        await expect(rows).to_have_count(3)
        await expect(rows.last).to_contain_text("history 0")
        await expect(more).to_be_hidden()
        (call,) = await g.host.tool_calls("list_generations")
        assert call["limit"] == 2 and call["cursor"]


@pytest.mark.parametrize(
    ("config", "says"),
    [
        (SandboxConfig(latency=0.3, nsfw="all"), "safety filter"),
        (SandboxConfig(latency=0.3, faults=[Fault(kind="failed_task", rate=1)]), "returned no image"),
    ],
    ids=["safety-filtered", "failed"],
)
async def test_a_failed_generation_is_shown_as_an_error(
    browser: Browser, host_url: str, sandbox: SandboxServer, config: SandboxConfig, says: str
) -> None:
    sandbox.sandbox.state.config = config
    async with gallery(browser, host_url, sandbox) as g:
        result = await g.show("generate_image", ARGUMENTS)
        assert result["isError"] and result["structuredContent"]["status"] == "FAILED"
        await expect(g.app.locator("#gallery")).to_have_attribute("data-state", "failed")
        await expect(g.app.locator("#error")).to_be_visible()
        await expect(g.app.locator("#error")).to_contain_text(says)
        await expect(g.app.locator(".card")).to_have_count(0)
