"""Tool schemas through the converters that hosts run on them (`schema_converters.py CHECK SERVER_COMMAND ARG...`).

CHECK is one of:
  google-genai    each MCP tool through google-genai's own MCP bridge (google.genai._mcp_utils.mcp_to_gemini_tool,
                  what the SDK runs on MCP tools passed to it), the result validated by its pydantic models
                  (types.Tool / types.FunctionDeclaration) with every property and `required` kept; and each input
                  and output schema as FunctionDeclaration.parameters_json_schema / response_json_schema.
  json-schema     every input and output schema is valid JSON Schema 2020-12 (Draft202012Validator.check_schema),
                  with an object root and every `$ref` resolving: what Anthropic's API requires of input_schema.
The tools are listed with the MCP Python SDK's stdio client.
"""

from __future__ import annotations

import sys
import traceback
from typing import Any

from _common import Report, describe, run, server_env, versions
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client

CHECKS = ("google-genai", "json-schema")


def field(obj: Any, snake: str, camel: str) -> Any:
    return getattr(obj, snake) if hasattr(obj, snake) else getattr(obj, camel, None)


def walk(schema: Any, path: str = "") -> list[tuple[str, Any]]:
    """Every (path, node) of a JSON value, root first."""
    nodes = [(path or "<root>", schema)]
    if isinstance(schema, dict):
        for key, value in schema.items():
            nodes.extend(walk(value, f"{path}.{key}" if path else key))
    elif isinstance(schema, list):
        for index, value in enumerate(schema):
            nodes.extend(walk(value, f"{path}[{index}]"))
    return nodes


def schema_features(schema: Any) -> str:
    """The constructs converters commonly trip on, with where they are, to pinpoint a converter's failure."""
    found = []
    bools = [
        p for p, v in walk(schema) if isinstance(v, bool) and p.split(".")[-1] in ("additionalProperties", "items")
    ]
    if bools:
        found.append(f"boolean subschema at {', '.join(bools)}")
    refs = [p for p, v in walk(schema) if p.endswith("$ref")]
    if refs:
        found.append(f"$ref at {', '.join(refs)}")
    return f" [schema has {'; '.join(found)}]" if found else ""


def where_raised(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    inner = next((f for f in reversed(frames) if "site-packages" in f.filename), frames[-1] if frames else None)
    if inner is None:
        return ""
    short = inner.filename.split("site-packages/")[-1]
    return f" in {short}:{inner.name}"


async def list_tools() -> list[Any]:
    params = StdioServerParameters(command=sys.argv[2], args=sys.argv[3:], env=server_env())
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        return list((await session.list_tools()).tools)


def check_google_genai(report: Report, tools: list[Any]) -> str:
    from google.genai import _mcp_utils, types

    for tool in tools:
        schema = field(tool, "input_schema", "inputSchema") or {}
        try:
            converted = _mcp_utils.mcp_to_gemini_tool(tool)
        except Exception as exc:
            traceback.print_exc(file=sys.stdout)
            report.fail(
                f"mcp_to_gemini_tool({tool.name}) raised {describe(exc)}{where_raised(exc)}{schema_features(schema)}"
            )
            continue
        try:
            converted = types.Tool.model_validate(converted.model_dump())
            declarations = [
                types.FunctionDeclaration.model_validate(d.model_dump()) for d in converted.function_declarations or []
            ]
        except Exception as exc:
            report.fail(f"types.Tool/FunctionDeclaration rejected the converted {tool.name}: {describe(exc)}")
            continue
        if len(declarations) != 1 or declarations[0].parameters is None:
            report.fail(f"mcp_to_gemini_tool({tool.name}) gave {len(declarations)} declaration(s) without parameters")
            continue
        params = declarations[0].parameters
        lost = sorted(set(schema.get("properties") or {}) - set(params.properties or {}))
        lost_required = sorted(set(schema.get("required") or []) - set(params.required or []))
        report.check(
            not lost and not lost_required,
            f"mcp_to_gemini_tool({tool.name}): {len(params.properties or {})} properties kept",
            f"mcp_to_gemini_tool({tool.name}) dropped properties {lost} / required {lost_required}",
        )
        for name, key, value in (
            ("parameters_json_schema", "inputSchema", schema),
            ("response_json_schema", "outputSchema", field(tool, "output_schema", "outputSchema")),
        ):
            if value is None:
                continue
            try:
                types.FunctionDeclaration(name=tool.name, description=tool.description, **{name: value})
                report.ok(f"FunctionDeclaration({name}={tool.name}.{key}) accepted")
            except Exception as exc:
                report.fail(f"FunctionDeclaration({name}={tool.name}.{key}) rejected: {describe(exc)}")
    return f"{len(tools)} tools converted by google-genai"


def check_json_schema(report: Report, tools: list[Any]) -> str:
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import SchemaError
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT202012

    checked = 0
    for tool in tools:
        for key, schema in (
            ("inputSchema", field(tool, "input_schema", "inputSchema")),
            ("outputSchema", field(tool, "output_schema", "outputSchema")),
        ):
            if schema is None:
                if key == "inputSchema":
                    report.fail(f"{tool.name}: no inputSchema")
                continue
            checked += 1
            what = f"{tool.name}.{key}"
            try:
                Draft202012Validator.check_schema(schema)
            except SchemaError as exc:
                at = "/".join(map(str, exc.absolute_path)) or "<root>"
                report.fail(f"{what} is not valid JSON Schema 2020-12 at {at}: {exc.message}")
                continue
            if schema.get("type") != "object":
                report.fail(f"{what}: root type is {schema.get('type')!r}, not 'object'")
                continue
            resolver = Registry().with_resource("", Resource.from_contents(schema, DRAFT202012)).resolver()
            broken = []
            for path, node in walk(schema):
                if path.endswith("$ref") and isinstance(node, str):
                    try:
                        resolver.lookup(node)
                    except Exception as exc:
                        broken.append(f"{path} -> {node} ({describe(exc)})")
            report.check(
                not broken,
                f"{what}: valid 2020-12, object root, $refs resolve",
                f"{what}: unresolvable $ref {'; '.join(broken)}",
            )
    return f"{checked} schemas valid JSON Schema 2020-12"


async def main(report: Report) -> str:
    check = sys.argv[1]
    print(versions("mcp", "google-genai" if check == "google-genai" else "jsonschema"))
    tools = await report.step("tools/list", list_tools)
    if not tools:
        if tools is not None:
            report.fail("tools/list returned no tools")
        return ""
    report.check_tool_names(t.name for t in tools)
    return check_google_genai(report, tools) if check == "google-genai" else check_json_schema(report, tools)


if __name__ == "__main__":
    if len(sys.argv) < 3 or sys.argv[1] not in CHECKS:
        sys.exit(f"usage: {sys.argv[0]} {{{','.join(CHECKS)}}} SERVER_COMMAND [ARG...]")
    run(f"schema:{sys.argv[1]}", main)
