"""fastmcp's Client against qolaba-mcp over stdio: list tools, list_models, generate_image, read every link back."""

from __future__ import annotations

from _common import GENERATE_ARGS, Report, one_line, run, server_command, server_env, versions
from fastmcp import Client
from fastmcp.client.transports import StdioTransport
from mcp import types as mcp_types


async def main(report: Report) -> str:
    print(versions("fastmcp", "mcp"))
    command, args = server_command()
    client = Client(StdioTransport(command=command, args=args, env=server_env()), timeout=60, init_timeout=60)
    async with client:
        print(f"negotiated protocol {client.protocol_version}")
        tools = await report.step("tools/list", client.list_tools)
        if tools is not None:
            report.check_tool_names(t.name for t in tools)

        listed = await report.step("call_tool list_models", lambda: client.call_tool("list_models", {}))
        if listed is not None:
            report.check_models(listed.structured_content)

        result = await report.step(
            "call_tool generate_image", lambda: client.call_tool("generate_image", GENERATE_ARGS)
        )
        if result is None:
            return ""
        links = [c for c in result.content if isinstance(c, mcp_types.ResourceLink)]
        report.check_generated(result.structured_content, len(links))
        for link in links:
            uri = str(link.uri)
            contents = await report.step(f"read_resource {uri}", lambda uri=uri: client.read_resource(uri))
            if contents is None:
                continue
            if not contents:
                report.fail(f"read_resource {uri}: no contents")
            for item in contents:
                if isinstance(item, mcp_types.BlobResourceContents):
                    report.check_resource_blob(uri, item.mime_type, item.blob)
                else:
                    report.fail(f"read_resource {uri}: text contents for an image link ({one_line(item, 120)})")
    return f"{len(links)} link(s) read back"


if __name__ == "__main__":
    run("fastmcp", main)
