"""Hypothesis throws malformed arguments at the three tools over one real stdio session.

Each call must end in a result or a JSON-RPC error within its time limit (never a crash or a hang), and an
error result must name a field it is about. FUZZ_EXAMPLES sets the examples per tool (`make fuzz` runs more).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from typing import Any

import anyio
import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mcp import Client, MCPError
from mcp.types import TextContent

from qolaba_mcp.sandbox import SandboxServer

from .conftest import connect

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "60"))
GENERATE_FIELDS = [
    "model", "prompt", "image_urls", "reference_images", "mask_url", "aspect_ratio", "quality", "num_images",
    "seed", "num_inference_steps", "guidance_scale", "temperature", "negative_prompt", "mode", "wait_seconds",
]  # fmt: skip
ODD_TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40)
HUGE_TEXT = st.sampled_from(["x", "é", "🐈", "\u202e", "\x00"]).flatmap(
    lambda ch: st.integers(0, 1_000_000).map(lambda n: ch * n)
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    ODD_TEXT,
    st.sampled_from(["vertex/nano-banana-flash", "vertex/imagen-4", "fal/birefnet", "16:9", "4K", "sync", "async"]),
)
VALUES = st.recursive(
    st.one_of(SCALARS, HUGE_TEXT),
    lambda inner: st.one_of(
        st.lists(inner, max_size=20), st.dictionaries(st.sampled_from(["url", "description", "x"]), inner, max_size=3)
    ),
    max_leaves=25,
)
WAIT = st.one_of(st.just(0), st.floats(min_value=-5, max_value=5), ODD_TEXT)


def arguments(fields: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    names = st.one_of(st.sampled_from(fields), ODD_TEXT.filter(bool))
    base = st.dictionaries(names, VALUES, max_size=6)
    # wait_seconds stays small so a call that is valid finishes at once against a zero-latency sandbox
    return st.tuples(base, st.one_of(st.none(), WAIT)).map(
        lambda pair: {**pair[0], **({"wait_seconds": pair[1]} if pair[1] is not None else {})}
    )


NEAR_VALID = st.fixed_dictionaries(
    {
        "model": st.sampled_from(["vertex/nano-banana-flash", "vertex/imagen-4", "acme/unknown"]),
        "prompt": st.one_of(ODD_TEXT, HUGE_TEXT),
    },
    optional={
        "num_images": st.integers(-3, 13),
        "aspect_ratio": st.one_of(ODD_TEXT, st.sampled_from(["16:9", "1:1", "7:3", "99:1"])),
        "quality": st.sampled_from(["1K", "4K", "ultra", ""]),
        "seed": st.integers(-5, 2**64),
        "temperature": st.floats(-1, 3),
        "mode": st.sampled_from(["sync", "async", "later"]),
        "wait_seconds": st.floats(0, 1),
        "reference_images": st.lists(st.fixed_dictionaries({"url": ODD_TEXT}), max_size=16),
    },
)

TALLY: Counter[str] = Counter()


@pytest.fixture(scope="module")
def session(shared_sandbox: SandboxServer) -> Iterator[tuple[BlockingPortal, Client]]:
    shared_sandbox.configure(latency=0, faults=[], api_keys=None)
    opened = connect("memory", "auto", base_url=shared_sandbox.base_url)
    with start_blocking_portal() as portal, portal.wrap_async_context_manager(opened) as client:
        yield portal, client
    print(f"\nfuzz: {sum(TALLY.values())} tool calls: {dict(TALLY)}")


async def _call(client: Client, tool: str, args: dict[str, Any]) -> Any:
    with anyio.fail_after(60):  # a hang fails the test
        return await client.call_tool(tool, args)


def check(session: tuple[BlockingPortal, Client], tool: str, args: dict[str, Any]) -> None:
    portal, client = session
    try:
        result = portal.call(_call, client, tool, args)
    except MCPError:
        TALLY[f"{tool}: json-rpc error"] += 1
        return
    if not result.is_error:
        TALLY[f"{tool}: result"] += 1
        return
    TALLY[f"{tool}: error result"] += 1
    text = " ".join(block.text for block in result.content if isinstance(block, TextContent))
    named = [name for name in [*args, "model", "task_id"] if isinstance(name, str) and name and name in text]
    assert named, f"the error names no field: {text[:500]!r} for {list(args)}"


FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)


def fuzz(session: tuple[BlockingPortal, Client], tool: str, strategy: st.SearchStrategy[dict[str, Any]]) -> None:
    """``EXAMPLES`` calls of ``tool`` with arguments drawn from ``strategy``, each checked; then the server still
    answers. Each test checks its own tally: under xdist the tests of this module may run on different workers."""

    @FUZZ
    @given(args=strategy)
    def run(args: dict[str, Any]) -> None:
        check(session, tool, args)

    before = sum(count for key, count in TALLY.items() if key.startswith(f"{tool}:"))
    run()
    made = sum(count for key, count in TALLY.items() if key.startswith(f"{tool}:")) - before
    assert made >= EXAMPLES, f"only {made} {tool} calls were made"
    FUZZED.append(tool)
    still_answers(session)


def still_answers(session: tuple[BlockingPortal, Client]) -> None:
    portal, client = session
    result = portal.call(_call, client, "list_models", {})
    assert not result.is_error and result.structured_content["models"]  # type: ignore[index]


FUZZED: list[str] = []  # the fuzz tests that have run in this process


def test_generate_image_survives_anything(session: tuple[BlockingPortal, Client]) -> None:
    fuzz(session, "generate_image", st.one_of(arguments(GENERATE_FIELDS), NEAR_VALID))


def test_get_task_survives_anything(session: tuple[BlockingPortal, Client]) -> None:
    fuzz(session, "get_task", arguments(["task_id", "wait_seconds"]))


def test_list_models_survives_anything(session: tuple[BlockingPortal, Client]) -> None:
    fuzz(session, "list_models", arguments(["capability"]))


def test_server_still_answers_after_the_fuzz(session: tuple[BlockingPortal, Client]) -> None:
    still_answers(session)
    assert sum(TALLY.values()) >= EXAMPLES * len(FUZZED)  # every call of the fuzz run here was counted
