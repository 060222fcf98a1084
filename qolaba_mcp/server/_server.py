"""The MCP server: its tools, resources and gallery extension, built on MCPServer with a lifespan."""

from __future__ import annotations

import logging
import threading
from typing import Any, Literal

import anyio
from mcp.server.apps import client_supports_apps
from mcp.server.context import ServerRequestContext
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError, UnexpectedToolError
from mcp.types import (
    ListToolsResult,
    PaginatedRequestParams,
)
from mcp.types import Tool as ListedTool
from pydantic import AnyUrl, ValidationError

from .. import __version__
from .._config import Settings
from ..ops import OperationDuration, Ops
from ._calls import app_of
from ._context import lifespan
from ._gallery import app_only, gallery_extension, shows_gallery, without_apps
from ._generate import generate_image_tool
from ._history import get_spend_tool, list_generations_tool
from ._models import list_models_tool
from ._resources import add_resources, read_image_link
from ._results import (
    argument_errors,
)
from ._task_ext import TasksExtension, with_task_support
from ._task_views import LEGACY
from ._tasks import gallery_image_tool, get_task_tool

log = logging.getLogger("qolaba_mcp.server")


INSTRUCTIONS = (
    "Generate images with Qolaba. Call list_models to pick a model, then generate_image. Long generations "
    "return a task_id before they finish: call get_task with that task_id (and wait_seconds) to collect the "
    "images. Never call generate_image twice for one image: each call is a new, paid generation (an identical call "
    "while the first is unfinished joins it). list_generations finds earlier images."
)


class QolabaServer(MCPServer):
    """MCPServer with argument errors written for the model, the image links of our results readable, and the
    gallery app's parts of the tools list shown only to clients that negotiated MCP Apps."""

    async def list_tools(self) -> list[ListedTool]:
        """The tools as a client without MCP Apps sees them: no app-only tools and no ``_meta.ui``."""
        return without_apps(await super().list_tools())

    async def list_app_tools(self) -> list[ListedTool]:
        """The tools as a client with MCP Apps sees them: linked to the gallery, with the tools it calls."""
        return await super().list_tools()

    async def _handle_list_tools(
        self, ctx: ServerRequestContext[Any, Any], params: PaginatedRequestParams | None
    ) -> ListToolsResult:
        # The SDK's handler lists one set of tools for everyone: the request's context says what this client has.
        tools = await (self.list_app_tools() if client_supports_apps(ctx) else self.list_tools())
        if ctx.protocol_version == LEGACY:  # 2025-11-25 lists which tools run as tasks; later eras do not
            tools = [with_task_support(tool) for tool in tools]
        return ListToolsResult(tools=tools)

    async def call_tool(self, name: str, arguments: dict[str, Any], context: Context[Any, Any] | None = None) -> Any:
        try:
            return await super().call_tool(name, arguments, context)
        except UnexpectedToolError:
            raise
        except ToolError as exc:
            if not isinstance(exc.__cause__, ValidationError):
                raise
            if context is not None and name == "generate_image":
                app_of(context).ops.refused("validation")
            tool = self._tool_manager.get_tool(name)
            known = list(tool.parameters.get("properties", {})) if tool is not None else []
            raise ToolError(argument_errors(name, exc.__cause__, known)) from exc.__cause__

    async def read_resource(self, uri: AnyUrl | str, context: Context[Any, Any] | None = None) -> Any:
        """Our resource templates, and the http(s) image URLs our results link to (fetched under the caps)."""
        text = str(uri)
        if context is not None and text[:8].lower().startswith(("http://", "https://")):
            return await read_image_link(text, context)
        return await super().read_resource(uri, context)


def build_server(
    settings: Settings,
    *,
    transport: Literal["stdio", "http"] = "stdio",
    stopping: anyio.Event | None = None,
    closed: threading.Event | None = None,
    ops: Ops | None = None,
    stateless: bool = False,
) -> MCPServer:
    """The MCP server with its tools; the HTTP clients and catalogue are made in its lifespan.

    ``closed`` is set once the lifespan has ended: every ledger record written (or given up on), every client shut.
    """

    tasks = TasksExtension()
    server = QolabaServer(
        "qolaba-mcp",
        version=__version__,
        instructions=INSTRUCTIONS,
        lifespan=lifespan(
            settings, transport=transport, stopping=stopping, closed=closed, ops=ops, stateless=stateless
        ),
        log_level=logging.getLevelName(logging.getLogger().getEffectiveLevel()),  # type: ignore[arg-type]
        tools=[
            shows_gallery(generate_image_tool(settings)),
            shows_gallery(get_task_tool(settings)),
            list_models_tool(),
            shows_gallery(list_generations_tool()),
            get_spend_tool(),
            app_only(gallery_image_tool()),
        ],
        extensions=[gallery_extension(), tasks],
    )
    tasks.bind(server)
    add_resources(server)
    if ops is not None:
        ops.known_tools = frozenset(tool.name for tool in server._tool_manager.list_tools())
        if ops.metrics is not None:
            server.middleware.append(OperationDuration(ops, transport="pipe" if transport == "stdio" else "tcp"))
    return server
