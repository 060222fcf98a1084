"""pydantic-ai against qolaba-mcp over stdio: the server is a toolset of an Agent whose model is a script
(FunctionModel, no network) calling list_models, then generate_image with explicit arguments. Checks the tool
returns pydantic-ai hands the model, and reads every resource link back.

pydantic-ai 1.x: `MCPServerStdio`, whose tool returns read each resource_link inline (so a link it cannot read
raises). pydantic-ai 2.x removed `MCPServerStdio`; `MCPToolset` over fastmcp's `StdioTransport` is its stdio
toolset, and it hands the model each link's URI, which this client then reads with `MCPToolset.read_resource`.
"""

from __future__ import annotations

import sys
import traceback
import warnings
from importlib import metadata
from typing import Any

from _common import GENERATE_ARGS, Report, describe, image_kind, one_line, run, server_command, server_env, versions
from pydantic_ai import Agent
from pydantic_ai.messages import (
    BinaryContent,
    ModelMessage,
    ModelRequest,
    ModelResponse,
    RetryPromptPart,
    TextPart,
    ToolCallPart,
    ToolReturnPart,
    UserPromptPart,
)
from pydantic_ai.models.function import AgentInfo, FunctionModel

MAJOR = int(metadata.version("pydantic-ai-slim").split(".")[0])


def make_toolset() -> Any:
    command, args = server_command()
    if MAJOR < 2:
        from pydantic_ai.mcp import MCPServerStdio

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # 1.x deprecates it in favour of MCPToolset
            return MCPServerStdio(command, args, env=server_env(), timeout=60, read_timeout=120)
    from fastmcp.client.transports import StdioTransport
    from pydantic_ai.mcp import MCPToolset

    return MCPToolset(StdioTransport(command=command, args=args, env=server_env()), init_timeout=60, read_timeout=120)


def returns_by_tool(messages: list[ModelMessage]) -> dict[str, list[Any]]:
    """What the model was handed for each tool: the return's content plus any user content split off with it."""
    seen: dict[str, list[Any]] = {}
    for message in messages:
        if not isinstance(message, ModelRequest):
            continue
        current: list[Any] | None = None
        for part in message.parts:
            if isinstance(part, ToolReturnPart):
                current = seen.setdefault(part.tool_name, [])
                content = part.content
                current.extend(content if isinstance(content, list) else [content])
            elif isinstance(part, UserPromptPart) and current is not None:
                content = part.content
                current.extend(content if isinstance(content, list) else [content])
    return seen


async def main(report: Report) -> str:
    print(versions("pydantic-ai-slim", "mcp", "fastmcp-slim"))
    toolset = make_toolset()
    plan = [("list_models", {}), ("generate_image", dict(GENERATE_ARGS))]
    offered: list[str] = []
    called: list[str] = []

    def scripted_model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        offered[:] = [t.name for t in info.function_tools]
        retries = [
            p for m in messages if isinstance(m, ModelRequest) for p in m.parts if isinstance(p, RetryPromptPart)
        ]
        if retries or not plan:
            return ModelResponse(parts=[TextPart("done")])
        name, args = plan.pop(0)
        called.append(name)
        return ModelResponse(parts=[ToolCallPart(name, args)])

    # Which URIs the toolset reads (1.x reads each resource_link of a tool result through this method).
    reads: list[str] = []
    read_resource = toolset.read_resource

    async def counted_read(uri: Any) -> Any:
        reads.append(str(uri))
        return await read_resource(uri)

    toolset.read_resource = counted_read

    agent = Agent(FunctionModel(scripted_model), toolsets=[toolset])
    links_read = 0
    async with toolset:
        try:
            result = await agent.run("Make the image.")
        except Exception as exc:
            traceback.print_exc(file=sys.stdout)
            report.fail(f"agent.run raised{f' in the {called[-1]} call' if called else ''}: {describe(exc)}")
            result = None
        report.check_tool_names(offered)
        if result is None:
            return ""
        messages = result.all_messages()
        for part in (p for m in messages if isinstance(m, ModelRequest) for p in m.parts):
            if isinstance(part, RetryPromptPart):
                report.fail(
                    f"tool {part.tool_name} failed, the model was asked to retry: {one_line(part.content, 300)}"
                )
        returned = returns_by_tool(messages)
        listed = returned.get("list_models")
        report.check(listed, "list_models: returned to the model", "list_models: no tool return reached the model")
        handed = returned.get("generate_image")
        if not handed:
            report.fail("generate_image: no tool return reached the model")
            return ""
        kinds = [type(item).__name__ for item in handed]
        report.ok(f"generate_image handed the model: {', '.join(kinds)}")
        binaries = [item for item in handed if isinstance(item, BinaryContent)]
        for item in binaries:
            kind = image_kind(item.data)
            report.check(
                kind == item.media_type,
                f"binary content: {len(item.data)} bytes of {kind}",
                f"binary content of media type {item.media_type} holds {kind or 'no known image format'}",
            )
        if MAJOR < 2:
            # MCPServerStdio read each link into a BinaryContent itself (checked above with the previews).
            links_read = len(reads)
            report.check(
                reads,
                f"MCPServerStdio read {len(reads)} resource link(s) inline: {', '.join(reads)}",
                "MCPServerStdio read no resource link: the result had none",
            )
        else:
            uris = [
                item
                for item in handed
                if isinstance(item, str) and "://" in item and not any(c.isspace() for c in item)
            ]
            report.check(
                uris, f"{len(uris)} resource link URI(s) handed over", "no resource link URI handed to the model"
            )
            for uri in uris:
                contents = await report.step(f"MCPToolset.read_resource {uri}", lambda uri=uri: read_resource(uri))
                if contents is None:
                    continue
                for item in contents if isinstance(contents, list) else [contents]:
                    if isinstance(item, BinaryContent):
                        report.check_resource_blob(uri, item.media_type, data=item.data)
                        links_read += 1
                    else:
                        report.fail(f"MCPToolset.read_resource {uri}: text for an image link ({one_line(item, 100)})")
    return f"{links_read} link(s) read back through pydantic-ai {metadata.version('pydantic-ai-slim')}"


if __name__ == "__main__":
    run("pydantic-ai", main)
