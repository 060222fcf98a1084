"""An identical call moments after its result was delivered pays again: the result says so."""

from __future__ import annotations

import pytest
from mcp.types import TextContent

from qolaba_mcp.sandbox import SandboxServer

from .conftest import connect

pytestmark = pytest.mark.anyio

FOX = {"model": "vertex/nano-banana-flash", "prompt": "a fox asked for twice", "seed": 3}


async def test_an_identical_call_after_delivery_is_marked_as_a_new_paid_generation(sandbox: SandboxServer) -> None:
    async with connect("memory", "auto", base_url=sandbox.base_url, QOLABA_SAVE="off") as client:
        first = await client.call_tool("generate_image", FOX)
        other = await client.call_tool("generate_image", {**FOX, "seed": 4})
        second = await client.call_tool("generate_image", FOX)
    first_task = first.structured_content["task_id"]  # type: ignore[index]
    assert not any("already delivered" in note for note in first.structured_content["notes"])  # type: ignore[index]
    assert not any("already delivered" in note for note in other.structured_content["notes"])  # type: ignore[index]
    notes = second.structured_content["notes"]  # type: ignore[index]
    assert second.structured_content["task_id"] != first_task  # type: ignore[index]
    assert any(f"(task {first_task}, finished " in note and "new paid generation" in note for note in notes), notes
    assert isinstance(second.content[0], TextContent) and "new paid generation" in second.content[0].text
    assert sandbox.stats()["submissions"] == 3
