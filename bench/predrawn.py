"""Delivery measured apart from drawing: a sandbox whose images are drawn once, before the clock starts.

The sandbox draws each image when it is first downloaded, on the same cores as the server under test, so a
crowd's figure holds the drawing of every image. ``PreDrawnSandbox`` runs a real sandbox (its API, tasks and
polls unchanged) behind a front that answers every finished task's ``.png`` with one of a few PNGs the sandbox drew
for the same model and size at start-up: delivery then downloads real sandbox pictures of the right size, and
nothing is drawn while it is timed. ``pillow_floor`` is Pillow's own cost of a preview of those same bytes.
"""

from __future__ import annotations

import io
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Self

import anyio
import httpx2
from PIL import Image
from starlette.types import Receive, Scope, Send

from qolaba_mcp.api._wire import ImageOutput
from qolaba_mcp.images._delivery import Delivery
from qolaba_mcp.sandbox import SandboxConfig, SandboxServer

IMAGE_PATH = re.compile(r"/_sandbox/images/([^/]+)/([0-9]{1,6})\.png")
PREVIEW_SIDE = 512  # as qolaba_mcp.images' previews
PREVIEW_QUALITY = 80  # the first quality a preview tries: what an image that fits its budget is encoded at


class PreDrawnSandbox(SandboxServer):
    """A sandbox on a background thread whose ``.png`` downloads are served from PNGs drawn in advance."""

    def __init__(self, config: SandboxConfig, *, model: str, images: int = 4) -> None:
        super().__init__(config, front=self._front)
        self._model, self._count = model, images
        self.pngs: dict[tuple[int, int], list[bytes]] = {}  # (width, height) -> the pictures served, by index
        self.served = 0

    async def _front(self, scope: Scope, receive: Receive, send: Send) -> None:
        found = IMAGE_PATH.fullmatch(scope.get("path", "")) if scope["type"] == "http" else None
        task = self.sandbox.state.tasks.get(found[1]) if found else None
        drawn = self.pngs.get((task.width, task.height)) if task is not None else None
        if found is None or task is None or not drawn or time.time() < task.created + task.latency:
            await self.sandbox(scope, receive, send)  # the API itself, and anything unusual: the sandbox answers
            return
        body = drawn[int(found[2]) % len(drawn)]
        self.served += 1
        headers = [(b"content-type", b"image/png"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    def start(self) -> Self:
        super().start()
        self._draw()
        return self

    def thread_cpu(self) -> float:
        """CPU seconds the thread serving this sandbox has used, from /proc (it shares this process)."""
        assert self._thread is not None and self._thread.native_id is not None
        fields = Path(f"/proc/self/task/{self._thread.native_id}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def _draw(self) -> None:
        """One real generation of the model's default size, its images downloaded (drawn) now, kept to serve."""
        latency = self.sandbox.state.config.latency
        self.sandbox.configure(latency=0)
        try:
            with httpx2.Client(base_url=self.base_url, headers={"X-API-Key": "bench"}, timeout=120) as http:
                body = {"model": self._model, "prompt": "bench pre-drawn", "num_images": self._count, "celery": False}
                answer = http.post("/api/v1/images/generate", json=body)
                answer.raise_for_status()
                images: list[dict[str, Any]] = answer.json()["images"]
                pictures = [http.get(image["url"]).raise_for_status().content for image in images]
        finally:
            self.sandbox.configure(latency=latency)
        self.pngs[(images[0]["width"], images[0]["height"])] = pictures


def preview_floor(png: bytes) -> int:
    """Pillow alone, as the preview path: open, draft, decode, reduce to long side 512, encode one JPEG."""
    with Image.open(io.BytesIO(png), formats=["PNG"]) as picture:
        picture.draft("RGB", (PREVIEW_SIDE, PREVIEW_SIDE))  # a no-op for PNG, as in ours
        picture.load()
        picture.thumbnail((PREVIEW_SIDE, PREVIEW_SIDE), reducing_gap=2.0)
        small = picture if picture.mode == "RGB" else picture.convert("RGB")
        out = io.BytesIO()
        small.save(out, format="JPEG", quality=PREVIEW_QUALITY)
        return out.tell()


def pillow_floor(pngs: list[bytes], rounds: int = 10) -> float:
    """CPU seconds per image of ``preview_floor`` on these PNGs, in this thread, after one discarded round."""
    for png in pngs:
        preview_floor(png)
    started = time.thread_time()
    for _ in range(rounds):
        for png in pngs:
            preview_floor(png)
    return (time.thread_time() - started) / (rounds * len(pngs))


def pillow_floor_wall(pngs: list[bytes], images: int, threads: int) -> float:
    """Wall seconds for ``images`` previews of these PNGs on ``threads`` threads (Pillow's work drops the GIL):
    what the floor takes on this machine's cores under its load right now."""
    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        for _ in pool.map(preview_floor, (pngs[i % len(pngs)] for i in range(images))):
            pass
    return time.perf_counter() - started


async def delivery_cpu(sandbox: PreDrawnSandbox, folder: Path, calls: int, images: int) -> float:
    """CPU seconds per image of qolaba-mcp's Delivery alone, in this process: ``calls`` concurrent deliveries of
    ``images`` pre-drawn images each, previews on and files saved, less the CPU of the thread serving them."""
    task = next(iter(sandbox.sandbox.state.tasks.values()))  # the pre-drawing generation: finished, right size
    urls = [f"{sandbox.base_url}/_sandbox/images/{task.task_id}/{index}.png" for index in range(images)]
    outputs = [ImageOutput(url=url, width=task.width, height=task.height, content_type="image/png") for url in urls]
    async with Delivery(output_dir=folder, allow_private=True) as delivery:

        async def one(call: int) -> None:
            delivered = await delivery.deliver(f"bench-{call}", outputs, save=True)
            if len(delivered.previews) != images or delivered.notes:
                raise RuntimeError(f"delivery alone: {delivered.notes}")

        await one(-1)  # warms the client, its connections and Pillow's plugins
        started, serving = time.process_time(), sandbox.thread_cpu()
        async with anyio.create_task_group() as group:
            for call in range(calls):
                group.start_soon(one, call)
        return (time.process_time() - started - (sandbox.thread_cpu() - serving)) / (calls * images)
