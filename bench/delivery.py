"""What a 4-image 16:9 result costs the host: tools/list bytes, result text, previews, and the time previews add.

    .venv/bin/python bench/delivery.py --runs 10

Runs a zero-latency sandbox and qolaba-mcp over stdio twice (previews on, then off), times generate_image from
the client, and reports medians.
"""

from __future__ import annotations

import argparse
import base64
import os
import statistics
import sys
import time
from typing import Any

import anyio
from mcp import Client, StdioServerParameters
from mcp.types import ImageContent, TextContent

from qolaba_mcp.sandbox import SandboxConfig, SandboxServer

ARGS = {"model": "vertex/nano-banana-pro", "prompt": "bench", "aspect_ratio": "16:9", "num_images": 4, "save": False}


async def measure(base_url: str, preview: str, runs: int) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QOLABA_")}
    # an in-memory ledger: a benchmark's generations never reach a user's real ledger
    env.update(
        QOLABA_API_BASE_URL=base_url,
        QOLABA_API_KEY="bench",
        QOLABA_PREVIEW=preview,
        QOLABA_LEDGER_URL="sqlite:///:memory:",
    )
    params = StdioServerParameters(command=sys.executable, args=["-m", "qolaba_mcp"], env=env)
    times: list[float] = []
    async with Client(params) as client:
        listed = await client.list_tools()
        for _ in range(runs + 1):
            started = time.perf_counter()
            result = await client.call_tool("generate_image", ARGS)
            times.append(time.perf_counter() - started)
    text = next(block.text for block in result.content if isinstance(block, TextContent))
    previews = [base64.b64decode(b.data) for b in result.content if isinstance(b, ImageContent)]
    return {
        "tools_list": len(listed.model_dump_json(by_alias=True, exclude_none=True).encode()),
        "text": len(text.encode()),
        "previews": [len(p) for p in previews],
        "result": len(result.model_dump_json(by_alias=True, exclude_none=True).encode()),
        "median_s": statistics.median(times[1:]),  # the first call warms connections and imports
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    with SandboxServer(SandboxConfig(latency=0)) as sandbox:
        on = anyio.run(measure, sandbox.base_url, "on", args.runs)
        off = anyio.run(measure, sandbox.base_url, "off", args.runs)
    print(f"tools/list JSON:        {on['tools_list']:,} bytes")
    print(f"result text:            {on['text']:,} bytes")
    print(f"previews (4 JPEG):      {sum(on['previews']):,} bytes {on['previews']}")
    print(f"whole result, previews: {on['result']:,} bytes (without: {off['result']:,})")
    print(
        f"generate_image median:  {on['median_s'] * 1000:.0f} ms with previews, {off['median_s'] * 1000:.0f} ms "
        f"without: previews add {(on['median_s'] - off['median_s']) * 1000:.0f} ms"
    )


if __name__ == "__main__":
    main()
