"""The gallery MCP App in headless Chromium, mounted by a host built on the Apps SDK's AppBridge, against the real
qolaba-mcp (stdio, SDK Client) and the sandbox over loopback.

Each test plays a host's part: it finds the app through the tool's ``_meta.ui.resourceUri``, reads it with
``resources/read``, mounts it, sends the tool input, calls the tool for real, sends the result, and reads the DOM.
What the app asks of the host (tools/call, ui/open-link, ui/download-file, ui/message, ...) goes through the bridge;
tools/call is answered for real. Hosts differ in what they offer: a test leaves out capabilities, toolInfo, display
modes, or narrows the frame, as such a host would.
"""

from __future__ import annotations

import os
import statistics
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
from .host import APP_MIME_TYPE, APP_URI, HOST_CAPABILITIES, REPO, AppHost, client_call_tool, tool_ui_uri, wire

pytestmark = pytest.mark.anyio

FLASH = "vertex/nano-banana-flash"
PROMPT = "A lighthouse on a cliff at dusk, painted in gouache"
ARGUMENTS: dict[str, Any] = {"model": FLASH, "prompt": PROMPT, "num_images": 3}
SCREENSHOTS = os.environ.get("QOLABA_SCREENSHOTS") == "1"  # writes docs/gallery-*.png
APP_BYTES = 48 * 1024
NO_SERVER_TOOLS = {key: value for key, value in HOST_CAPABILITIES.items() if key != "serverTools"}
ASK_FIRST = ("variation", "more-like", "submit-edit")


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

    async def generated(self, arguments: dict[str, Any] = ARGUMENTS) -> dict[str, Any]:
        """generate_image shown, its thumbnails painted; its structured result."""
        data: dict[str, Any] = (await self.show("generate_image", arguments))["structuredContent"]
        await painted(self.app, len(data["images"]))
        return data

    async def no_serious_violations(self) -> None:
        assert await self.host.axe() == []


async def read_app(client: Client, tool: Tool) -> tuple[str, dict[str, Any]]:
    """The app's HTML and resource _meta, found as a host finds them: from the tool's declaration."""
    assert tool_ui_uri(tool) == APP_URI
    (contents,) = (await client.read_resource(APP_URI)).contents
    assert isinstance(contents, TextResourceContents)
    assert contents.mime_type == APP_MIME_TYPE
    return contents.text, dict(contents.meta or {})


@asynccontextmanager
async def gallery(
    browser: Browser,
    host_url: str,
    sandbox: SandboxServer,
    tool_name: str | None = "generate_image",
    *,
    capabilities: dict[str, Any] | None = None,
    context: dict[str, Any] | None = None,
    **env: str | None,
) -> AsyncIterator[Gallery]:
    """The app mounted for a call of ``tool_name`` (None: a host that sends no toolInfo), its tool calls answered
    by a real qolaba-mcp."""
    async with qolaba(sandbox.base_url, **env) as client:
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
        html, meta = await read_app(client, tools[tool_name or "generate_image"])
        async with AppHost.open(browser, host_url, client_call_tool(client)) as host:
            tool = tools[tool_name] if tool_name else None
            mounted = await host.mount(html, meta=meta, tool=tool, capabilities=capabilities, context=context)
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


async def requested(host: AppHost, method: str, count: int = 1) -> list[dict[str, Any]]:
    with anyio.fail_after(10):
        while len(found := await host.requests(method)) < count:
            await anyio.sleep(0.05)
    return found


async def screenshot(g: Gallery, name: str) -> None:
    if SCREENSHOTS:
        await g.host.page.wait_for_timeout(300)  # the last size-changed report, after the thumbnails' layout
        await g.host.page.locator("iframe#app").screenshot(path=REPO / "docs" / f"gallery-{name}.png")


async def price_of(client: Client, model: str, count: int) -> float:
    """What list_models says ``count`` images of ``model`` at its default quality cost."""
    models = (await client.call_tool("list_models", {})).structured_content or {}
    (info,) = [entry for entry in models["models"] if entry["id"] == model]
    return round(info["usd_per_image"][info["default_quality"]] * count, 4)


def money(amount: float) -> str:
    """As the app writes a price: cents, or up to four places for fractions of a cent."""
    return f"${amount:.2f}" if round(amount, 2) == amount else f"${amount:.4f}".rstrip("0")


def test_the_app_stays_small() -> None:
    assert (REPO / "qolaba_mcp" / "gallery" / "gallery.html").stat().st_size <= APP_BYTES


async def test_a_generation_paints_the_previews_it_carries(
    browser: Browser, host_url: str, sandbox: SandboxServer
) -> None:
    # No saved files: their names would be the screenshots' longest lines.
    async with gallery(browser, host_url, sandbox, QOLABA_SAVE="off") as g:
        assert g.mounted["app"]["name"]  # the ui/initialize handshake finished
        assert g.mounted["capabilities"]["availableDisplayModes"] == ["inline", "fullscreen"]
        await g.host.tool_input(ARGUMENTS)
        await expect(g.app.locator("#prompt")).to_have_text(ARGUMENTS["prompt"])
        await expect(g.app.locator("#gallery")).to_have_attribute("data-state", "running")
        await expect(g.app.locator("#status")).not_to_be_empty()

        result = wire(await g.client.call_tool("generate_image", ARGUMENTS))
        data = result["structuredContent"]
        previews = [block["data"] for block in result["content"] if block["type"] == "image"]
        assert len(previews) == len(data["images"]) == ARGUMENTS["num_images"]
        await g.host.tool_result(result)
        await expect(g.app.locator("#gallery")).to_have_attribute("data-state", "done")
        await painted(g.app, len(data["images"]))

        sources = await g.app.eval_on_selector_all(".card img.thumb", "(imgs) => imgs.map((img) => img.src)")
        assert [src.split(",", 1)[1] for src in sources] == previews  # the result's own previews, in order
        assert await g.host.tool_calls("gallery_image") == []  # nothing fetched again
        await expect(g.app.locator("#status")).to_contain_text(f"${data['cost_usd']:.2f}")  # the total, once
        per_image = f"${data['cost_usd'] / len(data['images']):.2f}/image"
        for index, image in enumerate(data["images"]):
            card = g.app.locator(".card").nth(index)
            await expect(card.locator("img.thumb")).to_have_attribute("alt", f"Image {index + 1} of 3: {PROMPT}")
            meta = card.locator(".meta")
            for shown in (FLASH, f"seed {data['seed']}", f"{image['width']}×{image['height']}", per_image):
                await expect(meta).to_contain_text(shown)
            for action in ("variation", "edit", "use", "download"):
                await expect(card.locator(f'button[data-action="{action}"]')).to_be_visible()
            await expect(card.locator('button[data-action="variation"]')).to_contain_text("$")
        await g.no_serious_violations()
        await screenshot(g, "light")

        await g.host.set_theme("dark")
        await expect(g.app.locator("html")).to_have_attribute("data-theme", "dark")
        await g.no_serious_violations()
        await screenshot(g, "dark")


async def test_a_host_without_server_tools_shows_previews_or_links_and_no_actions_it_cannot_do(
    browser: Browser, host_url: str, sandbox: SandboxServer
) -> None:
    # A host that answers tools/call with "method not found", and opens no links either.
    bare = {key: value for key, value in NO_SERVER_TOOLS.items() if key != "openLinks"}
    async with gallery(browser, host_url, sandbox, capabilities=bare, QOLABA_SAVE="off") as g:
        data = await g.generated()
        cards = g.app.locator(".card")
        for action in ("variation", "edit", "open"):
            await expect(cards.locator(f'button[data-action="{action}"]')).to_have_count(0)
        await expect(g.app.locator('button[data-action="more-like"]')).to_be_hidden()
        await expect(cards.locator('button[data-action="download"]')).to_have_count(len(data["images"]))
        await expect(g.app.locator(".note")).to_have_count(0)

    async with gallery(
        browser, host_url, sandbox, capabilities=NO_SERVER_TOOLS, QOLABA_PREVIEW="off", QOLABA_SAVE="off"
    ) as g:
        data = (await g.show("generate_image", ARGUMENTS))["structuredContent"]
        missing = g.app.locator(".card .nopic")
        await expect(missing).to_have_count(len(data["images"]))
        await expect(missing.first).to_contain_text("does not let the gallery ask the server")
        await expect(g.app.locator(".card img")).to_have_count(0)
        await expect(g.app.locator("text=Method not found")).to_have_count(0)
        link = missing.nth(1).get_by_role("link")
        await expect(link).to_have_attribute("href", data["images"][1]["url"])
        await link.click()
        (opened,) = await requested(g.host, "ui/open-link")
        assert opened["url"] == data["images"][1]["url"]
        assert await g.host.requests("tools/call") == []  # nothing asked of tools the host does not offer
        await g.no_serious_violations()
        await screenshot(g, "no-server-tools")


async def test_without_previews_a_host_with_server_tools_fetches_each_picture(
    browser: Browser, host_url: str, sandbox: SandboxServer
) -> None:
    async with gallery(browser, host_url, sandbox, QOLABA_PREVIEW="off") as g:
        data = await g.generated()
        fetched = await g.host.tool_calls("gallery_image")
        assert sorted(call["index"] for call in fetched) == list(range(len(data["images"])))
        assert {call["task_id"] for call in fetched} == {data["task_id"]}


async def test_variation_of_one_image_asks_with_its_price_and_caps_the_call(
    browser: Browser, host_url: str, sandbox: SandboxServer
) -> None:
    async with gallery(browser, host_url, sandbox) as g:
        first = await g.generated()
        price = await price_of(g.client, FLASH, 1)
        variation = g.app.locator('.card button[data-action="variation"]').nth(1)
        await expect(variation).to_have_text(f"Variation · {money(price)}")
        before = sandbox.sandbox.state.stats()["submit_requests"]
        await variation.click()
        confirm = g.app.locator("#confirm")
        await expect(confirm).to_be_visible()
        await expect(confirm).to_contain_text(f"Make 1 variation of image 2 with {FLASH} — about {money(price)}?")
        await expect(g.app.locator("#confirm-yes")).to_be_focused()
        await g.no_serious_violations()

        await g.app.locator("#confirm-no").click()  # asked, not spent
        await expect(confirm).to_be_hidden()
        await expect(variation).to_be_focused()
        assert await g.host.tool_calls("generate_image") == []

        await variation.press("Enter")
        await g.app.locator("#confirm-yes").press("Enter")
        await submitted(sandbox, before + 1)
        (call,) = await g.host.tool_calls("generate_image")
        assert call["model"] == FLASH and call["prompt"] == PROMPT and call["num_images"] == 1
        assert call["image_urls"] == [f"qolaba://images/{first['task_id']}/1"]
        assert call["max_cost_usd"] == price
        assert call["seed"] != first["seed"]
        assert await g.host.tool_calls("list_models") == [{}]  # asked once, for every price
        await painted(g.app, 1)
        (told,) = await requested(g.host, "ui/update-model-context")
        assert "not to be repeated" in told["content"][0]["text"]


async def test_more_like_these_asks_for_the_whole_set(browser: Browser, host_url: str, sandbox: SandboxServer) -> None:
    async with gallery(browser, host_url, sandbox) as g:
        first = await g.generated()
        price = await price_of(g.client, FLASH, 3)
        more = g.app.locator('button[data-action="more-like"]')
        await expect(more).to_have_text(f"More like these · {money(price)}")
        await more.click()
        await expect(g.app.locator("#confirm")).to_contain_text(f"Make 3 more like these — about {money(price)}?")
        await g.app.locator("#confirm-yes").click()
        await painted(g.app, 3)
        (call,) = await g.host.tool_calls("generate_image")
        assert (call["model"], call["prompt"], call["num_images"], call["max_cost_usd"]) == (FLASH, PROMPT, 3, price)
        assert call["seed"] != first["seed"]


async def test_edit_asks_with_the_price_of_the_chosen_model(
    browser: Browser, host_url: str, sandbox: SandboxServer
) -> None:
    async with gallery(browser, host_url, sandbox) as g:
        first = await g.generated()
        card = g.app.locator(".card").first
        await card.locator('button[data-action="edit"]').click()
        editor = card.get_by_role("group")
        await editor.get_by_role("textbox").fill("Add falling snow")
        submit = editor.locator('button[data-action="submit-edit"]')
        await expect(submit).to_be_enabled()  # once the models are listed
        model = await editor.get_by_role("combobox").input_value()
        price = await price_of(g.client, model, 1)
        await expect(submit).to_have_text(f"Edit image · {money(price)}")
        await g.no_serious_violations()
        before = sandbox.sandbox.state.stats()["submit_requests"]
        await submit.click()
        await g.app.locator("#confirm-yes").click()
        await submitted(sandbox, before + 1)

        (call,) = await g.host.tool_calls("generate_image")
        assert call["prompt"] == "Add falling snow" and call["model"] == model and call["max_cost_usd"] == price
        assert call["image_urls"] == [f"qolaba://images/{first['task_id']}/0"]
        await expect(g.app.locator("#gallery")).to_have_attribute("data-state", "done")
        await painted(g.app, 1)


async def test_use_this_one_and_download_go_to_the_host(
    browser: Browser, host_url: str, sandbox: SandboxServer
) -> None:
    async with gallery(browser, host_url, sandbox) as g:
        data = await g.generated()
        card = g.app.locator(".card").nth(2)
        await card.locator('button[data-action="use"]').click()
        (message,) = await requested(g.host, "ui/message")
        assert message["role"] == "user"
        assert f"qolaba://images/{data['task_id']}/2" in message["content"][0]["text"]
        await expect(g.app.locator("#status")).to_contain_text("Sent: image 3")

        await card.locator('button[data-action="download"]').click()
        (download,) = await requested(g.host, "ui/download-file")
        (link,) = download["contents"]
        assert link["type"] == "resource_link" and link["uri"] == data["images"][2]["url"]
        assert "/" not in link["name"]

    # Without ui/message the choice goes into the model's context; without downloads, Open asks the host instead.
    fewer = {key: value for key, value in HOST_CAPABILITIES.items() if key not in ("message", "downloadFile")}
    async with gallery(browser, host_url, sandbox, capabilities=fewer) as g:
        data = await g.generated()
        card = g.app.locator(".card").first
        await expect(card.locator('button[data-action="download"]')).to_have_count(0)
        await card.locator('button[data-action="use"]').click()
        (context,) = await requested(g.host, "ui/update-model-context")
        assert context["structuredContent"]["chosen"] == {
            "task_id": data["task_id"],
            "index": 0,
            "uri": f"qolaba://images/{data['task_id']}/0",
        }
        await card.locator('button[data-action="open"]').click()
        (opened,) = await requested(g.host, "ui/open-link")
        assert opened["url"] == data["images"][0]["url"]


async def test_the_lightbox_shows_a_sharper_picture_and_no_server_paths(
    browser: Browser, host_url: str, sandbox: SandboxServer, tmp_path: Any
) -> None:
    folder = tmp_path / "server-only-folder"
    async with gallery(browser, host_url, sandbox, QOLABA_SAVE="on", QOLABA_OUTPUT_DIR=str(folder)) as g:
        data = await g.generated()
        assert data["saved_files"] and all(str(folder) in path for path in data["saved_files"])
        files = g.app.locator(".card .meta .file")
        await expect(files.first).to_have_text(os.path.basename(data["saved_files"][0]))

        thumb = g.app.locator(".card button.view").nth(1)
        await thumb.click()
        lightbox = g.app.locator("#lightbox")
        await expect(lightbox).to_be_visible()
        await expect(g.app.locator("#lightbox-close")).to_be_focused()
        with anyio.fail_after(10):  # the sharper copy, asked for in the background
            while not (sharper := await g.host.tool_calls("gallery_image")):
                await anyio.sleep(0.05)
        assert sharper == [{"task_id": data["task_id"], "index": 1}]
        await lightbox.locator("summary").click()
        await expect(lightbox.locator("dl")).to_contain_text(os.path.basename(data["saved_files"][1]))
        assert str(folder) not in await g.app.locator("body").inner_text()
        await g.no_serious_violations()

        await g.app.locator("#lightbox-close").press("ArrowRight")
        await expect(g.app.locator("#lightbox-image")).to_have_attribute("alt", f"Image 3 of 3: {PROMPT}")
        await g.app.locator("#lightbox-close").press("Escape")
        await expect(lightbox).to_be_hidden()
        await expect(thumb).to_be_focused()


async def test_history_without_tool_info_keeps_its_filter_when_paging(
    browser: Browser, host_url: str, sandbox: SandboxServer
) -> None:
    async with gallery(browser, host_url, sandbox, tool_name=None) as g:
        await g.show("list_generations", {"limit": 2})
        await expect(g.app.locator(".empty")).to_have_text("No generations yet.")
        await g.no_serious_violations()

        for n in range(3):
            await g.client.call_tool("generate_image", {"model": FLASH, "prompt": f"history {n}"})
        await g.client.call_tool("generate_image", {"model": "vertex/imagen-4-fast", "prompt": "another model"})
        # Arguments with a model and no prompt: taken for generate_image when the app guessed from them.
        await g.show("list_generations", {"model": FLASH, "limit": 2})
        await expect(g.app.locator("#gallery")).to_have_attribute("data-state", "history")
        rows = g.app.locator(".history-row")
        await expect(rows).to_have_count(2)
        await expect(rows.first).to_contain_text("history 2")  # newest first
        more = g.app.locator('button[data-action="more"]')
        await more.click()
        await expect(rows).to_have_count(3)
        await expect(rows.last).to_contain_text("history 0")
        await expect(more).to_be_hidden()
        (call,) = await g.host.tool_calls("list_generations")
        assert call["model"] == FLASH and call["limit"] == 2 and call["cursor"]
        await g.no_serious_violations()

        await g.generated()  # and a generation, told apart by its structured content too
        await expect(g.app.locator(".card")).to_have_count(3)


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
        await g.no_serious_violations()


async def test_a_narrow_card_keeps_each_fact_on_one_line(
    browser: Browser, host_url: str, sandbox: SandboxServer
) -> None:
    narrow = {"containerDimensions": {"width": 320, "maxHeight": 4000}}
    async with gallery(browser, host_url, sandbox, context=narrow) as g:
        await g.generated()
        widths = await g.app.eval_on_selector_all(".card", "(cards) => cards.map((card) => card.offsetWidth)")
        assert all(width <= 320 for width in widths), widths
        # Every line of every card on one line; model, seed, size and cost whole (a long file name may end in "…":
        # the lightbox's details give it whole).
        lines = await g.app.eval_on_selector_all(
            ".card .meta span",
            "(spans) => spans.map((s) => ({text: s.textContent, file: s.classList.contains('file'),"
            " fits: s.scrollWidth <= s.clientWidth,"
            " lines: Math.round(s.getBoundingClientRect().height / parseFloat(getComputedStyle(s).lineHeight))}))",
        )
        assert lines and all(line["lines"] == 1 and (line["fits"] or line["file"]) for line in lines), lines
        await g.no_serious_violations()
        await screenshot(g, "narrow")


async def test_fullscreen_when_offered_with_a_larger_grid_and_arrow_keys(
    browser: Browser, host_url: str, sandbox: SandboxServer
) -> None:
    async with gallery(browser, host_url, sandbox) as g:  # a host that lists no fullscreen: no button
        await g.generated()
        await expect(g.app.locator("#fullscreen")).to_be_hidden()

    modes = {"availableDisplayModes": ["inline", "fullscreen"]}
    async with gallery(browser, host_url, sandbox, context=modes) as g:
        await g.generated()
        inline = await g.app.locator(".card").first.evaluate("(card) => card.offsetWidth")
        button = g.app.locator("#fullscreen")
        await button.click()
        assert await requested(g.host, "ui/request-display-mode") == [{"mode": "fullscreen"}]
        await expect(g.app.locator("html")).to_have_attribute("data-mode", "fullscreen")
        await expect(button).to_have_text("Exit fullscreen")
        await expect(button).to_have_attribute("aria-pressed", "true")
        wide = await g.app.locator(".card").first.evaluate("(card) => card.offsetWidth")
        assert wide >= 280 and wide > inline

        views = g.app.locator(".card button.view")
        await views.first.focus()
        await views.first.press("ArrowRight")
        await expect(views.nth(1)).to_be_focused()
        await views.nth(1).press("End")
        await expect(views.nth(2)).to_be_focused()
        await views.nth(2).press("Enter")
        await expect(g.app.locator("#lightbox")).to_be_visible()
        await g.no_serious_violations()
        await screenshot(g, "fullscreen")
        await g.app.locator("#lightbox-close").press("Escape")
        await g.app.locator(".card button.view").nth(2).press("Escape")  # Escape again: back inline
        await expect(g.app.locator("html")).to_have_attribute("data-mode", "inline")
        assert [r["mode"] for r in await g.host.requests("ui/request-display-mode")] == ["fullscreen", "inline"]


@pytest.mark.parametrize("theme", ["light", "dark"])
async def test_the_hosts_theme_fonts_colours_and_insets_in_every_view(
    browser: Browser, host_url: str, sandbox: SandboxServer, theme: str
) -> None:
    background = {"light": "rgb(250, 245, 235)", "dark": "rgb(20, 30, 40)"}[theme]
    host = {
        "theme": theme,
        "styles": {
            "variables": {"--color-background-primary": background, "--font-sans": "HostSans, serif"},
            "css": {"fonts": "@font-face { font-family: HostSans; src: local(serif); }"},
        },
        "safeAreaInsets": {"top": 20, "right": 4, "bottom": 30, "left": 4},
    }
    async with gallery(browser, host_url, sandbox, context=host) as g:
        style = (
            "() => { const b = getComputedStyle(document.body),"
            " m = getComputedStyle(document.getElementById('gallery'));"
            " return [b.backgroundColor, b.fontFamily, m.paddingTop, m.paddingBottom, document.documentElement.dataset"
            ".theme]; }"
        )
        expected = [background, "HostSans, serif", "32px", "42px", theme]
        await g.generated()
        assert await g.app.evaluate(style) == expected
        await g.app.locator(".card button.view").first.click()
        assert await g.app.evaluate(style) == expected
        await g.no_serious_violations()
        await g.show("list_generations", {"limit": 5})
        await expect(g.app.locator(".history-row").first).to_be_visible()
        assert await g.app.evaluate(style) == expected
        await g.no_serious_violations()


async def test_every_control_is_reached_by_tab_with_a_visible_focus(
    browser: Browser, host_url: str, sandbox: SandboxServer
) -> None:
    modes = {"availableDisplayModes": ["inline", "fullscreen"]}
    async with gallery(browser, host_url, sandbox, context=modes) as g:
        await g.generated()
        await expect(g.app.locator('.card button[data-action="variation"]').first).to_contain_text("$")
        controls = await g.app.eval_on_selector_all(
            "button, a[href], textarea, select", "(all) => all.filter((e) => e.offsetParent).length"
        )
        await g.app.locator("#fullscreen").focus()
        seen = []
        for _ in range(controls - 1):  # each control after the first, reached by Tab alone
            await g.host.page.keyboard.press("Tab")
            seen.append(
                await g.app.evaluate(
                    "() => { const e = document.activeElement, s = getComputedStyle(e);"
                    " return [e.dataset.action || e.id, e.dataset.index, s.outlineStyle, s.outlineWidth]; }"
                )
            )
        assert len({(action, index) for action, index, _, _ in seen}) == controls - 1
        assert all(style == "solid" and width == "2px" for _, _, style, width in seen), seen
        await expect(g.app.locator("#status")).to_have_attribute("aria-live", "polite")


async def test_bench_tool_result_to_first_picture(
    browser: Browser, host_url: str, sandbox: SandboxServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """From the host sending a generation's result to its first picture decoded and painted (inline previews)."""
    async with gallery(browser, host_url, sandbox, QOLABA_SAVE="off") as g:
        result = wire(await g.client.call_tool("generate_image", ARGUMENTS))
        timings = []
        for _ in range(30):
            await g.host.tool_input(ARGUMENTS)
            await expect(g.app.locator(".card")).to_have_count(0)
            # Watched from inside the app's frame: the first thumbnail with a source, decoded, then the next frame.
            await g.app.evaluate(
                """() => { window.benchPainted = new Promise((resolve) => {
                    const seen = new MutationObserver(async () => {
                        const img = document.querySelector(".card img.thumb[src]");
                        if (!img) return;
                        seen.disconnect();
                        await img.decode();
                        requestAnimationFrame(() => resolve(performance.timeOrigin + performance.now()));
                    });
                    seen.observe(document.getElementById("grid"), {childList: true, subtree: true});
                }); }"""
            )
            sent = await g.host.timed_tool_result(result)
            timings.append(await g.app.evaluate("() => window.benchPainted") - sent)
        p50, p95 = statistics.median(timings), statistics.quantiles(timings, n=20)[18]
        with capsys.disabled():
            print(f"\ngallery: tool result -> first picture painted, 30 runs: p50 {p50:.1f} ms, p95 {p95:.1f} ms")
        assert p95 <= 100, timings
