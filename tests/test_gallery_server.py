"""The gallery MCP App, server side: what clients with and without MCP Apps see, the page, and gallery_image.

The SDK's real Client drives qolaba-mcp over stdio (and HTTP where callers differ) against the sandbox. A client
"with Apps" advertises the extension as hosts that render apps do; a plain one advertises nothing.
"""

from __future__ import annotations

import base64
import io
import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp import Client
from mcp.client.extension import advertise
from mcp.client.streamable_http import streamable_http_client
from mcp.server.apps import APP_MIME_TYPE, EXTENSION_ID
from mcp.types import CallToolResult, ImageContent, TextResourceContents
from PIL import Image

from qolaba_mcp._config import Settings
from qolaba_mcp.sandbox import SandboxServer
from qolaba_mcp.server._gallery import GALLERY_URI, page
from qolaba_mcp.server._server import build_server

from .conftest import HttpServer, connect, server_env
from .results import data, text

pytestmark = pytest.mark.anyio

ERAS = ["auto", "legacy"]  # auto settles on 2026-07-28 with this server; legacy is the 2025-11-25 handshake
FLASH = "vertex/nano-banana-flash"
REQUEST = {"model": FLASH, "prompt": "A lighthouse on a cliff at dusk", "num_images": 2, "seed": 7}
SHOWN_IN_GALLERY = {"generate_image", "get_task", "list_generations"}
TODAYS_TOOLS = ["generate_image", "get_task", "list_models", "list_generations", "get_spend"]
HTML_FILE = Path(__file__).parents[1] / "qolaba_mcp" / "gallery" / "gallery.html"


@asynccontextmanager
async def client(sandbox: SandboxServer, *, apps: bool, mode: str = "auto", **env: str | None) -> AsyncIterator[Client]:
    """qolaba-mcp in this process, with a client that advertises MCP Apps (as a host rendering apps does) or not."""
    extensions = [advertise(EXTENSION_ID, {"mimeTypes": [APP_MIME_TYPE]})] if apps else None
    async with connect("memory", mode, base_url=sandbox.base_url, options={"extensions": extensions}, **env) as opened:
        yield opened


async def listing(session: Client) -> list[dict[str, Any]]:
    """tools/list as it crossed the wire."""
    return [
        tool.model_dump(mode="json", by_alias=True, exclude_none=True) for tool in (await session.list_tools()).tools
    ]


def without_ui(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A listing with every Apps part taken out: app-only tools dropped, ``_meta.ui`` removed."""
    plain = []
    for tool in tools:
        ui = tool.get("_meta", {}).get("ui", {})
        if "model" not in ui.get("visibility", ["model"]):
            continue
        meta = {key: value for key, value in tool.get("_meta", {}).items() if key != "ui"}
        plain.append({key: value for key, value in tool.items() if key != "_meta"} | ({"_meta": meta} if meta else {}))
    return plain


# -- tools/list, per client -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ERAS)
async def test_a_client_with_apps_sees_the_gallery_and_the_app_only_tool(sandbox: SandboxServer, mode: str) -> None:
    async with client(sandbox, apps=True, mode=mode) as session:
        tools = {tool["name"]: tool for tool in await listing(session)}
        advertised = session.server_capabilities.extensions or {}
    assert EXTENSION_ID in advertised or mode == "legacy"  # the 2025-11-25 handshake has no server extensions
    assert list(tools) == [*TODAYS_TOOLS, "gallery_image"]
    for name in SHOWN_IN_GALLERY:
        assert tools[name]["_meta"] == {"ui": {"resourceUri": GALLERY_URI}}, name
    for name in set(TODAYS_TOOLS) - SHOWN_IN_GALLERY:
        assert "_meta" not in tools[name], name
    gallery = tools["gallery_image"]
    assert gallery["_meta"]["ui"] == {"resourceUri": GALLERY_URI, "visibility": ["app"]}
    assert gallery["inputSchema"]["required"] == ["task_id", "index"]
    assert gallery["annotations"]["readOnlyHint"] is True


@pytest.mark.parametrize("mode", ERAS)
async def test_a_client_without_apps_sees_todays_tools_list(sandbox: SandboxServer, mode: str) -> None:
    async with client(sandbox, apps=False, mode=mode) as plain_session:
        plain = await listing(plain_session)
    async with client(sandbox, apps=True, mode=mode) as apps_session:
        with_apps = await listing(apps_session)
    assert [tool["name"] for tool in plain] == TODAYS_TOOLS
    assert all("_meta" not in tool for tool in plain)
    # byte for byte what the Apps listing is with its Apps parts taken out: the same tools, schemas and order
    assert json.dumps(plain) == json.dumps(without_ui(with_apps))
    assert json.dumps(plain) != json.dumps(with_apps)
    assert len(json.dumps(plain, separators=(",", ":")).encode()) <= 8 * 1024


async def test_the_listing_follows_what_each_http_caller_advertised(sandbox: SandboxServer) -> None:
    """Over HTTP in both eras one server answers both kinds of client, each by its own capabilities."""
    server = HttpServer(server_env(sandbox.base_url))
    try:
        for mode in ERAS:
            for apps in (True, False):
                extensions = [advertise(EXTENSION_ID, {"mimeTypes": [APP_MIME_TYPE]})] if apps else None
                async with Client(server.url, mode=mode, extensions=extensions) as session:  # type: ignore[arg-type]
                    names = [tool["name"] for tool in await listing(session)]
                assert ("gallery_image" in names) is apps, (mode, apps)
    finally:
        server.stop()


async def test_apps_without_the_app_mime_type_is_not_apps(sandbox: SandboxServer) -> None:
    ad = advertise(EXTENSION_ID, {"mimeTypes": ["text/html"]})  # a host that cannot render this kind of app
    async with connect("memory", "auto", base_url=sandbox.base_url, options={"extensions": [ad]}) as session:
        names = [tool["name"] for tool in await listing(session)]
    assert names == TODAYS_TOOLS


# -- the page -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("apps", [True, False])
async def test_the_page_is_served_as_an_mcp_app_declaring_no_domains(sandbox: SandboxServer, apps: bool) -> None:
    async with client(sandbox, apps=apps) as session:
        (contents,) = (await session.read_resource(GALLERY_URI)).contents
        listed = {str(resource.uri): resource for resource in (await session.list_resources()).resources}
    assert isinstance(contents, TextResourceContents)
    assert contents.mime_type == APP_MIME_TYPE
    ui = (contents.meta or {})["ui"]
    assert ui["csp"] == {"connectDomains": [], "resourceDomains": [], "frameDomains": []}
    assert ui["prefersBorder"] is True
    assert listed[GALLERY_URI].mime_type == APP_MIME_TYPE and listed[GALLERY_URI].meta == contents.meta
    assert contents.text == HTML_FILE.read_text(encoding="utf-8")


def test_the_page_loads_nothing_from_anywhere() -> None:
    html = HTML_FILE.read_text(encoding="utf-8")
    assert len(html.encode()) <= 48 * 1024  # issue 22: the second version stays within 48 KB
    assert not re.search(r"(?i)https?://", html)  # no URL of any kind: nothing to load, nothing to link
    assert not re.search(r"(?i)<script[^>]*\ssrc\s*=", html)
    assert not re.search(r"(?i)<link\b|@import|url\(|<iframe|<object|<embed|<base\b", html)
    assert not re.search(r"\bfetch\(|XMLHttpRequest|WebSocket|EventSource|sendBeacon|importScripts", html)
    assert "innerHTML" not in html and "outerHTML" not in html and "insertAdjacentHTML" not in html
    assert "document.write" not in html and "eval(" not in html and "new Function" not in html


def test_the_page_has_the_dom_the_browser_tests_drive() -> None:
    html = HTML_FILE.read_text(encoding="utf-8")
    assert re.search(r'<main id="gallery" data-state="idle"', html)
    for element_id in ("prompt", "status", "error", "lightbox", "grid", "history"):
        assert f'id="{element_id}"' in html, element_id
    for action in ("view", "variation", "edit", "open", "more"):
        assert f'"{action}"' in html, action
    for method in (
        "ui/initialize",
        "ui/notifications/initialized",
        "ui/notifications/tool-input",
        "ui/notifications/tool-input-partial",
        "ui/notifications/tool-result",
        "ui/notifications/tool-cancelled",
        "ui/notifications/host-context-changed",
        "ui/notifications/size-changed",
        "ui/resource-teardown",
        "ui/open-link",
        "tools/call",
    ):
        assert f'"{method}"' in html, method


async def test_the_page_is_read_on_first_use_not_at_start_up() -> None:
    page.cache_clear()
    server = build_server(Settings())
    assert page.cache_info().currsize == 0
    (contents,) = await server.read_resource(GALLERY_URI)
    assert page.cache_info().currsize == 1 and contents.content == page()


# -- gallery_image --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("apps", [True, False])
async def test_gallery_image_is_a_small_picture_of_a_finished_image(sandbox: SandboxServer, apps: bool) -> None:
    """Callable by every client (listed only to those with Apps): one image block, no network needed to show it."""
    async with client(sandbox, apps=apps) as session:
        made = data(await session.call_tool("generate_image", REQUEST))
        assert made["status"] == "SUCCESS" and len(made["images"]) == 2
        results = [
            await session.call_tool("gallery_image", {"task_id": made["task_id"], "index": index}) for index in (0, 1)
        ]
    pictures = []
    for result in results:
        assert not result.is_error, text(result)
        (block,) = result.content
        assert isinstance(block, ImageContent) and block.mime_type in ("image/jpeg", "image/webp")
        with Image.open(io.BytesIO(base64.b64decode(block.data))) as picture:
            assert max(picture.size) <= 512 and picture.format in ("JPEG", "WEBP")
            width, height = made["images"][0]["width"], made["images"][0]["height"]
            assert abs(picture.width / picture.height - width / height) < 0.02  # the image, only smaller
        pictures.append(block.data)
    assert pictures[0] != pictures[1]


async def test_gallery_image_explains_what_it_cannot_show(sandbox: SandboxServer) -> None:
    async with client(sandbox, apps=True) as session:
        made = data(await session.call_tool("generate_image", {**REQUEST, "num_images": 1}))
        cases = {
            "unknown task": {"task_id": "task_nope", "index": 0},
            "past the last image": {"task_id": made["task_id"], "index": 3},
            "negative index": {"task_id": made["task_id"], "index": -1},
            "not a task_id": {"task_id": "../etc/passwd", "index": 0},
            "true as index": {"task_id": made["task_id"], "index": True},
            "an unknown argument": {"task_id": made["task_id"], "index": 0, "size": 1024},
        }
        results = {case: await session.call_tool("gallery_image", args) for case, args in cases.items()}
    expected = {
        "unknown task": "knows no task 'task_nope'",
        "past the last image": f"Task {made['task_id']} has images 0 to 0; no image '3'",
        "negative index": "index: must be at least 0",
        "not a task_id": "not a task_id",
        "true as index": "index",
        "an unknown argument": "size: is not an argument of this tool",
    }
    for case, said in expected.items():
        assert results[case].is_error and said in text(results[case]), (case, text(results[case]))
        assert not any(isinstance(block, ImageContent) for block in results[case].content), case


async def test_gallery_image_shows_only_the_callers_own_images(sandbox: SandboxServer, tmp_path: Path) -> None:
    server = HttpServer(
        server_env(sandbox.base_url, QOLABA_LEDGER_URL=f"sqlite:///{tmp_path / 'shared.db'}", QOLABA_SAVE="off"),
        "--allow-client-keys",
    )

    @asynccontextmanager
    async def as_caller(key: str) -> AsyncIterator[Client]:
        http = httpx2.AsyncClient(headers={"X-Qolaba-Api-Key": key}, timeout=httpx2.Timeout(30, read=60))
        ad = advertise(EXTENSION_ID, {"mimeTypes": [APP_MIME_TYPE]})
        async with http, Client(streamable_http_client(server.url, http_client=http), extensions=[ad]) as opened:
            yield opened

    try:
        async with as_caller("qk_alice_0123456789") as alice:
            made = data(await alice.call_tool("generate_image", {**REQUEST, "num_images": 1}))
            mine = await alice.call_tool("gallery_image", {"task_id": made["task_id"], "index": 0})
        async with as_caller("qk_bob_9876543210") as bob:
            theirs = await bob.call_tool("gallery_image", {"task_id": made["task_id"], "index": 0})
    finally:
        server.stop()
    assert not mine.is_error and isinstance(mine.content[0], ImageContent)
    assert theirs.is_error and "no task" in text(theirs).lower()  # as if it did not exist
    assert not any(isinstance(block, ImageContent) for block in theirs.content)


# -- tool results ---------------------------------------------------------------------------------------------------


def shape(result: CallToolResult) -> tuple[bool, list[str], list[str]]:
    return bool(result.is_error), [block.type for block in result.content], sorted(data(result))


@pytest.mark.parametrize("mode", ERAS)
async def test_results_are_the_same_with_and_without_apps(sandbox: SandboxServer, mode: str) -> None:
    shapes = []
    for apps in (True, False):
        async with client(sandbox, apps=apps, mode=mode) as session:
            made = await session.call_tool("generate_image", REQUEST)
            later = await session.call_tool("get_task", {"task_id": data(made)["task_id"]})
            history = await session.call_tool("list_generations", {})
        row = data(history)["generations"][0]
        shapes.append((shape(made), shape(later), shape(history), data(made)["seed"], sorted(row), row["model"]))
    with_apps, without = shapes
    assert with_apps == without
    assert with_apps[0][1] == ["text", "resource_link", "image", "resource_link", "image"]
