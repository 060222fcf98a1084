"""langchain-mcp-adapters against qolaba-mcp over stdio: a MultiServerMCPClient with a held session, the tools
loaded with load_mcp_tools(session), invoked with `ainvoke` as a model's tool call would be (content and artifact),
and every linked resource read back through the adapter's own get_mcp_resource(session, uri)."""

from __future__ import annotations

from typing import Any

from _common import GENERATE_ARGS, Report, one_line, run, server_command, server_env, versions
from langchain_core.messages import ToolMessage
from langchain_mcp_adapters.client import MultiServerMCPClient
from langchain_mcp_adapters.resources import get_mcp_resource
from langchain_mcp_adapters.tools import load_mcp_tools


async def invoke(tool: Any, args: dict[str, Any], call_id: str) -> ToolMessage:
    """A tool call as an agent makes it, so the tool answers with a ToolMessage carrying content and artifact."""
    message = await tool.ainvoke({"type": "tool_call", "name": tool.name, "args": args, "id": call_id})
    if not isinstance(message, ToolMessage):
        raise TypeError(f"{tool.name} returned {type(message).__name__}, not a ToolMessage")
    return message


def structured(message: ToolMessage) -> Any:
    artifact = message.artifact
    if isinstance(artifact, dict):
        return artifact.get("structured_content")
    return getattr(artifact, "structured_content", None)


async def main(report: Report) -> str:
    print(versions("langchain-mcp-adapters", "langchain-core", "mcp"))
    command, args = server_command()
    client = MultiServerMCPClient(
        {"qolaba": {"transport": "stdio", "command": command, "args": args, "env": server_env()}}
    )
    links_read = 0
    async with client.session("qolaba") as session:
        tools = await report.step("load_mcp_tools", lambda: load_mcp_tools(session))
        if tools is None:
            return ""
        by_name = {tool.name: tool for tool in tools}
        report.check_tool_names(by_name)

        if "list_models" in by_name:
            listed = await report.step("list_models.ainvoke", lambda: invoke(by_name["list_models"], {}, "call-1"))
            if listed is not None:
                report.check(
                    listed.status != "error",
                    "list_models: status success",
                    f"list_models: error ToolMessage: {one_line(listed.content, 300)}",
                )
                report.check_models(structured(listed))
        if "generate_image" not in by_name:
            return ""
        message = await report.step(
            "generate_image.ainvoke", lambda: invoke(by_name["generate_image"], GENERATE_ARGS, "call-2")
        )
        if message is None:
            return ""
        if message.status == "error":
            report.fail(f"generate_image: error ToolMessage: {one_line(message.content, 300)}")
            return ""
        blocks = message.content if isinstance(message.content, list) else [message.content]
        kinds = [b.get("type") if isinstance(b, dict) else type(b).__name__ for b in blocks]
        report.ok(f"generate_image content blocks: {', '.join(map(str, kinds))}")
        # The adapter turns each image resource_link into an image block with its URI as `url`, and each inline
        # preview into an image block with base64 data.
        linked = [b["url"] for b in blocks if isinstance(b, dict) and b.get("type") == "image" and b.get("url")]
        previews = [b for b in blocks if isinstance(b, dict) and b.get("type") == "image" and b.get("base64")]
        result = structured(message)
        notes = (result or {}).get("notes") if isinstance(result, dict) else None
        # A preview may be missing only when the result's notes say why (the server's contract).
        report.check(
            previews or notes,
            f"{len(previews)} inline preview(s)" + (f"; notes: {one_line(notes, 200)}" if notes else ""),
            "no inline image preview in the content, and no note saying why",
        )
        report.check_generated(result, len(linked))
        for uri in linked:
            blobs = await report.step(f"get_mcp_resource {uri}", lambda uri=uri: get_mcp_resource(session, uri))
            if blobs is None:
                continue
            if not blobs:
                report.fail(f"get_mcp_resource {uri}: no contents")
            for blob in blobs:
                data = blob.as_bytes()
                report.check_resource_blob(uri, blob.mimetype, data=data)
                links_read += 1
    return f"{links_read} link(s) read back"


if __name__ == "__main__":
    run("langchain-mcp-adapters", main)
