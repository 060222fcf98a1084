"""An MCP Apps host in headless Chromium, for the browser tests and the bench.

The host page (scripts/apps_host: host.html and host.js, the latter bundled with @modelcontextprotocol/ext-apps by
scripts/apps_host/build.sh) is served from loopback; it mounts an app's HTML in a sandboxed iframe and speaks to it
through the Apps SDK's own ``AppBridge`` over ``PostMessageTransport``. The app's ``tools/call`` requests come back
to Python, where ``call_tool`` answers them (the tests: the real qolaba-mcp through the SDK ``Client``). Chromium is
the system's (never a download): the first of ``chromium``, ``chromium-browser``, ``google-chrome`` on PATH.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from mcp import Client
from mcp.client.extension import ClientExtension, advertise
from mcp.types import CallToolResult, Tool
from playwright.async_api import Browser, ConsoleMessage, Frame, Page, async_playwright

REPO = Path(__file__).resolve().parents[2]
HOST_DIR_ENV = "QOLABA_APPS_HOST"  # a folder holding the built host.html and host.js
DEFAULT_HOST_DIR = REPO / ".interop" / "apps-host"
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
APP_URI = "ui://qolaba/gallery.html"
APP_MIME_TYPE = "text/html;profile=mcp-app"
# What a host that renders MCP Apps advertises to the server (the Apps extension, SEP-2133 capability).
UI_EXTENSION_ID = "io.modelcontextprotocol/ui"
# As root on a machine with a closed network: no sandbox, and no background requests to Google's hosts.
CHROMIUM_ARGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)

# Everything the host page can do for an app; a test leaves out what a host without it would.
HOST_CAPABILITIES: dict[str, Any] = {
    "serverTools": {},
    "openLinks": {},
    "downloadFile": {},
    "logging": {},
    "message": {"text": {}},
    "updateModelContext": {"text": {}},
}
SERIOUS = ("serious", "critical")

CallTool = Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]]


def ui_extension() -> ClientExtension:
    return advertise(UI_EXTENSION_ID, {"mimeTypes": [APP_MIME_TYPE]})


def find_chromium() -> str | None:
    return next((path for name in CHROMIUM_NAMES if (path := shutil.which(name))), None)


def host_dir() -> Path:
    """Where scripts/apps_host/build.sh builds the host page (QOLABA_APPS_HOST, else .interop/apps-host)."""
    return Path(os.environ.get(HOST_DIR_ENV) or DEFAULT_HOST_DIR)


def host_built(folder: Path) -> bool:
    return (folder / "host.html").is_file() and (folder / "host.js").is_file()


def wire(result: CallToolResult) -> dict[str, Any]:
    """A tool result as it crosses the wire (and so as a host hands it to an app)."""
    return result.model_dump(mode="json", by_alias=True, exclude_none=True)


def tool_ui_uri(tool: Tool) -> str | None:
    """The app a tool declares (``_meta.ui.resourceUri``, or the older flat ``_meta["ui/resourceUri"]``)."""
    meta = tool.meta or {}
    nested = meta.get("ui")
    return (nested.get("resourceUri") if isinstance(nested, dict) else None) or meta.get("ui/resourceUri")


def client_call_tool(client: Client) -> CallTool:
    """Answers the app's tools/call with a real call through ``client``."""

    async def call(name: str, arguments: dict[str, Any]) -> dict[str, Any]:
        return wire(await client.call_tool(name, arguments))

    return call


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def serve_host_page(folder: Path) -> Iterator[str]:
    """The host page over HTTP on a free loopback port; its URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Quiet, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/host.html"
    finally:
        server.shutdown()
        server.server_close()


@asynccontextmanager
async def chromium(executable: str) -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=executable, args=list(CHROMIUM_ARGS))
        try:
            yield browser
        finally:
            await browser.close()


class AppHost:
    """One host page with one app mounted in it; the app's tool calls go to ``call_tool``."""

    def __init__(self, page: Page, call_tool: CallTool) -> None:
        self.page = page
        self.call_tool = call_tool
        self.errors: list[str] = []  # uncaught errors and console errors, from the host page and the app

    @classmethod
    @asynccontextmanager
    async def open(cls, browser: Browser, url: str, call_tool: CallTool) -> AsyncIterator[AppHost]:
        context = await browser.new_context(viewport={"width": 752, "height": 900}, reduced_motion="reduce")
        try:
            host = cls(await context.new_page(), call_tool)
            await host._start(url)
            yield host
        finally:
            await context.close()

    async def _start(self, url: str) -> None:
        self.page.on("pageerror", lambda error: self.errors.append(f"uncaught: {error}"))
        self.page.on("console", self._console)
        await self.page.expose_binding("qolabaCallTool", self._tools_call)
        await self.page.goto(url)
        await self.page.wait_for_function("() => window.host !== undefined")

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.errors.append(f"console: {message.text}")

    async def _tools_call(self, source: dict[str, Any], name: str, arguments: dict[str, Any]) -> dict[str, Any]:
        # The binding exists in every frame: only the host page may use it, the app must go through the bridge.
        if source["frame"] != self.page.main_frame:
            raise PermissionError("qolabaCallTool is the host page's, not the app's")
        return await self.call_tool(name, arguments)

    async def mount(
        self,
        html: str,
        *,
        meta: dict[str, Any] | None = None,
        tool: Tool | None = None,
        capabilities: dict[str, Any] | None = None,
        context: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Mount the app and finish the ui/initialize handshake; the app's name, version, capabilities.

        By default a light, inline, 720 px host offering everything (HOST_CAPABILITIES); ``tool`` becomes the
        context's ``toolInfo`` (left out without it), ``context`` overrides fields of the host context.
        """
        full: dict[str, Any] = {
            "theme": "light",
            "displayMode": "inline",
            "availableDisplayModes": ["inline"],
            "platform": "web",
            "locale": "en-US",
            "containerDimensions": {"width": 720, "maxHeight": 2000},
        }
        if tool is not None:
            full["toolInfo"] = {"tool": tool.model_dump(mode="json", by_alias=True, exclude_none=True)}
        full.update(context or {})
        arguments = {
            "html": html,
            "meta": meta or {},
            "context": full,
            "capabilities": HOST_CAPABILITIES if capabilities is None else capabilities,
        }
        mounted: dict[str, Any] = await self.page.evaluate("(a) => host.mount(a)", arguments)
        return mounted

    async def tool_input(self, arguments: dict[str, Any]) -> None:
        await self.page.evaluate("(a) => host.toolInput(a)", arguments)

    async def tool_result(self, result: dict[str, Any]) -> None:
        await self.page.evaluate("(r) => host.toolResult(r)", result)

    async def set_theme(self, theme: str) -> None:
        await self.set_context({"theme": theme})

    async def set_context(self, changes: dict[str, Any]) -> None:
        await self.page.evaluate("(changes) => host.setHostContext(changes)", changes)

    async def timed_tool_result(self, result: dict[str, Any]) -> float:
        """Sends the result; when (ms since the epoch) it was sent."""
        sent: float = await self.page.evaluate("(r) => host.timedToolResult(r)", result)
        return sent

    async def log(self) -> list[dict[str, Any]]:
        """Every request the app made of the host, in order: {method, params}."""
        entries: list[dict[str, Any]] = await self.page.evaluate("() => host.log")
        return entries

    async def tool_calls(self, name: str) -> list[dict[str, Any]]:
        """The arguments of every tools/call the app made for ``name``."""
        calls = [entry["params"] for entry in await self.log() if entry["method"] == "tools/call"]
        return [call.get("arguments", {}) for call in calls if call["name"] == name]

    async def requests(self, method: str) -> list[dict[str, Any]]:
        """The params of every request ``method`` the app made of the host."""
        return [entry["params"] for entry in await self.log() if entry["method"] == method]

    async def axe(self) -> list[dict[str, Any]]:
        """The serious and critical violations axe-core finds in the app as it is now (id, impact, nodes)."""
        app = await self.app()
        if not await app.evaluate("() => typeof window.axe === 'object'"):
            await app.add_script_tag(content=(host_dir() / "node_modules" / "axe-core" / "axe.min.js").read_text())
        found: list[dict[str, Any]] = await app.evaluate(
            """async () => (await axe.run(document, {resultTypes: ["violations"]})).violations
                .map((v) => ({id: v.id, impact: v.impact, nodes: v.nodes.map((n) => n.target.join(" "))}))"""
        )
        return [violation for violation in found if violation["impact"] in SERIOUS]

    async def app(self) -> Frame:
        """The app's frame, for locators and evaluate."""
        iframe = await self.page.wait_for_selector("iframe#app")
        assert iframe is not None
        frame = await iframe.content_frame()
        assert frame is not None
        return frame
