"""Images from anywhere, end to end: the SDK Client over stdio and HTTP, the sandbox reading what it was sent.

The sandbox reads only data: URIs and its own image URLs, so what reaches it is exactly what the API would get;
its outputs are checked by pixels (a cut-out is transparent where the background was).
"""

from __future__ import annotations

import base64
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client
from mcp.types import CallToolResult
from PIL import Image, ImageDraw

from qolaba_mcp._errors import BadRequestError
from qolaba_mcp.api._catalog import Catalog
from qolaba_mcp.sandbox import Fault, SandboxServer
from qolaba_mcp.server._results import explain

from .conftest import HttpServer, connect, server_env
from .results import data, text

pytestmark = pytest.mark.anyio

FLASH = {"model": "vertex/nano-banana-flash", "prompt": "a lighthouse"}


@asynccontextmanager
async def stdio(sandbox: SandboxServer, **env: str | None) -> AsyncIterator[Client]:
    """qolaba-mcp as over stdio (local-file inputs allowed), in this process."""
    async with connect("memory", "auto", base_url=sandbox.base_url, **env) as client:
        yield client


def sent_to_api(sandbox: SandboxServer, task_id: str) -> Any:
    """The request the sandbox received for a task: what the API would have been sent."""
    return sandbox.sandbox.state.tasks[task_id].request


def submissions(sandbox: SandboxServer) -> int:
    return int(sandbox.sandbox.state.stats()["submit_requests"])


def disc_on_white(path: Path, size: int = 256) -> bytes:
    image = Image.new("RGB", (size, size), "white")
    ImageDraw.Draw(image).ellipse((size // 4, size // 4, 3 * size // 4, 3 * size // 4), fill=(200, 30, 30))
    image.save(path, "PNG")
    return path.read_bytes()


def saved_image(result: CallToolResult) -> Image.Image:
    [path] = [p for p in data(result)["saved_files"] if p]
    with Image.open(path) as image:
        return image.convert("RGBA")


async def test_an_earlier_result_is_an_input_by_its_uri(sandbox: SandboxServer, tmp_path: Path) -> None:
    sandbox.configure(pictures="captioned")  # a caption panel over a pattern: its cut-out has something to cut
    ledger = tmp_path / "ledger.db"
    async with stdio(sandbox, QOLABA_LEDGER_URL=f"sqlite:///{ledger}") as client:
        first = data(await client.call_tool("generate_image", {**FLASH, "num_images": 2}))
        task = first["task_id"]
        cut = await client.call_tool(
            "generate_image", {"model": "fal/birefnet", "image_urls": [f"qolaba://images/{task}/1"], "save": True}
        )
        short = await client.call_tool("generate_image", {"model": "fal/birefnet", "image_urls": [f"{task}#0"]})
        missing = await client.call_tool("generate_image", {"model": "fal/birefnet", "image_urls": [f"{task}#5"]})
        history = data(await client.call_tool("list_generations", {"limit": 3}))
    assert data(cut)["status"] == "SUCCESS" and data(short)["status"] == "SUCCESS", text(cut) + text(short)
    assert sent_to_api(sandbox, data(cut)["task_id"]).image_urls == [first["images"][1]["url"]]
    assert sent_to_api(sandbox, data(short)["task_id"]).image_urls == [first["images"][0]["url"]]
    assert missing.is_error and f"image_urls[0]: task {task} has images 0 to 1; there is no image 5" in text(missing)
    newest = history["generations"][0]  # the `short` call (`missing` never reached the ledger)
    assert newest["inputs"] == [f"image_urls[0]: image 0 of task {task}: {first['images'][0]['url']}"]
    assert saved_image(cut).getchannel("A").getextrema()[0] == 0  # a cut-out: some of it is transparent


async def test_a_local_file_travels_as_a_data_uri_and_is_edited_by_its_pixels(
    sandbox: SandboxServer, tmp_path: Path
) -> None:
    pictures = tmp_path / "Pictures"
    pictures.mkdir()
    photo = disc_on_white(pictures / "photo.png")
    ledger = tmp_path / "ledger.db"
    env = {"QOLABA_INPUT_ROOTS": str(pictures), "QOLABA_LEDGER_URL": f"sqlite:///{ledger}"}
    async with stdio(sandbox, **env) as client:
        result = await client.call_tool(
            "generate_image", {"model": "fal/birefnet", "image_urls": [str(pictures / "photo.png")], "save": True}
        )
    body = data(result)
    assert body["status"] == "SUCCESS", text(result)
    sent = sent_to_api(sandbox, body["task_id"]).image_urls[0]
    assert sent.startswith("data:image/png;base64,")
    cutout = saved_image(result)
    w, h = cutout.size
    assert cutout.getpixel((1, 1))[3] == 0 and cutout.getpixel((w - 2, h - 2))[3] == 0  # the white background
    assert cutout.getpixel((w // 2, h // 2))[3] == 255  # the disc
    with sqlite3.connect(ledger) as db:
        request, inputs = db.execute("SELECT request, inputs FROM generations").fetchone()
    assert f"local file photo.png, {len(photo)} bytes" in inputs
    assert sent[30:90] not in request and "not kept" in request  # the ledger keeps no image bytes


async def test_every_image_argument_takes_local_files(sandbox: SandboxServer, tmp_path: Path) -> None:
    pictures = tmp_path / "Pictures"
    pictures.mkdir()
    disc_on_white(pictures / "source.png")
    mask = Image.new("L", (256, 256), 0)
    ImageDraw.Draw(mask).rectangle((64, 64, 191, 191), fill=255)
    mask.save(pictures / "mask.png")
    Image.new("RGB", (64, 64), (20, 200, 20)).save(pictures / "green.jpg", "JPEG")
    async with stdio(sandbox, QOLABA_INPUT_ROOTS=str(pictures)) as client:
        inpainted = await client.call_tool(
            "generate_image",
            {
                "model": "fal/flux-inpainting",
                "prompt": "a hat",
                "image_urls": [str(pictures / "source.png")],
                "mask_url": (pictures / "mask.png").as_uri(),
            },
        )
        referenced = await client.call_tool(
            "generate_image",
            {**FLASH, "reference_images": [{"url": str(pictures / "green.jpg"), "description": "hue"}]},
        )
    assert data(inpainted)["status"] == "SUCCESS" and data(referenced)["status"] == "SUCCESS"
    request = sent_to_api(sandbox, data(inpainted)["task_id"])
    assert request.mask_url.startswith("data:image/png;base64,") and request.image_urls[0].startswith("data:image/png")
    reference = sent_to_api(sandbox, data(referenced)["task_id"]).reference_images[0]
    assert reference.url.startswith("data:image/jpeg;base64,") and reference.description == "hue"


async def test_local_files_that_must_not_be_read_are_refused_before_submitting(
    sandbox: SandboxServer, tmp_path: Path
) -> None:
    pictures, elsewhere = tmp_path / "Pictures", tmp_path / "private"
    pictures.mkdir()
    elsewhere.mkdir()
    disc_on_white(elsewhere / "secret.png")
    (pictures / "escape.png").symlink_to(elsewhere / "secret.png")
    disc_on_white(pictures / "big.png", size=512)
    (pictures / "notes.png").write_text("not an image")
    cases = {
        str(elsewhere / "secret.png"): "outside the folders",
        str(pictures / "escape.png"): "outside the folders",
        str(pictures / ".." / "private" / "secret.png"): "outside the folders",
        str(pictures / "big.png"): "QOLABA_INPUT_MAX_BYTES",
        str(pictures / "notes.png"): "not a PNG, JPEG, WebP or GIF",
    }
    async with stdio(sandbox, QOLABA_INPUT_ROOTS=str(pictures), QOLABA_INPUT_MAX_BYTES="2000") as client:
        results = {
            path: await client.call_tool("generate_image", {"model": "fal/birefnet", "image_urls": [path]})
            for path in cases
        }
    for path, fragment in cases.items():
        said = text(results[path])
        assert results[path].is_error and "image_urls[0]:" in said and fragment in said, said
        assert "Nothing was submitted" in said
    assert submissions(sandbox) == 0


async def test_over_http_local_paths_are_refused_and_earlier_results_work(sandbox: SandboxServer) -> None:
    server = HttpServer(server_env(sandbox.base_url))
    try:
        async with Client(server.url) as client:
            first = data(await client.call_tool("generate_image", FLASH))
            local = await client.call_tool("generate_image", {"model": "fal/birefnet", "image_urls": ["/etc/hosts"]})
            earlier = await client.call_tool(
                "generate_image", {"model": "fal/birefnet", "image_urls": [f"qolaba://images/{first['task_id']}/0"]}
            )
    finally:
        server.stop()
    assert local.is_error and "over HTTP" in text(local) and "its disk is not yours" in text(local)
    assert data(earlier)["status"] == "SUCCESS", text(earlier)


# -- the backend's shapes, simulated by the sandbox -------------------------------------------------------------------


async def test_backend_shape_with_low_res_previews_and_a_flagged_image(sandbox: SandboxServer) -> None:
    sandbox.configure(poll_shape="backend", nsfw="some")
    async with stdio(sandbox, QOLABA_SAVE="off") as client:
        result = await client.call_tool("generate_image", {**FLASH, "num_images": 2})
    body = data(result)
    assert body["status"] == "SUCCESS" and len(body["images"]) == 2
    assert [image["nsfw"] for image in body["images"]] == [True, False]
    assert all(image["preview_url"].endswith(".low.jpg") for image in body["images"])
    assert any("image 1 was flagged by the provider's safety filter" in note for note in body["notes"])
    downloads = sandbox.sandbox.state.stats()
    assert downloads["image_downloads"] >= 2  # the previews came from the low-resolution copies


async def test_every_image_removed_by_the_safety_filter_is_said_plainly(sandbox: SandboxServer) -> None:
    sandbox.configure(poll_shape="backend", nsfw="all")
    async with stdio(sandbox) as client:
        result = await client.call_tool("generate_image", {**FLASH, "num_images": 2})
    assert result.is_error and "safety filter removed every image (2)" in text(result)
    assert data(result)["status"] == "FAILED"


async def test_a_failed_task_answered_with_500_is_final_at_once(sandbox: SandboxServer) -> None:
    sandbox.configure(poll_shape="backend", failed_status=500, faults=[Fault.parse("failed=1")])
    async with stdio(sandbox) as client:
        result = await client.call_tool("generate_image", {**FLASH, "wait_seconds": 20})
    body = data(result)
    assert body["status"] == "FAILED" and "Generation Error" in (body["error"] or "")
    assert body["elapsed_seconds"] < 10  # not retried as a server hiccup until the wait ran out


async def test_an_expired_result_is_answered_from_the_ledger(sandbox: SandboxServer) -> None:
    sandbox.configure(result_ttl=0.5)
    async with stdio(sandbox) as client:
        first = data(await client.call_tool("generate_image", FLASH))
        await anyio.sleep(1.0)  # the API has forgotten the task and its images
        later = await client.call_tool("get_task", {"task_id": first["task_id"]})
    assert data(later)["status"] == "SUCCESS" and data(later)["images"] == first["images"]


def test_an_api_refusal_of_data_uris_says_to_use_a_public_url() -> None:
    refusal = BadRequestError("Bad request (400): Image URL Error: could not download the image", status_code=400)
    with_data = explain(refusal, Catalog.builtin(), model="fal/birefnet", data_uris=True)
    without = explain(refusal, Catalog.builtin(), model="fal/birefnet", data_uris=False)
    assert "public https URL" in with_data and "public https URL" not in without


async def test_data_uris_reach_the_api_with_their_real_type_and_broken_ones_do_not(
    sandbox: SandboxServer, tmp_path: Path
) -> None:
    image = disc_on_white(tmp_path / "disc.png", size=64)
    encoded = base64.b64encode(image).decode()
    wrapped = "\n".join(encoded[i : i + 76] for i in range(0, len(encoded), 76))  # as the base64 tool writes it
    html = base64.b64encode(b"\x89PNG\r\n\x1a\n<!doctype html><html><body>hi</body></html>").decode()
    async with stdio(sandbox) as client:
        sent = await client.call_tool(
            "generate_image", {"model": "fal/birefnet", "image_urls": [f"data:image/svg+xml;base64,{wrapped}"]}
        )
        before = submissions(sandbox)
        refused = await client.call_tool(
            "generate_image", {"model": "fal/birefnet", "image_urls": [f"data:image/png;base64,{html}"]}
        )
    assert not sent.is_error, text(sent)
    assert sent_to_api(sandbox, data(sent)["task_id"]).image_urls == [f"data:image/png;base64,{encoded}"]
    said = text(refused)
    assert refused.is_error and "image_urls[0]: the data: URI has a PNG signature" in said, said
    assert "Send the image file itself" in said and said.endswith("Nothing was submitted.")
    assert submissions(sandbox) == before
