"""The sandbox edits what it is given, over real loopback HTTP: pictures checked by their pixels, and its new knobs."""

from __future__ import annotations

import base64
import io
import os
import random
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx2
import pytest
from PIL import Image, ImageChops, ImageDraw, ImageStat

from qolaba_mcp.sandbox import Fault, SandboxConfig, SandboxServer

HEADERS = {"X-API-Key": "any-key"}
TEXT = {"model": "fal/flux-dev", "prompt": "a lighthouse in a storm", "seed": 1}  # 1024x1024
EDIT = {"model": "vertex/nano-banana-flash", "prompt": "make it look like autumn", "seed": 1}  # 1280x1280
INPAINT = {"model": "fal/flux-inpainting", "prompt": "a red door", "seed": 1}  # 1024x1024
GREEN = (0, 255, 0)


@pytest.fixture(scope="module")
def server() -> Iterator[SandboxServer]:
    with SandboxServer(SandboxConfig(latency=0)) as running:
        yield running


@pytest.fixture
def sandbox(server: SandboxServer) -> SandboxServer:
    """The module's sandbox back at its defaults (no latency), with no tasks and empty counters."""
    defaults = SandboxConfig(latency=0).model_dump(mode="json")
    assert httpx2.put(f"{server.base_url}/_sandbox/config", json=defaults).status_code == 200
    assert httpx2.post(f"{server.base_url}/_sandbox/reset").status_code == 200
    return server


# --- helpers ---------------------------------------------------------------------------------------------------


def data_uri(picture: Image.Image, image_format: str = "PNG") -> str:
    out = io.BytesIO()
    picture.save(out, format=image_format)
    return f"data:image/{image_format.lower()};base64,{base64.b64encode(out.getvalue()).decode()}"


def disc(size: int = 256, colour: tuple[int, int, int] = (200, 30, 30)) -> Image.Image:
    """A coloured disc on a white background."""
    picture = Image.new("RGB", (size, size), "white")
    ImageDraw.Draw(picture).ellipse((size // 4, size // 4, 3 * size // 4, 3 * size // 4), fill=colour)
    return picture


def quadrants(*, inverted: bool = False) -> Image.Image:
    """Black and white quadrants: structure an edit must keep."""
    dark, light = ("white", "black") if inverted else ("black", "white")
    picture = Image.new("RGB", (128, 128), light)
    draw = ImageDraw.Draw(picture)
    draw.rectangle((0, 0, 63, 63), fill=dark)
    draw.rectangle((64, 64, 127, 127), fill=dark)
    return picture


def noise(size: int) -> Image.Image:
    return Image.frombytes("RGB", (size, size), random.Random(0).randbytes(size * size * 3))


def generate(sandbox: SandboxServer, body: dict[str, Any]) -> httpx2.Response:
    return httpx2.post(f"{sandbox.base_url}/api/v1/images/generate", json=body, headers=HEADERS, timeout=30)


def first_url(sandbox: SandboxServer, body: dict[str, Any]) -> str:
    response = generate(sandbox, body)
    assert response.status_code == 200, response.text
    return str(response.json()["images"][0]["url"])


def poll(sandbox: SandboxServer, task_id: str) -> httpx2.Response:
    return httpx2.get(f"{sandbox.base_url}/api/v1/tasks/{task_id}", headers=HEADERS, timeout=10)


def submit_async(sandbox: SandboxServer, body: dict[str, Any]) -> str:
    response = generate(sandbox, {**body, "celery": True})
    assert response.status_code == 202, response.text
    return str(response.json()["task_id"])


def fetch(url: str, media_type: str = "image/png") -> Image.Image:
    response = httpx2.get(url, timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == media_type
    picture = Image.open(io.BytesIO(response.content))
    picture.load()
    return picture


def mean_difference(first: Image.Image, second: Image.Image) -> float:
    return sum(ImageStat.Stat(ImageChops.difference(first, second)).mean) / len(first.getbands())


def correlation(first: Image.Image, second: Image.Image) -> float:
    """Pearson correlation of the two pictures' brightness, compared on a 32x32 grid."""
    grid = (32, 32)
    return statistics.correlation(
        list(map(float, first.convert("L").resize(grid).tobytes())),
        list(map(float, second.convert("L").resize(grid).tobytes())),
    )


def count(picture: Image.Image, colour: tuple[int, int, int]) -> int:
    same = ImageChops.difference(picture.convert("RGB"), Image.new("RGB", picture.size, colour))
    return int(ImageStat.Stat(same.convert("L").point([255] + [0] * 255)).sum[0]) // 255


# --- the pictures follow the inputs ----------------------------------------------------------------------------


def test_background_removal_of_the_sandbox_s_own_image(sandbox: SandboxServer) -> None:
    source_url = first_url(sandbox, TEXT)
    cut = fetch(first_url(sandbox, {"model": "fal/birefnet", "image_urls": [source_url]}))
    source = fetch(source_url)
    assert cut.mode == "RGBA" and cut.size == source.size == (1024, 1024)
    assert mean_difference(cut.convert("RGB"), source.convert("RGB")) < 1  # the colours are the source's
    assert cut.getchannel("A").getextrema() == (0, 255)  # its background went, the rest stayed


def test_background_removal_cuts_out_a_disc(sandbox: SandboxServer) -> None:
    cut = fetch(first_url(sandbox, {"model": "fal/birefnet", "image_urls": [data_uri(disc())]}))
    alpha = cut.getchannel("A")
    corners = [(0, 0), (1023, 0), (0, 1023), (1023, 1023), (100, 100)]
    assert [alpha.getpixel(corner) for corner in corners] == [0] * 5
    assert alpha.getpixel((512, 512)) == 255 and alpha.getpixel((300, 512)) == 255
    assert cut.getpixel((512, 512))[:3] == (200, 30, 30)


def test_inpainting_changes_only_the_mask_s_white_rectangle(sandbox: SandboxServer) -> None:
    source = noise(256)
    mask = Image.new("RGB", (256, 256), "black")
    ImageDraw.Draw(mask).rectangle((64, 96, 159, 191), fill="white")  # 256 -> 1024: x 256..639, y 384..767
    url = first_url(sandbox, {**INPAINT, "image_urls": [data_uri(source)], "mask_url": data_uri(mask)})
    result = fetch(url).convert("RGB")
    expected = source.resize(result.size, Image.Resampling.BICUBIC)
    changed = ImageChops.difference(result, expected).getbbox()
    assert changed is not None, "nothing was repainted"
    left, top, right, bottom = changed
    margin = 8  # the mask is resized too: its edge may move by a resampled source pixel or two
    assert 256 - margin <= left and 384 - margin <= top and right <= 640 + margin and bottom <= 768 + margin
    assert mean_difference(result.crop((300, 420, 600, 730)), expected.crop((300, 420, 600, 730))) > 30


@pytest.mark.parametrize("source", ["data", "own"])
def test_an_edit_follows_its_source(sandbox: SandboxServer, source: str) -> None:
    pattern, inverse = quadrants(), quadrants(inverted=True)
    if source == "own":  # the source an earlier edit made, by its own URL
        pattern_url, inverse_url = (
            first_url(sandbox, {**EDIT, "image_urls": [data_uri(p)]}) for p in (pattern, inverse)
        )
    else:
        pattern_url, inverse_url = data_uri(pattern), data_uri(inverse)
    edited = fetch(first_url(sandbox, {**EDIT, "image_urls": [pattern_url]}))
    edited_inverse = fetch(first_url(sandbox, {**EDIT, "image_urls": [inverse_url]}))
    assert correlation(edited, pattern) > 0.7
    assert correlation(edited_inverse, pattern) < -0.7


def test_references_appear_in_the_picture(sandbox: SandboxServer) -> None:
    plain = fetch(first_url(sandbox, EDIT))
    green = {"url": data_uri(Image.new("RGB", (64, 64), GREEN))}
    with_reference = fetch(first_url(sandbox, {**EDIT, "reference_images": [green]}))
    thumbnail = (1280 // 5 - 20) ** 2  # a fifth of the picture's height, less its frame
    assert count(with_reference, GREEN) - count(plain, GREEN) > thumbnail


def test_different_seeds_give_visibly_different_pictures(sandbox: SandboxServer) -> None:
    one, two = (fetch(first_url(sandbox, {**TEXT, "seed": seed})) for seed in (1, 2))
    assert mean_difference(one.convert("RGB"), two.convert("RGB")) > 20


# --- inputs the sandbox refuses ---------------------------------------------------------------------------------


def _png_bytes() -> bytes:
    out = io.BytesIO()
    noise(64).save(out, format="PNG")
    return out.getvalue()


REFUSED = [
    pytest.param(
        {**EDIT, "image_urls": ["https://example.com/a.png"]},
        ["image_urls[0]", "only data: URIs", "own image URLs", "https://example.com/a.png"],
        id="foreign-url",
    ),
    pytest.param(
        {**EDIT, "reference_images": [{"url": "data:text/plain;base64,aGVsbG8="}]},
        ["reference_images[0].url", "text/plain"],
        id="text-data-uri",
    ),
    pytest.param(
        {
            **INPAINT,
            "image_urls": [data_uri(disc(32))],
            "mask_url": "data:image/png;base64," + base64.b64encode(b"no picture here, only words").decode(),
        },
        ["mask_url", "not a PNG, JPEG, WebP or GIF"],
        id="not-an-image",
    ),
    pytest.param(
        {
            **EDIT,
            "image_urls": [
                data_uri(disc(32)),
                "data:image/png;base64," + base64.b64encode(_png_bytes()[:200]).decode(),
            ],
        },
        ["image_urls[1]", "damaged or truncated"],
        id="truncated-png",
    ),
]


@pytest.mark.parametrize("celery", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize(("body", "fragments"), REFUSED)
def test_unreadable_inputs_are_a_400_naming_the_field(
    sandbox: SandboxServer, body: dict[str, Any], fragments: list[str], celery: bool
) -> None:
    response = generate(sandbox, {**body, "celery": celery})
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "Image URL Error"
    for fragment in fragments:
        assert fragment in response.json()["message"]
    stats = sandbox.stats()
    assert (stats["submissions"], stats["tasks"], stats["rejected"]) == (0, 0, 1)


def test_only_finished_images_at_the_sandbox_s_own_address_are_read(sandbox: SandboxServer) -> None:
    url = first_url(sandbox, TEXT)
    task_id = url.split("/")[-2]
    elsewhere = [
        url.replace("127.0.0.1", "localhost"),  # the same server, but not the address it answers on
        url.replace(f":{sandbox.port}/", f":{sandbox.port + 1}/"),
        url.replace("/0.png", "/1.png"),  # the task made one image
        url.replace(task_id, "task_nope"),
        url.replace("/0.png", "/0.low.jpg"),
    ]
    for number, other in enumerate(elsewhere):
        response = generate(sandbox, {**EDIT, "image_urls": [url, other]})
        assert response.status_code == 400, (number, response.text)
        assert response.json()["message"].startswith("image_urls[1]: ")
    sandbox.configure(latency=30)
    running = submit_async(sandbox, TEXT)
    response = generate(sandbox, {**EDIT, "image_urls": [url.replace(task_id, running)], "celery": True})
    assert response.status_code == 400 and "has not finished" in response.json()["message"]
    assert sandbox.stats()["submissions"] == 2


# --- backend shapes and faults -----------------------------------------------------------------------------------


def test_backend_shape_success_body(sandbox: SandboxServer) -> None:
    sandbox.configure(poll_shape="backend")
    task_id = submit_async(sandbox, {**TEXT, "seed": 5, "num_images": 2})
    response = poll(sandbox, task_id)
    body = response.json()
    assert response.status_code == 200 and body["status"] == "SUCCESS"
    assert body["seed"] == 5
    assert body["usage"] == generate(sandbox, {**TEXT, "seed": 5, "num_images": 2}).json()["usage"]
    assert body["usage"]["images_generated"] == 2
    output = body["output"]
    assert set(output) == {"result", "low_res_urls", "Has_NSFW_Content"}
    assert output["Has_NSFW_Content"] == [False, False]
    assert [fetch(url).size for url in output["result"]] == [(1024, 1024)] * 2
    assert [fetch(url, "image/jpeg").size for url in output["low_res_urls"]] == [(512, 512)] * 2
    assert body["error"] is None and body["error_data"] is None and "error_detail" not in body


def test_backend_shape_failed_body(sandbox: SandboxServer) -> None:
    sandbox.configure(poll_shape="backend", faults=[Fault(kind="failed_task", rate=1)])
    response = poll(sandbox, submit_async(sandbox, TEXT))
    body = response.json()
    assert response.status_code == 200
    assert body["status"] == "FAILED" and body["error"] == "Generation Error" and body["error_data"]
    assert "error_detail" not in body and body["output"] is None


def test_a_failed_poll_can_answer_500_with_the_task_body(sandbox: SandboxServer) -> None:
    sandbox.configure(failed_status=500)
    succeeded = submit_async(sandbox, TEXT)
    sandbox.configure(faults=[Fault(kind="failed_task", rate=1)])
    failed = submit_async(sandbox, TEXT)
    assert poll(sandbox, succeeded).status_code == 200
    response = poll(sandbox, failed)
    assert response.status_code == 500
    body = response.json()
    assert body["task_id"] == failed and body["status"] == "FAILED" and body["error"] and body["error_detail"]


def test_nsfw_some_flags_the_first_image_and_keeps_it(sandbox: SandboxServer) -> None:
    sandbox.configure(poll_shape="backend", nsfw="some")
    output = poll(sandbox, submit_async(sandbox, {**TEXT, "num_images": 2})).json()["output"]
    assert output["Has_NSFW_Content"] == [True, False] and len(output["result"]) == 2
    assert fetch(output["result"][0]).size == (1024, 1024)


def test_nsfw_all_removes_every_image_and_still_charges(sandbox: SandboxServer) -> None:
    sandbox.configure(poll_shape="backend", nsfw="all")
    task_id = submit_async(sandbox, {**TEXT, "num_images": 2})
    body = poll(sandbox, task_id).json()
    assert body["status"] == "SUCCESS"
    assert body["output"] == {"result": [], "low_res_urls": [], "Has_NSFW_Content": [True, True]}
    assert body["usage"]["images_generated"] == 2
    assert httpx2.get(f"{sandbox.base_url}/_sandbox/images/{task_id}/0.png").status_code == 404


@pytest.mark.parametrize("mode", ["sync", "output-object", "top-level"])
def test_nsfw_all_in_the_other_shapes(sandbox: SandboxServer, mode: str) -> None:
    sandbox.configure(nsfw="all", poll_shape="output-object" if mode == "sync" else mode)
    if mode == "sync":
        body = generate(sandbox, {**TEXT, "num_images": 2}).json()
        images = body["images"]
    else:
        body = poll(sandbox, submit_async(sandbox, {**TEXT, "num_images": 2})).json()
        images = body["output"]["images"] if mode == "output-object" else body["images"]
    assert images == [] and body["Has_NSFW_Content"] == [True, True]


def test_results_expire_after_their_ttl(sandbox: SandboxServer) -> None:
    sandbox.configure(result_ttl=0.5)
    task_id = submit_async(sandbox, TEXT)
    image = f"{sandbox.base_url}/_sandbox/images/{task_id}/0"
    assert poll(sandbox, task_id).status_code == 200
    assert httpx2.get(f"{image}.png").status_code == 200
    time.sleep(0.7)
    response = poll(sandbox, task_id)
    assert response.status_code == 404
    assert response.json() == {"error": "Not Found", "message": f"Task {task_id} has expired"}
    assert httpx2.get(f"{image}.png").status_code == 404
    assert httpx2.get(f"{image}.low.jpg").status_code == 404
    assert "Unknown task" in poll(sandbox, "task_nope").json()["message"]


def test_low_res_copy_is_a_small_jpeg_flattened_on_white(sandbox: SandboxServer) -> None:
    wide = first_url(sandbox, {**EDIT, "aspect_ratio": "16:9"})
    small = fetch(wide.replace(".png", ".low.jpg"), "image/jpeg")
    assert small.format == "JPEG" and small.size == (512, 288)
    assert mean_difference(small, fetch(wide).convert("RGB").resize(small.size)) < 8
    cut = first_url(sandbox, {"model": "fal/birefnet", "image_urls": [data_uri(disc())]})
    flat = fetch(cut.replace(".png", ".low.jpg"), "image/jpeg")
    assert flat.size == (512, 512) and min(flat.getpixel((2, 2))) >= 250  # transparent became white
    assert httpx2.get(cut.replace("/0.png", "/1.low.jpg")).status_code == 404


def test_the_command_passes_its_new_flags() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    flags = ["--poll-shape", "backend", "--nsfw", "some", "--failed-status", "500", "--result-ttl", "30"]
    command = [sys.executable, "-m", "qolaba_mcp", "sandbox", "--port", str(port), *flags]
    proc = subprocess.Popen(command, stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        for _ in range(200):
            try:
                config = httpx2.get(f"http://127.0.0.1:{port}/_sandbox/config", timeout=1).json()
                break
            except httpx2.TransportError:
                time.sleep(0.05)
        else:
            raise AssertionError("the sandbox command did not start")
    finally:
        proc.terminate()
        proc.wait(10)
    assert (config["poll_shape"], config["nsfw"], config["failed_status"], config["result_ttl"]) == (
        "backend",
        "some",
        500,
        30.0,
    )
