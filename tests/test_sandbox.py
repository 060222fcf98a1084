"""The sandbox over real loopback HTTP: the seed's examples, validation, real PNGs, faults and counters."""

from __future__ import annotations

import base64
import io
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx2
import pytest
from PIL import Image

from qolaba_mcp.sandbox import Fault, SandboxServer

HEADERS = {"X-API-Key": "any-key"}
SEED_EXAMPLE = {
    "model": "vertex/nano-banana-flash",
    "prompt": "A photorealistic cat sitting on the Eiffel Tower at sunset",
    "aspect_ratio": "16:9",
}


def _data_uri(colour: str) -> str:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(out, format="PNG")
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()


# The sandbox reads only data: URIs and its own image URLs.
SOURCE, MASK = _data_uri("red"), _data_uri("white")


def post(sandbox: SandboxServer, body: dict[str, Any], headers: dict[str, str] = HEADERS) -> httpx2.Response:
    return httpx2.post(f"{sandbox.base_url}/api/v1/images/generate", json=body, headers=headers, timeout=30)


def png(url: str) -> Image.Image:
    response = httpx2.get(url, timeout=30)
    assert response.headers["content-type"] == "image/png"
    image = Image.open(io.BytesIO(response.content))
    image.load()  # decodes every row: a truncated or corrupt file fails here
    assert image.format == "PNG"
    return image


def poll_until_done(base_url: str, task_id: str, headers: dict[str, str] = HEADERS) -> list[dict[str, Any]]:
    bodies = []
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        body = httpx2.get(f"{base_url}/api/v1/tasks/{task_id}", headers=headers, timeout=10).json()
        bodies.append(body)
        if body["status"] in ("SUCCESS", "FAILED"):
            return bodies
        time.sleep(0.05)
    raise AssertionError(f"task {task_id} never finished: {bodies[-1]}")


@pytest.fixture(scope="module")
def cli_sandbox() -> Iterator[str]:
    """``qolaba-mcp sandbox`` as a user runs it, on a free port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "qolaba_mcp", "sandbox", "--port", str(port), "--latency", "0.3"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    base_url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                httpx2.get(f"{base_url}/_sandbox/stats", timeout=1)
                break
            except httpx2.TransportError:
                time.sleep(0.05)
        yield base_url
    finally:
        proc.terminate()
        proc.wait(10)


class TestSeedExamplesAgainstTheCommand:
    """The issue's acceptance checks, run against the real ``qolaba-mcp sandbox`` process."""

    def test_sync_returns_a_1280x720_png(self, cli_sandbox: str) -> None:
        response = httpx2.post(f"{cli_sandbox}/api/v1/images/generate", json=SEED_EXAMPLE, headers=HEADERS)
        assert response.status_code == 200
        body = response.json()
        assert body["task_id"].startswith("task_") and body["prompt"] == SEED_EXAMPLE["prompt"]
        assert body["images"][0]["width"] == 1280 and body["images"][0]["height"] == 720
        assert png(body["images"][0]["url"]).size == (1280, 720)
        assert body["usage"] == {"images_generated": 1, "cost_usd": 0.03, "cost_credits": 6.0}

    def test_async_task_reaches_success(self, cli_sandbox: str) -> None:
        response = httpx2.post(
            f"{cli_sandbox}/api/v1/images/generate",
            json={**SEED_EXAMPLE, "celery": True},
            headers={"Authorization": "Bearer whatever"},
        )
        assert response.status_code == 202
        created = response.json()
        assert created["status"] == "PENDING" and created["type"] == "image"
        bodies = poll_until_done(cli_sandbox, created["task_id"])
        statuses = [b["status"] for b in bodies]
        assert statuses[-1] == "SUCCESS" and "PROCESSING" in statuses
        assert png(bodies[-1]["output"]["images"][0]["url"]).size == (1280, 720)

    def test_eleven_images_is_a_400_naming_the_field(self, cli_sandbox: str) -> None:
        response = httpx2.post(
            f"{cli_sandbox}/api/v1/images/generate", json={**SEED_EXAMPLE, "num_images": 11}, headers=HEADERS
        )
        assert response.status_code == 400
        assert response.json()["error"] == "Bad Request"
        assert "num_images" in response.json()["message"] and "10" in response.json()["message"]

    def test_no_key_is_401(self, cli_sandbox: str) -> None:
        response = httpx2.post(f"{cli_sandbox}/api/v1/images/generate", json=SEED_EXAMPLE)
        assert response.status_code == 401
        assert httpx2.get(f"{cli_sandbox}/api/v1/tasks/task_x").status_code == 401


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"prompt": "x"}, "model: Field required"),
        ({**SEED_EXAMPLE, "prompt": "x" * 4001}, "prompt: String should have at most 4000"),
        ({**SEED_EXAMPLE, "num_images": 0}, "num_images: Input should be greater than or equal to 1"),
        ({**SEED_EXAMPLE, "temperature": 2.5}, "temperature: Input should be less than or equal to 2"),
        ({**SEED_EXAMPLE, "aspect_ratio": "wide"}, "aspect_ratio: String should match pattern"),
        ({**SEED_EXAMPLE, "aspect_ratio": "7:3"}, "'7:3' is not supported"),
        ({**SEED_EXAMPLE, "quality": "4K"}, "quality: '4K' is not supported"),
        ({**SEED_EXAMPLE, "negative_prompt": "dogs"}, "does not support negative_prompt"),
        ({**SEED_EXAMPLE, "colour": "red"}, "Unknown field(s): colour"),
        ({**SEED_EXAMPLE, "model": "acme/imagine"}, "Unknown model 'acme/imagine'"),
        ({"model": "vertex/imagen-4"}, "prompt is required"),
        ({"model": "vertex/imagen-4-ultra", "prompt": "x", "num_images": 5}, "at most 4 images"),
        ({"model": "fal/birefnet"}, "image_urls is required"),
        (
            {"model": "fal/birefnet", "image_urls": ["http://x/a.png"], "prompt": "p"},
            "does not support prompt",
        ),
        (
            {"model": "fal/flux-inpainting", "prompt": "p", "image_urls": ["http://x/a.png"]},
            "mask_url is required",
        ),
        (
            {**SEED_EXAMPLE, "reference_images": [{"url": "http://x"}] * 15},
            "reference_images: List should have at most 14 items",
        ),
        ({"model": "fal/flux-dev", "prompt": "p", "num_inference_steps": 151}, "num_inference_steps"),
        ({"model": "fal/flux-dev", "prompt": "p", "guidance_scale": 31}, "guidance_scale"),
        ({**SEED_EXAMPLE, "negative_prompt": "x" * 2001}, "negative_prompt: String should have at most 2000"),
    ],
)
def test_validation_names_the_problem(qolaba_sandbox: SandboxServer, body: dict[str, Any], fragment: str) -> None:
    response = post(qolaba_sandbox, body)
    assert response.status_code == 400, response.text
    assert fragment in response.json()["message"]
    assert qolaba_sandbox.stats()["submissions"] == 0


@pytest.mark.parametrize(
    "body",
    [
        {"model": "fal/birefnet", "image_urls": [SOURCE]},
        {"model": "fal/flux-inpainting", "prompt": "p", "image_urls": [SOURCE], "mask_url": MASK},
        {"model": "fal/flux-dev", "prompt": "p", "num_inference_steps": 150, "guidance_scale": 30},
        {"model": "vertex/nano-banana-pro", "prompt": "p", "num_images": 10, "quality": "4K"},
    ],
)
def test_model_specific_requests_are_accepted(qolaba_sandbox: SandboxServer, body: dict[str, Any]) -> None:
    qolaba_sandbox.configure(latency=0)
    response = post(qolaba_sandbox, body)
    assert response.status_code == 200, response.text
    assert len(response.json()["images"]) == body.get("num_images", 1)


def test_bad_json_body(qolaba_sandbox: SandboxServer) -> None:
    response = httpx2.post(f"{qolaba_sandbox.base_url}/api/v1/images/generate", content=b"{", headers=HEADERS)
    assert response.status_code == 400 and "JSON" in response.json()["message"]


@pytest.mark.parametrize(
    ("model", "aspect_ratio", "quality", "size"),
    [
        ("vertex/nano-banana-flash", None, None, (1280, 1280)),
        ("vertex/nano-banana-flash", "9:16", None, (720, 1280)),
        ("vertex/nano-banana-flash", "4:3", None, (1280, 960)),
        ("vertex/nano-banana-pro", "16:9", "4K", (3840, 2160)),
        ("vertex/imagen-4", "3:4", "2K", (1920, 2560)),
        ("openai/gpt-image-2", "3:2", "low", (1024, 683)),
    ],
)
def test_png_size_follows_ratio_and_quality(
    qolaba_sandbox: SandboxServer,
    model: str,
    aspect_ratio: str | None,
    quality: str | None,
    size: tuple[int, int],
) -> None:
    qolaba_sandbox.configure(latency=0)
    body = {"model": model, "prompt": "p", "aspect_ratio": aspect_ratio, "quality": quality}
    image = post(qolaba_sandbox, {k: v for k, v in body.items() if v is not None}).json()["images"][0]
    assert (image["width"], image["height"]) == size
    assert png(image["url"]).size == size


def test_pictures_are_deterministic_for_seed_and_prompt(qolaba_sandbox: SandboxServer) -> None:
    qolaba_sandbox.configure(latency=0)

    def picture(**fields: Any) -> bytes:
        url = post(qolaba_sandbox, {**SEED_EXAMPLE, **fields}).json()["images"][0]["url"]
        return httpx2.get(url).content

    assert picture(seed=1) == picture(seed=1)
    assert picture(seed=1) != picture(seed=2)
    assert picture(seed=1) != picture(seed=1, prompt="a dog")


def test_seed_is_echoed_or_chosen(qolaba_sandbox: SandboxServer) -> None:
    qolaba_sandbox.configure(latency=0)
    assert post(qolaba_sandbox, {**SEED_EXAMPLE, "seed": 99}).json()["seed"] == 99
    assert isinstance(post(qolaba_sandbox, SEED_EXAMPLE).json()["seed"], int)


def test_image_of_an_unfinished_task_is_404(qolaba_sandbox: SandboxServer) -> None:
    qolaba_sandbox.configure(latency=30)
    task_id = post(qolaba_sandbox, {**SEED_EXAMPLE, "celery": True}).json()["task_id"]
    assert httpx2.get(f"{qolaba_sandbox.base_url}/_sandbox/images/{task_id}/0.png").status_code == 404


def test_unknown_task_is_404(qolaba_sandbox: SandboxServer) -> None:
    response = httpx2.get(f"{qolaba_sandbox.base_url}/api/v1/tasks/task_nope", headers=HEADERS)
    assert response.status_code == 404 and "task_nope" in response.json()["message"]


def test_failed_task_carries_error_fields(qolaba_sandbox: SandboxServer) -> None:
    qolaba_sandbox.configure(latency=0, faults=[Fault(kind="failed_task", rate=1)])
    task_id = post(qolaba_sandbox, {**SEED_EXAMPLE, "celery": True}).json()["task_id"]
    body = poll_until_done(qolaba_sandbox.base_url, task_id)[-1]
    assert body["status"] == "FAILED" and body["error"] and body["error_detail"]
    sync = post(qolaba_sandbox, SEED_EXAMPLE)
    assert sync.status_code == 500 and "Generation failed" in sync.json()["message"]


def test_faults_and_counters(qolaba_sandbox: SandboxServer) -> None:
    qolaba_sandbox.configure(latency=0, faults=[Fault(kind="rate_limit", rate=1, on="poll")], retry_after=4)
    created = post(qolaba_sandbox, {**SEED_EXAMPLE, "celery": True})
    assert created.status_code == 202  # the fault targets polls only
    polled = httpx2.get(f"{qolaba_sandbox.base_url}/api/v1/tasks/{created.json()['task_id']}", headers=HEADERS)
    assert polled.status_code == 429 and polled.json()["retryAfter"] == 4
    stats = qolaba_sandbox.stats()
    assert stats["submit_requests"] == 1 and stats["submissions"] == 1 and stats["async_tasks"] == 1
    assert stats["polls"] == 1 and stats["faults"] == {"rate_limit:poll": 1}
    reset = httpx2.post(f"{qolaba_sandbox.base_url}/_sandbox/reset").json()
    assert reset["submissions"] == 0 and reset["tasks"] == 0


def test_dropped_connection_breaks_the_response(qolaba_sandbox: SandboxServer) -> None:
    qolaba_sandbox.configure(latency=0, faults=[Fault(kind="disconnect", rate=1, on="submit")])
    with pytest.raises(httpx2.RemoteProtocolError):
        post(qolaba_sandbox, SEED_EXAMPLE)


def test_fault_rates_are_honoured_roughly(qolaba_sandbox: SandboxServer) -> None:
    qolaba_sandbox.configure(latency=0, random_seed=3, faults=[Fault(kind="server_error", rate=0.5, on="submit")])
    httpx2.post(f"{qolaba_sandbox.base_url}/_sandbox/reset")
    with httpx2.Client(base_url=qolaba_sandbox.base_url, headers=HEADERS) as http:
        codes = [http.post("/api/v1/images/generate", json=SEED_EXAMPLE).status_code for _ in range(60)]
    assert 15 <= codes.count(500) <= 45 and codes.count(500) + codes.count(200) == 60


def test_config_over_http(qolaba_sandbox: SandboxServer) -> None:
    url = f"{qolaba_sandbox.base_url}/_sandbox/config"
    assert httpx2.put(url, json={"latency": 0.5, "faults": [{"kind": "malformed", "rate": 0.1}]}).status_code == 200
    assert qolaba_sandbox.sandbox.config.latency == 0.5
    assert httpx2.put(url, json={"latency": -1}).status_code == 400


@pytest.mark.parametrize(
    ("spec", "fault"),
    [
        ("429=0.1", Fault(kind="rate_limit", rate=0.1)),
        ("500@poll=0.05", Fault(kind="server_error", rate=0.05, on="poll")),
        ("drop@submit=1", Fault(kind="disconnect", rate=1, on="submit")),
        ("drop-after=0.5", Fault(kind="lost_response", rate=0.5)),
        ("failed=0.02", Fault(kind="failed_task", rate=0.02)),
        ("MALFORMED=0.01", Fault(kind="malformed", rate=0.01)),
    ],
)
def test_fault_specs(spec: str, fault: Fault) -> None:
    assert Fault.parse(spec) == fault


@pytest.mark.parametrize("spec", ["429", "teapot=0.1", "429=2", "429@later=0.1"])
def test_bad_fault_specs(spec: str) -> None:
    with pytest.raises(ValueError):
        Fault.parse(spec)
