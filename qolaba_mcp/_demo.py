"""``qolaba-mcp demo``: the server at work, seen from a real MCP client over stdio.

Starts a sandbox on a free port (or, with ``--live``, uses the real API), launches ``qolaba-mcp`` as a stdio
subprocess, calls list_models and then generate_image with a live progress bar, saves the PNGs, then edits the
first one (its background removed, the earlier result given as ``qolaba://images/<task_id>/0``) and says what
the API received.
"""

from __future__ import annotations

import base64
import os
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import anyio
from mcp import Client, StdioServerParameters
from mcp.types import ImageContent

from .sandbox import SandboxConfig, SandboxServer

PROMPT = "A photorealistic cat sitting on the Eiffel Tower at sunset"


class _Bar:
    """A one-line progress bar on a terminal; plain lines when output is piped (CI logs)."""

    def __init__(self) -> None:
        self.tty = sys.stdout.isatty()
        self.count = 0

    async def __call__(self, progress: float, total: float | None, message: str | None) -> None:
        self.count += 1
        fraction = min(progress / total, 1.0) if total else 0.0
        filled = int(fraction * 30)
        bar = "#" * filled + "-" * (30 - filled)
        line = f"  [{bar}] {fraction:4.0%}  {message or ''}"
        if self.tty:
            print(f"\r{line:<100}", end="", flush=True)
        else:
            print(line, flush=True)

    def done(self) -> None:
        if self.tty and self.count:
            print()


def _server_env(base_url: str | None, out: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QOLABA_") or k == "QOLABA_API_KEY"}
    env.update(QOLABA_OUTPUT_DIR=str(out.resolve()), QOLABA_SAVE="on")
    if base_url is not None:
        # a throwaway API gets a throwaway ledger: the user's history stays theirs
        env.update(
            QOLABA_API_BASE_URL=base_url, QOLABA_API_KEY="sandbox-demo-key", QOLABA_LEDGER_URL="sqlite:///:memory:"
        )
    return env


async def _show(base_url: str | None, out: Path) -> int:
    params = StdioServerParameters(command=sys.executable, args=["-m", "qolaba_mcp"], env=_server_env(base_url, out))
    async with Client(params) as client:
        print(f"connected to qolaba-mcp over stdio (protocol {client.protocol_version})")
        models = await client.call_tool("list_models", {"capability": "text-to-image"})
        listed = (models.structured_content or {}).get("models", [])
        print(f"list_models: {len(listed)} text-to-image models, e.g. {', '.join(m['id'] for m in listed[:3])}")

        arguments: dict[str, Any] = {
            "model": "vertex/nano-banana-flash",
            "prompt": PROMPT,
            "aspect_ratio": "16:9",
            "num_images": 2,
            "mode": "async",
            "wait_seconds": 40,
        }
        print(f"generate_image: {arguments['num_images']} images, async, waiting up to 40 s")
        bar = _Bar()
        started = time.monotonic()
        result = await client.call_tool("generate_image", arguments, progress_callback=bar)
        bar.done()
        data = result.structured_content or {}
        if result.is_error or data.get("status") != "SUCCESS":
            text = result.content[0].text if result.content else ""  # type: ignore[union-attr]
            print(f"generation did not finish: {text}", file=sys.stderr)
            return 1
        print(f"done in {time.monotonic() - started:.1f} s with {bar.count} progress notifications")
        previews = [block for block in result.content if isinstance(block, ImageContent)]
        print(f"the result carries {len(previews)} inline previews ({_b64_size(previews):,} bytes) for the model")
        for image, saved in zip(data["images"], data.get("saved_files") or [], strict=False):
            if saved is None:
                continue
            path = Path(saved)
            print(f"saved {path}  {image['width']}x{image['height']}  {path.stat().st_size:,} bytes")
        for note in data.get("notes") or []:
            print(f"note: {note}")
        usage = data.get("usage") or {}
        print(f"reported cost: {usage.get('cost_credits')} credits (${usage.get('cost_usd')})")
        return await _edit(client, data["task_id"])


async def _edit(client: Client, task_id: str) -> int:
    """The first image edited: its background removed, the earlier result named by its qolaba:// URI."""
    source = f"qolaba://images/{task_id}/0"
    print(f"generate_image: remove the background of {source} (fal/birefnet)")
    result = await client.call_tool(
        "generate_image", {"model": "fal/birefnet", "image_urls": [source], "wait_seconds": 40}
    )
    data = result.structured_content or {}
    if result.is_error or data.get("status") != "SUCCESS":
        text = result.content[0].text if result.content else ""  # type: ignore[union-attr]
        print(f"the edit did not finish: {text}", file=sys.stderr)
        return 1
    for saved in data.get("saved_files") or []:
        if saved:
            print(f"saved {saved}  (the cut-out: transparent where the background was)")
    history = await client.call_tool("list_generations", {"limit": 1})
    newest = ((history.structured_content or {}).get("generations") or [{}])[0]
    for made_from in newest.get("inputs") or []:
        print(f"the API received {made_from}")
    return 0


def _b64_size(blocks: list[ImageContent]) -> int:
    return sum(len(base64.b64decode(block.data)) for block in blocks)


def run_demo(*, live: bool = False, out: str = "out") -> int:
    with ExitStack() as stack:
        base_url = None
        if live:
            if not os.environ.get("QOLABA_API_KEY"):
                print("qolaba-mcp demo --live: set QOLABA_API_KEY first", file=sys.stderr)
                return 2
            print("using the real Qolaba API: this generation is billed")
        else:
            sandbox = stack.enter_context(SandboxServer(SandboxConfig(latency=4.0)))
            base_url = sandbox.base_url
            print(f"sandbox running on {base_url} (no key, no network)")
        return anyio.run(_show, base_url, Path(out))
    return 1
