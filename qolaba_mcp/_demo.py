"""``make demo``: a round trip against a sandbox on a free port; PNGs land under ./out."""

from __future__ import annotations

import time
from pathlib import Path

import anyio
import httpx2

from ._client import QolabaClient
from ._models import GenerateRequest, GenerateResult, Task
from .sandbox import SandboxConfig, SandboxServer


async def _round_trip(base_url: str, out: Path) -> None:
    async with QolabaClient(base_url=base_url, api_key="sandbox-key") as client:
        request = GenerateRequest(
            model="vertex/nano-banana-flash",
            prompt="A photorealistic cat sitting on the Eiffel Tower at sunset",
            aspect_ratio="16:9",
            num_images=2,
            celery=True,
        )
        created = await client.generate(request)
        print(f"submitted {created.task_id}")
        started = time.monotonic()
        while True:
            task: Task = await client.get_task(created.task_id)
            print(f"  {task.status:<10} {time.monotonic() - started:5.1f} s")
            if task.done:
                break
            await anyio.sleep(0.5)
        if task.status != "SUCCESS":
            raise SystemExit(f"task failed: {task.error}")
        out.mkdir(parents=True, exist_ok=True)
        async with httpx2.AsyncClient() as http:
            for index, image in enumerate(task.images):
                data = (await http.get(image.url)).content
                path = out / f"{task.task_id}_{index}.png"
                path.write_bytes(data)
                print(f"saved {path} ({image.width}x{image.height}, {len(data)} bytes)")
        usage = task.usage
        if usage:
            print(f"cost: {usage.cost_credits} credits (${usage.cost_usd})")


def run_demo() -> int:
    _ = GenerateResult
    with SandboxServer(SandboxConfig(latency=2.0)) as sandbox:
        print(f"sandbox on {sandbox.base_url}")
        anyio.run(_round_trip, sandbox.base_url, Path("out"))
    return 0
