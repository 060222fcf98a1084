"""Works in every client: portable schemas, readable links, content by protocol, argument errors for the model."""

from __future__ import annotations

import base64
import json
from typing import Any

import jsonschema
import pytest
from mcp.types import CallToolResult, ResourceLink, TextContent

from qolaba_mcp._config import Settings
from qolaba_mcp.api._catalog import BUILTIN_MODELS
from qolaba_mcp.sandbox import SandboxServer
from qolaba_mcp.server._server import build_server

from .conftest import HttpServer, RawStdio, connect, server_env

pytestmark = pytest.mark.anyio

NOT_PORTABLE = {"$ref", "$defs", "examples", "additionalProperties", "title", "default"}


async def _tools() -> list[Any]:
    return await build_server(Settings()).list_tools()


def _walk(schema: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    """Every sub-schema with its path."""
    found = []
    if isinstance(schema, dict):
        found.append((path, schema))
        for key, value in schema.items():
            if key == "properties":
                for name, sub in value.items():
                    found += _walk(sub, f"{path}.{name}")
            elif isinstance(value, dict | list):
                found += _walk(value, f"{path}/{key}")
    elif isinstance(schema, list):
        for index, item in enumerate(schema):
            found += _walk(item, f"{path}[{index}]")
    return found


async def test_schemas_use_only_portable_keywords() -> None:
    for tool in await _tools():
        for schema in (tool.input_schema, tool.output_schema):
            jsonschema.Draft202012Validator.check_schema(schema)
            for path, node in _walk(schema):
                assert not NOT_PORTABLE & set(node), f"{tool.name}{path}: {sorted(NOT_PORTABLE & set(node))}"
                assert None not in node.get("enum", []), f"{tool.name}{path}: a null inside enum breaks Gemini"


async def test_every_input_field_is_described_with_its_limits() -> None:
    for tool in await _tools():
        for path, node in _walk(tool.input_schema):
            if path.count(".") == 0 or path.endswith(("]", "/items")):
                continue  # the root, anyOf variants and array items are described by their property
            description = node.get("description", "")
            assert description, f"{tool.name}{path} has no description"
            variants = [node, *node.get("anyOf", [])]
            for key in ("minimum", "maximum", "maxLength", "maxItems"):
                value = next((v[key] for v in variants if key in v), None)
                if value is not None and value < 2**53:
                    assert f"{value:g}" in description, f"{tool.name}{path}: {key} {value} not in {description!r}"
    generate = next(t for t in await _tools() if t.name == "generate_image")
    props = generate.input_schema["properties"]
    assert "16:9" in props["aspect_ratio"]["description"] and "max_images" in props["num_images"]["description"]


async def test_tools_list_stays_under_8_kb() -> None:
    listed = [t.model_dump(mode="json", by_alias=True, exclude_none=True) for t in await _tools()]
    assert len(json.dumps(listed, separators=(",", ":")).encode()) <= 8 * 1024  # as sent: compact JSON


async def test_a_call_filling_every_field_with_null_validates_for_every_model() -> None:
    """Strict-mode callers send every property, null where unused: that must be a valid call for every model."""
    tools = {t.name: t for t in await _tools()}
    props = tools["generate_image"].input_schema["properties"]
    for model in BUILTIN_MODELS:
        call: dict[str, Any] = dict.fromkeys(props)
        call["model"] = model.id
        for name in model.required:
            call[name] = {"image_urls": ["https://example.com/a.png"], "mask_url": "https://example.com/m.png"}.get(
                name, "a fox"
            )
        jsonschema.validate(call, tools["generate_image"].input_schema)
    jsonschema.validate({"task_id": "task_1", "wait_seconds": None, "save": None}, tools["get_task"].input_schema)
    jsonschema.validate({"capability": None}, tools["list_models"].input_schema)


async def test_null_means_not_given(sandbox: SandboxServer) -> None:
    async with connect("memory", "auto", base_url=sandbox.base_url, QOLABA_SAVE="off") as client:
        listed = await client.list_tools()
        props = next(t for t in listed.tools if t.name == "generate_image").input_schema["properties"]
        call = {**dict.fromkeys(props), "model": "vertex/nano-banana-flash", "prompt": "a fox", "wait_seconds": 10}
        result = await client.call_tool("generate_image", call)
        assert not result.is_error, result.content
        assert result.structured_content["status"] == "SUCCESS"  # type: ignore[index]
        task_id = result.structured_content["task_id"]  # type: ignore[index]
        again = await client.call_tool("get_task", {"task_id": task_id, "wait_seconds": None, "save": None})
        assert again.structured_content["status"] == "SUCCESS"  # type: ignore[index]
        everything = await client.call_tool("list_models", {"capability": None})
        assert len(everything.structured_content["models"]) == len(BUILTIN_MODELS)  # type: ignore[index]


def _error_text(result: CallToolResult) -> str:
    assert result.is_error
    return "\n".join(block.text for block in result.content if isinstance(block, TextContent))


# One row per class of argument error the fuzz corpus produces: (tool, arguments, words the text must hold).
ARGUMENT_ERRORS = [
    ("generate_image", {"model": "m", "num_images": 11}, ["num_images", "at most 10", "11", "Fix"]),
    ("generate_image", {"model": "m", "num_images": 0}, ["num_images", "at least 1", "0", "Fix"]),
    ("generate_image", {"model": "m", "num_images": True}, ["num_images", "true", "give a number"]),
    ("generate_image", {"model": "m", "num_images": "four"}, ["num_images", "integer", "'four'", "Fix"]),
    ("generate_image", {"model": "m", "prompt": "x" * 5000}, ["prompt", "4000 characters", "5000 characters"]),
    ("generate_image", {"model": "m", "aspectRatio": "16:9"}, ["aspectRatio", "not an argument", "aspect_ratio"]),
    ("generate_image", {"prompt": "a fox"}, ["model", "is required", "add it"]),
    ("generate_image", {"model": "m", "aspect_ratio": "wide"}, ["aspect_ratio", "'wide'", "Fix"]),
    ("generate_image", {"model": "m", "mode": "fast"}, ["mode", "'async' or 'sync'", "'fast'"]),
    ("generate_image", {"model": "m", "image_urls": ["u"] * 17}, ["image_urls", "at most 16 items", "Fix"]),
    ("generate_image", {"model": "m", "reference_images": [{"description": "d"}]}, ["reference_images[0].url"]),
    ("generate_image", {"model": "m", "wait_seconds": -1}, ["wait_seconds", "at least 0", "-1"]),
    ("get_task", {"task_id": ".."}, ["task_id", "not a task_id", "'..'"]),
    ("get_task", {}, ["task_id", "is required"]),
    ("list_models", {"capability": "video"}, ["capability", "'video'", "allowed values"]),
]


async def test_argument_errors_are_written_for_the_model(sandbox: SandboxServer) -> None:
    async with connect("memory", "auto", base_url=sandbox.base_url) as client:
        for tool, arguments, words in ARGUMENT_ERRORS:
            message = _error_text(await client.call_tool(tool, arguments))
            for word in words:
                assert word in message, f"{tool} {arguments}: {word!r} not in {message!r}"
            for leak in ("validation error for", "pydantic", "Arguments", "input_value", "errors.pydantic.dev"):
                assert leak not in message, f"{tool} {arguments}: {leak!r} in {message!r}"
            assert len(message) < 2000
    assert sandbox.stats()["submissions"] == 0  # every one was refused before the API


@pytest.mark.parametrize(("transport", "mode"), [("memory", "auto"), ("memory", "legacy"), ("http", "auto")])
async def test_every_resource_link_reads_back(
    sandbox: SandboxServer, transport: str, mode: str, request: pytest.FixtureRequest
) -> None:
    http_url = request.getfixturevalue("http_server").url if transport == "http" else None
    async with connect(transport, mode, base_url=sandbox.base_url, http_url=http_url, QOLABA_SAVE="off") as client:
        result = await client.call_tool(
            "generate_image", {"model": "vertex/nano-banana-flash", "prompt": "two foxes", "num_images": 2}
        )
        links = [block for block in result.content if isinstance(block, ResourceLink)]
        assert len(links) == 2
        for link in links:
            assert str(link.uri).startswith("http://127.0.0.1:")  # the image's own URL: usable as an image URL
            read = await client.read_resource(str(link.uri))
            blob = read.contents[0]
            assert blob.mime_type == "image/png"
            assert base64.b64decode(blob.blob).startswith(b"\x89PNG")  # type: ignore[union-attr]
        # Never an open fetcher: a URL this server did not return is not read.
        with pytest.raises(Exception, match="not an image link this server returned"):
            await client.read_resource("https://example.com/cat.png")


def _generate_with_protocol(base_url: str, version: str) -> dict[str, Any]:
    """A raw JSON-RPC client over stdio that negotiates ``version`` (the SDK client always asks for its newest)."""
    server = RawStdio(server_env(base_url, QOLABA_SAVE="off"), protocol=version)
    try:
        assert server.hello["protocolVersion"] == version
        arguments = {"model": "vertex/nano-banana-flash", "prompt": "a fox", "num_images": 2}
        return server.call("generate_image", arguments)
    finally:
        server.stop()


@pytest.mark.parametrize(("version", "links"), [("2025-03-26", False), ("2024-11-05", False), ("2025-06-18", True)])
def test_content_follows_the_negotiated_protocol(sandbox: SandboxServer, version: str, links: bool) -> None:
    result = _generate_with_protocol(sandbox.base_url, version)
    kinds = [block["type"] for block in result["content"]]
    assert ("resource_link" in kinds) is links
    assert kinds.count("image") == 2  # previews exist in every version
    if not links:  # the text is where such a client finds the URLs
        for image in result["structuredContent"]["images"]:
            assert image["url"] in result["content"][0]["text"]


async def test_http_links_read_back_on_a_stateless_server(sandbox: SandboxServer) -> None:
    """Links on the API's own origin read back through a replica that did not return them."""
    first = HttpServer(server_env(sandbox.base_url, QOLABA_SAVE="off"), "--stateless")
    second = HttpServer(server_env(sandbox.base_url, QOLABA_SAVE="off"), "--stateless")
    try:
        async with connect("http", "auto", base_url=sandbox.base_url, http_url=first.url) as client:
            result = await client.call_tool("generate_image", {"model": "vertex/nano-banana-flash", "prompt": "owl"})
        link = next(block for block in result.content if isinstance(block, ResourceLink))
        async with connect("http", "auto", base_url=sandbox.base_url, http_url=second.url) as client:
            read = await client.read_resource(str(link.uri))
        assert base64.b64decode(read.contents[0].blob).startswith(b"\x89PNG")  # type: ignore[union-attr]
    finally:
        first.stop()
        second.stop()


async def test_resource_links_off_puts_the_urls_in_the_text_only(sandbox: SandboxServer) -> None:
    """QOLABA_RESOURCE_LINKS=off (for a client that fails on a resource_link): no such block in generate_image or
    get_task results, the same previews, and every URL in the text."""
    arguments = {"model": "vertex/nano-banana-flash", "prompt": "a fox", "num_images": 2}
    async with connect("memory", "auto", base_url=sandbox.base_url, QOLABA_RESOURCE_LINKS="off") as client:
        made = await client.call_tool("generate_image", arguments)
        task_id = made.structured_content["task_id"]  # type: ignore[index]
        again = await client.call_tool("get_task", {"task_id": task_id})
    for result in (made, again):
        kinds = [block.type for block in result.content]
        assert "resource_link" not in kinds
        assert kinds.count("image") == 2
        assert isinstance(result.content[0], TextContent)
        for image in result.structured_content["images"]:  # type: ignore[index]
            assert image["url"] in result.content[0].text
