"""OpenAI Agents SDK against qolaba-mcp over stdio: MCPServerStdio lists the tools, the SDK converts each one to a
function tool in STRICT mode (MCPUtil.to_function_tool(..., convert_schemas_to_strict=True)) and must not fall back
to a non-strict schema; ensure_strict_json_schema is also called on each input schema directly so its exact error is
reported. Then call_tool list_models and generate_image, and read every resource_link back with read_resource."""

from __future__ import annotations

import copy
import inspect
import logging
import os
from typing import Any

# Let the SDK log the reason when it falls back from a strict schema (it logs only the fact by default).
os.environ["OPENAI_AGENTS_DONT_LOG_TOOL_DATA"] = "0"

from _common import GENERATE_ARGS, Report, describe, one_line, run, server_command, server_env, versions
from agents.mcp import MCPServerStdio, MCPUtil
from agents.strict_schema import ensure_strict_json_schema

# MCPUtil.to_function_tool converts an MCP tool's schema with `_reject_open_objects=True` (unless the schema is
# empty) where this SDK version has that keyword: the direct call below does the same, so it meets the same rules.
_SDK_REJECTS_OPEN_OBJECTS = "_reject_open_objects" in inspect.signature(ensure_strict_json_schema).parameters


def strict_as_the_sdk_does(schema: dict[str, Any]) -> dict[str, Any]:
    schema = copy.deepcopy(schema)
    empty = schema == {}
    schema.setdefault("properties", {})
    if _SDK_REJECTS_OPEN_OBJECTS:
        return ensure_strict_json_schema(schema, _reject_open_objects=not empty)
    return ensure_strict_json_schema(schema)


def field(obj: Any, snake: str, camel: str) -> Any:
    """An MCP type's field under the MCP SDK 2.x (snake_case) or 1.x (camelCase) name."""
    return getattr(obj, snake) if hasattr(obj, snake) else getattr(obj, camel, None)


def refs(schema: Any, path: str = "") -> list[str]:
    """Where a schema uses `$ref`, as `path -> target`: to say which part strict conversion could not take."""
    found: list[str] = []
    if isinstance(schema, dict):
        if isinstance(schema.get("$ref"), str):
            found.append(f"{path or '<root>'} -> {schema['$ref']}")
        for key, value in schema.items():
            found.extend(refs(value, f"{path}.{key}" if path else key))
    elif isinstance(schema, list):
        for index, value in enumerate(schema):
            found.extend(refs(value, f"{path}[{index}]"))
    return found


class StrictFallbacks(logging.Handler):
    """Records the SDK's own log line when it falls back from a strict schema."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "strict" in message.lower():
            self.messages.append(message)


async def main(report: Report) -> str:
    print(
        versions("openai-agents", "openai", "mcp"),
        f"(strict conversion rejects open objects: {_SDK_REJECTS_OPEN_OBJECTS})",
    )
    command, args = server_command()
    fallbacks = StrictFallbacks()
    sdk_logger = logging.getLogger("openai.agents")
    sdk_logger.addHandler(fallbacks)
    sdk_logger.setLevel(logging.DEBUG)
    server = MCPServerStdio(
        params={"command": command, "args": args, "env": server_env()},
        client_session_timeout_seconds=60,
        name="qolaba",
    )
    links_read = 0
    async with server:
        tools = await report.step("list_tools", server.list_tools)
        if tools is None:
            return ""
        report.check_tool_names(t.name for t in tools)
        for tool in tools:
            schema = field(tool, "input_schema", "inputSchema")
            try:
                strict_as_the_sdk_does(schema)
                report.ok(f"ensure_strict_json_schema({tool.name}): strict")
            except Exception as exc:
                where = refs(schema)
                hint = f" [$ref at {', '.join(where)}]" if where else ""
                report.fail(f"ensure_strict_json_schema({tool.name}) raised {describe(exc)}{hint}")
            before = len(fallbacks.messages)
            try:
                function_tool = MCPUtil.to_function_tool(tool, server, convert_schemas_to_strict=True)
            except Exception as exc:
                report.fail(f"MCPUtil.to_function_tool({tool.name}, strict) raised {describe(exc)}")
                continue
            logged = fallbacks.messages[before:]
            report.check(
                function_tool.strict_json_schema and not logged,
                f"to_function_tool({tool.name}): strict schema kept",
                f"to_function_tool({tool.name}) fell back to a NON-strict schema"
                + (f" (SDK logged: {one_line(logged[0], 200)})" if logged else ""),
            )

        listed = await report.step("call_tool list_models", lambda: server.call_tool("list_models", {}))
        if listed is not None:
            report.check(
                not field(listed, "is_error", "isError"),
                "list_models: not an error",
                f"list_models returned an error: {one_line(listed.content, 300)}",
            )
            report.check_models(field(listed, "structured_content", "structuredContent"))

        result = await report.step(
            "call_tool generate_image", lambda: server.call_tool("generate_image", GENERATE_ARGS)
        )
        if result is None:
            return ""
        if field(result, "is_error", "isError"):
            report.fail(f"generate_image returned an error: {one_line(result.content, 300)}")
        links = [c for c in result.content if getattr(c, "type", None) == "resource_link"]
        report.check_generated(field(result, "structured_content", "structuredContent"), len(links))
        for link in links:
            uri = str(link.uri)
            read = await report.step(f"read_resource {uri}", lambda uri=uri: server.read_resource(uri))
            if read is None:
                continue
            if not read.contents:
                report.fail(f"read_resource {uri}: no contents")
            for item in read.contents:
                blob = getattr(item, "blob", None)
                report.check_resource_blob(uri, field(item, "mime_type", "mimeType"), blob)
                links_read += 1
    return f"strict schemas for all tools, {links_read} link(s) read back"


if __name__ == "__main__":
    run("openai-agents", main)
