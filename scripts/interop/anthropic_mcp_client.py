"""Anthropic's Python SDK MCP helper against qolaba-mcp over stdio: the mcp SDK's ClientSession, each tool wrapped
by `async_mcp_tool` and called as its tool runner calls it (`await tool.call(input)`), which converts the MCP
result to Anthropic content blocks. No model is called: the conversion is what this checks, both ways.

The helper converts text, image and embedded resource blocks and raises UnsupportedMCPValueError on any other,
a `resource_link` included: with the default server every generate_image and get_task result fails to convert (the
runner hands the model an error for an image that was made and paid for). That failure is asserted, as the Client
notes document it; with QOLABA_RESOURCE_LINKS=off the same results convert, previews as image blocks, URLs in the
text."""

from __future__ import annotations

import base64
from typing import Any

from _common import GENERATE_ARGS, Report, describe, image_kind, one_line, run, server_command, server_env, versions
from anthropic.lib.tools.mcp import UnsupportedMCPValueError, async_mcp_tool
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client

UNSUPPORTED = "Unsupported MCP content type: resource_link"


async def converted(report: Report, links: str) -> list[Any] | None:
    """generate_image, then get_task on its task, through the helper, on a server with QOLABA_RESOURCE_LINKS=`links`.

    Returns the blocks of both results, or None when a conversion failed (a failure recorded unless expected)."""
    command, args = server_command()
    env = server_env() | {"QOLABA_RESOURCE_LINKS": links}
    async with (
        stdio_client(StdioServerParameters(command=command, args=args, env=env)) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        listed = await report.step(f"[links {links}] list_tools", session.list_tools)
        if listed is None:
            return None
        tools = {tool.name: async_mcp_tool(tool, session) for tool in listed.tools}
        report.check_tool_names(tools)
        blocks: list[Any] | None = []
        for name in ("generate_image", "get_task"):
            if name == "generate_image":
                arguments: dict[str, Any] = GENERATE_ARGS
            else:  # the task the helper's call made: the helper itself hands back no structured result
                history = await session.call_tool("list_generations", {"limit": 1})
                rows = (history.structured_content or {}).get("generations") or [{}]
                arguments = {"task_id": rows[0].get("task_id")}
            try:
                content = await tools[name].call(arguments)
            except UnsupportedMCPValueError as exc:
                if links == "on" and UNSUPPORTED in str(exc):
                    report.ok(f"[links on] {name}: {UNSUPPORTED} (as the Client notes document)")
                else:
                    report.fail(f"[links {links}] {name}: {describe(exc)}")
                blocks = None
                continue
            except Exception as exc:
                report.fail(f"[links {links}] {name}: {describe(exc)}")
                blocks = None
                continue
            if not isinstance(content, list):
                report.fail(f"[links {links}] {name}: converted to {type(content).__name__}, not content blocks")
                blocks = None
                continue
            report.ok(f"[links {links}] {name}: converted to {', '.join(str(b.get('type')) for b in content)}")
            if links == "on":
                report.fail(
                    f"[links on] {name}: the helper converted a result with resource_link blocks: it supports them "
                    "now, so the Client notes' Anthropic line (and this check) should change"
                )
            if blocks is not None:
                blocks += content
        return blocks


async def main(report: Report) -> str:
    print(versions("anthropic", "mcp"))
    await converted(report, "on")
    blocks = await converted(report, "off")
    if blocks is None:
        return ""
    images = [b for b in blocks if b.get("type") == "image"]
    for block in images:
        source = block.get("source") or {}
        data = base64.b64decode(source.get("data", ""))
        report.check(
            source.get("type") == "base64" and image_kind(data) == source.get("media_type"),
            f"[links off] image block: {len(data)} bytes of {source.get('media_type')}",
            f"[links off] image block not a base64 image: {one_line(source, 200)[:200]}",
        )
    texts = " ".join(str(b.get("text")) for b in blocks if b.get("type") == "text")
    report.check(
        images and "http" in texts,
        f"[links off] {len(images)} image block(s), the URLs in the text",
        f"[links off] {len(images)} image block(s); text: {one_line(texts, 200)}",
    )
    return (
        "resource_link unsupported, as documented; with QOLABA_RESOURCE_LINKS=off the image block converts "
        f"({len(images)} image block(s) from generate_image and get_task)"
    )


if __name__ == "__main__":
    run("anthropic-mcp-helper", main)
