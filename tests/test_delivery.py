"""Image delivery: previews, downloads and saved files (units), then whole results over real transports."""

from __future__ import annotations

import base64
import io
import json
import re
import sys
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp.types import BlobResourceContents, ImageContent, ResourceLink, TextContent, TextResourceContents
from PIL import Image

from qolaba_mcp.api._wire import ImageOutput
from qolaba_mcp.images._delivery import Delivery, DownloadError, NoPreview, default_output_dir, make_preview, safe_name
from qolaba_mcp.sandbox import SandboxServer
from qolaba_mcp.sandbox._png import render_png

from .conftest import connect

ONE_MIB = 1024 * 1024
FOUR = {"model": "vertex/nano-banana-pro", "prompt": "four cats", "aspect_ratio": "16:9", "num_images": 4}


@pytest.mark.parametrize(
    ("task_id", "stem"),
    [
        ("task_1705312200000_abc123", "task_1705312200000_abc123"),
        ("../../etc/passwd", "______etc_passwd"),
        ("C:\\Windows\\x:y", "C__Windows_x_y"),
        ("chat/ünïcode", "chat__n_code"),
        ("", "task"),
    ],
)
def test_file_names_come_only_from_task_id_and_index(task_id: str, stem: str) -> None:
    name = safe_name(task_id, 0, "image/png")
    assert re.fullmatch(rf"{stem}-[0-9a-f]{{16}}_0\.png", name), name
    assert re.fullmatch(r"t-[0-9a-f]{16}_3\.jpg", safe_name("t", 3, "image/jpeg"))


@pytest.mark.parametrize(
    ("platform", "env", "expected"),
    [
        ("linux", {"XDG_DATA_HOME": "/data"}, "/data/qolaba-mcp/images"),
        ("win32", {"LOCALAPPDATA": "C:/Users/me/AppData/Local"}, "C:/Users/me/AppData/Local/qolaba-mcp/images"),
        ("darwin", {}, "Library/Application Support/qolaba-mcp/images"),
    ],
)
def test_default_output_dir(monkeypatch: pytest.MonkeyPatch, platform: str, env: dict[str, str], expected: str) -> None:
    monkeypatch.setattr(sys, "platform", platform)
    for name in ("XDG_DATA_HOME", "LOCALAPPDATA"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert default_output_dir().as_posix().endswith(expected)


def decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def test_preview_of_a_4k_png_is_a_small_jpeg() -> None:
    png = render_png(width=3840, height=2160, key="4k")
    data, mime = make_preview(png, "image/png", 25_000, "on")
    assert mime == "image/jpeg" and len(data) <= 25_000
    assert decode(data).size == (512, 288)


def test_transparent_images_preview_as_webp() -> None:
    out = io.BytesIO()
    Image.new("RGBA", (900, 600), (10, 200, 30, 0)).save(out, format="PNG")
    data, mime = make_preview(out.getvalue(), "image/png", 20_000, "on")
    assert mime == "image/webp" and decode(data).mode == "RGBA" and max(decode(data).size) <= 512


def test_preview_shrinks_to_a_tight_budget_or_gives_up() -> None:
    noisy = io.BytesIO()
    Image.effect_noise((1024, 1024), 80).convert("RGB").save(noisy, format="PNG")
    small = make_preview(noisy.getvalue(), "image/png", 8_000, "on")
    assert len(small[0]) <= 8_000 and max(decode(small[0]).size) < 512
    with pytest.raises(NoPreview, match="no preview fits 100 bytes"):
        make_preview(noisy.getvalue(), "image/png", 100, "on")


def test_full_mode_inlines_the_original_when_it_fits() -> None:
    png = render_png(width=640, height=360, key="full")
    assert make_preview(png, "image/png", len(png), "full") == (png, "image/png")
    assert make_preview(png, "image/png", len(png) - 1, "full")[1] == "image/jpeg"


def test_a_broken_image_gives_no_preview_but_a_reason() -> None:
    with pytest.raises(NoPreview, match="cannot decode: not a supported image") as caught:
        make_preview(b"\x89PNG\r\n\x1a\nnot really", "image/png", 50_000, "on")
    assert caught.value.undecodable


@pytest.mark.anyio
async def test_fetch_rules(qolaba_sandbox: SandboxServer, tmp_path: Path) -> None:
    qolaba_sandbox.configure(latency=0)
    body = httpx2.post(
        f"{qolaba_sandbox.base_url}/api/v1/images/generate",
        json={"model": "vertex/nano-banana-flash", "prompt": "p"},
        headers={"X-API-Key": "k"},
    ).json()
    url = body["images"][0]["url"]
    async with httpx2.AsyncClient() as http:
        delivery = Delivery(
            http=http,
            output_dir=tmp_path,
            max_download_bytes=2_000,
            trusted_origins=frozenset({qolaba_sandbox.base_url}),
        )
        with pytest.raises(DownloadError, match="cap"):
            await delivery.fetch(url)
        delivery.max_download_bytes = 10_000_000
        assert (await delivery.fetch(url))[1] == "image/png"
        for bad, why in [
            ("file:///etc/passwd", "only http and https"),
            (f"{qolaba_sandbox.base_url}/_sandbox/stats", "not an image"),
            (f"{qolaba_sandbox.base_url}/_sandbox/images/nope/0.png", "404"),
        ]:
            with pytest.raises(DownloadError, match=why):
                await delivery.fetch(bad)
        # a folder that cannot be made is a note, not a failure
        blocker = tmp_path / "a-file"
        blocker.write_text("x")
        delivery.output_dir = blocker / "images"
        delivered = await delivery.deliver("t1", [ImageOutput(url=url)], save=True)
    assert delivered.saved == [None] and "QOLABA_OUTPUT_DIR" in delivered.notes[0]
    assert len(delivered.previews) == 1


def blocks(result: Any, kind: type) -> list[Any]:
    return [block for block in result.content if isinstance(block, kind)]


def result_bytes(result: Any) -> int:
    return len(result.model_dump_json(by_alias=True, exclude_none=True).encode())


@pytest.mark.anyio
@pytest.mark.parametrize("transport", ["memory", "http"])
async def test_four_image_result_within_every_budget(
    sandbox: SandboxServer, transport: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    sandbox.configure(latency=0.2)
    http_url = request.getfixturevalue("http_server").url if transport == "http" else None
    async with connect(transport, "auto", base_url=sandbox.base_url, http_url=http_url) as client:
        listed = await client.list_tools()
        result = await client.call_tool("generate_image", {**FOUR, "save": True})
    assert len(listed.model_dump_json(by_alias=True, exclude_none=True).encode()) <= 8 * 1024
    assert not result.is_error
    text = blocks(result, TextContent)[0].text
    assert len(text.encode()) <= 2048
    links, previews = blocks(result, ResourceLink), blocks(result, ImageContent)
    assert len(links) == 4 and len(previews) == 4
    preview_bytes = [base64.b64decode(p.data) for p in previews]
    assert sum(len(b) for b in preview_bytes) <= 100_000
    for data, preview in zip(preview_bytes, previews, strict=True):
        assert preview.mime_type == "image/jpeg" and max(decode(data).size) <= 512
    assert result_bytes(result) < ONE_MIB
    saved = result.structured_content["saved_files"]  # type: ignore[index]
    assert len(saved) == 4
    for index, path in enumerate(saved):
        file = Path(path)
        assert file.name == safe_name(result.structured_content["task_id"], index, "image/png")  # type: ignore[index]
        assert decode(file.read_bytes()).size == (1280, 720)
    assert str(Path(saved[0]).parent) in text


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("env", "arguments", "previews", "mime"),
    [
        ({"QOLABA_PREVIEW": "off"}, {}, 0, None),
        # two originals (about 150-250 KB each: captioned sandbox PNGs) fit a 700 KB budget, so they go as they are
        ({"QOLABA_PREVIEW": "full", "QOLABA_PREVIEW_MAX_BYTES": "700000"}, {"num_images": 2}, 2, "image/png"),
        (
            {"QOLABA_PREVIEW": "full", "QOLABA_PREVIEW_MAX_BYTES": "700000"},
            {"quality": "4K", "num_images": 10},
            10,
            None,
        ),
        ({}, {"quality": "4K", "num_images": 10}, 10, "image/jpeg"),
        ({"QOLABA_DOWNLOAD_MAX_BYTES": "2048"}, {}, 0, None),
    ],
    ids=["off", "full", "full-10x4k", "on-10x4k", "downloads-fail"],
)
async def test_result_stays_under_1_mib_in_every_configuration(
    sandbox: SandboxServer, env: dict[str, str], arguments: dict[str, Any], previews: int, mime: str | None
) -> None:
    sandbox.configure(latency=0.1)
    async with connect("memory", "auto", base_url=sandbox.base_url, QOLABA_SAVE="off", **env) as client:
        result = await client.call_tool("generate_image", {**FOUR, **arguments})
    assert not result.is_error, blocks(result, TextContent)[0].text
    assert result_bytes(result) < ONE_MIB
    images = blocks(result, ImageContent)
    assert len(images) == previews
    if mime:
        assert {image.mime_type for image in images} == {mime}
    if env.get("QOLABA_DOWNLOAD_MAX_BYTES"):
        assert "download cap" in blocks(result, TextContent)[0].text  # told, and the call still succeeded
    assert result.structured_content["saved_files"] == []  # type: ignore[index]


@pytest.mark.anyio
async def test_http_does_not_save_unless_asked(sandbox: SandboxServer, http_server: Any) -> None:
    sandbox.configure(latency=0.1)
    async with connect("http", "legacy", base_url=sandbox.base_url, http_url=http_server.url) as client:
        default = await client.call_tool("generate_image", FOUR)
        asked = await client.call_tool("get_task", {"task_id": default.structured_content["task_id"], "save": True})  # type: ignore[index]
    assert default.structured_content["saved_files"] == []  # type: ignore[index]
    assert len(asked.structured_content["saved_files"]) == 4  # type: ignore[index]


@pytest.mark.anyio
@pytest.mark.parametrize("transport", ["memory", "http"])
async def test_results_are_readable_as_resources(
    sandbox: SandboxServer, transport: str, request: pytest.FixtureRequest
) -> None:
    sandbox.configure(latency=0.1)
    http_url = request.getfixturevalue("http_server").url if transport == "http" else None
    async with connect(transport, "auto", base_url=sandbox.base_url, http_url=http_url) as client:
        templates = {t.uri_template for t in (await client.list_resource_templates()).resource_templates}
        result = await client.call_tool("generate_image", {**FOUR, "num_images": 2, "save": False})
        task_id = result.structured_content["task_id"]  # type: ignore[index]
        task = (await client.read_resource(f"qolaba://tasks/{task_id}")).contents[0]
        image = (await client.read_resource(f"qolaba://images/{task_id}/1")).contents[0]
        failures = []
        for uri in (f"qolaba://images/{task_id}/2", "qolaba://tasks/task_unknown", f"qolaba://images/{task_id}/x"):
            try:
                await client.read_resource(uri)
            except Exception as exc:
                failures.append(str(exc))
    assert {"qolaba://tasks/{task_id}", "qolaba://images/{task_id}/{index}"} <= templates
    assert isinstance(task, TextResourceContents) and task.mime_type == "application/json"
    body = json.loads(task.text)
    assert body["status"] == "SUCCESS" and len(body["images"]) == 2
    assert isinstance(image, BlobResourceContents) and image.mime_type == "image/png"
    assert decode(base64.b64decode(image.blob)).size == (1280, 720)
    assert len(failures) == 3 and "images 0 to 1" in failures[0] and "task_unknown" in failures[1]
