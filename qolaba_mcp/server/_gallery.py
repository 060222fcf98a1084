"""The gallery MCP App: its ui:// page, which tools show it, and the image previews it asks for.

The app is an extension (``io.modelcontextprotocol/ui``): a client that did not negotiate it sees exactly the
tools list it saw before the app existed, without ``_meta.ui`` and without the tools only the app calls.
"""

from __future__ import annotations

from functools import cache, partial
from importlib import resources
from typing import Any

import anyio
from mcp.server.apps import APP_MIME_TYPE, Apps, ResourceCsp
from mcp.server.mcpserver.resources import FunctionResource
from mcp.server.mcpserver.tools import Tool
from mcp.types import Tool as ListedTool

from ..api._wire import ImageOutput
from ..images._delivery import Delivery, make_preview

GALLERY_URI = "ui://qolaba/gallery.html"
PREVIEW_BYTES = 150_000  # one picture in an app-only result: never in the model's context, so roomier than previews


def gallery_extension() -> Apps:
    """The Apps extension serving the gallery page (read from the package when first asked for)."""
    apps = Apps()
    # No network at all: the page is inline, and its images arrive as tool results (see gallery_image).
    csp = ResourceCsp(connect_domains=[], resource_domains=[], frame_domains=[])
    apps.add_resource(
        FunctionResource(
            uri=GALLERY_URI,
            name="gallery",
            title="Image gallery",
            description="Generated images in a grid, generation progress and history, with variations and edits.",
            mime_type=APP_MIME_TYPE,
            meta={"ui": {"csp": csp.model_dump(by_alias=True, exclude_none=True), "prefersBorder": True}},
            fn=page,
        )
    )
    return apps


@cache
def page() -> str:
    """The gallery's single self-contained HTML file."""
    return resources.files("qolaba_mcp.gallery").joinpath("gallery.html").read_text(encoding="utf-8")


def shows_gallery(tool: Tool) -> Tool:
    """The tool, marked for hosts with Apps to show its result in the gallery."""
    tool.meta = {**(tool.meta or {}), "ui": {"resourceUri": GALLERY_URI}}
    return tool


def app_only(tool: Tool) -> Tool:
    """The tool, marked as called by the gallery alone: hosts keep it from the model."""
    tool.meta = {**(tool.meta or {}), "ui": {"resourceUri": GALLERY_URI, "visibility": ["app"]}}
    return tool


def without_apps(tools: list[ListedTool]) -> list[ListedTool]:
    """The listing for a client without Apps: no app-only tools, and no ``_meta.ui`` on the others."""
    plain = []
    for tool in tools:
        meta: dict[str, Any] = dict(tool.meta or {})
        ui = meta.pop("ui", None) or {}
        if "model" not in ui.get("visibility", ["model"]):
            continue
        plain.append(tool.model_copy(update={"meta": meta or None}))
    return plain


async def preview(delivery: Delivery, image: ImageOutput, *, decodes: anyio.CapacityLimiter) -> tuple[bytes, str]:
    """A JPEG (WebP with transparency) of the image, long side at most 512 px, fetched by the download rules.

    Raises the delivery's DownloadError when the image cannot be fetched, NoPreview when it cannot be decoded.
    """
    data, kind = await delivery.fetch(image.preview_url or image.url)  # the smaller copy, when the API offers one
    make = partial(make_preview, data, kind, PREVIEW_BYTES, "on", max_pixels=delivery.max_pixels)
    return await anyio.to_thread.run_sync(make, limiter=decodes)
