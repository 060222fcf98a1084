"""Spend control end to end: live prices, checks before submitting, estimates, caps, confirmation and the report.

Every test drives qolaba-mcp with the SDK's real Client (stdio subprocess or HTTP) against the sandbox over
loopback; prices are read from the sandbox's published model list, never written down here.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.context import ClientRequestContext
from mcp.types import CallToolResult, ElicitRequestParams, ElicitResult

from qolaba_mcp.api._catalog import Catalog
from qolaba_mcp.sandbox import Fault, SandboxServer

from .conftest import HttpServer, connect, server_env
from .results import data, text

pytestmark = pytest.mark.anyio

FLASH = "vertex/nano-banana-flash"  # $0.03 an image at its default quality, as the sandbox publishes it


def published(sandbox: SandboxServer) -> dict[str, dict[str, Any]]:
    """The sandbox's model list, as any client of the API reads it."""
    body = httpx2.get(f"{sandbox.base_url}/api/v1/images/models", headers={"X-API-Key": "k"}).json()
    return {entry["id"]: entry for entry in body["models"]}


def price(sandbox: SandboxServer, model: str = FLASH, quality: str | None = None) -> float:
    entry = published(sandbox)[model]
    return float(entry["quality_pricing"][quality or entry["quality"][0]])


class Asker:
    """An elicitation callback that answers every question one way, and keeps the questions."""

    def __init__(self, action: str, approve: bool = True, *, content: dict[str, Any] | None = None) -> None:
        self.action = action
        self.content = content if content is not None else {"approve": approve}
        self.questions: list[ElicitRequestParams] = []

    async def __call__(self, context: ClientRequestContext, params: ElicitRequestParams) -> ElicitResult:
        self.questions.append(params)
        content = self.content if self.action == "accept" else None
        return ElicitResult(action=self.action, content=content)  # type: ignore[arg-type]


@asynccontextmanager
async def client(
    sandbox: SandboxServer,
    *,
    mode: str = "auto",
    asker: Asker | None = None,
    http_url: str | None = None,
    **env: str | None,
) -> AsyncIterator[Client]:
    """qolaba-mcp in this process, or the HTTP server at ``http_url``."""
    transport = "http" if http_url else "memory"
    options = {"elicitation_callback": asker}
    async with connect(transport, mode, base_url=sandbox.base_url, http_url=http_url, options=options, **env) as opened:
        yield opened


def submitted(sandbox: SandboxServer) -> int:
    return int(sandbox.sandbox.state.stats()["submit_requests"])


async def generate(session: Client, prompt: str = "a red fox", **arguments: Any) -> CallToolResult:
    return await session.call_tool("generate_image", {"model": FLASH, "prompt": prompt, **arguments})


# -- the live catalogue ---------------------------------------------------------------------------------------------


async def test_list_models_shows_the_published_price_of_every_quality(sandbox: SandboxServer) -> None:
    async with client(sandbox) as session:
        result = await session.call_tool("list_models", {})
        await session.call_tool("list_models", {})  # cached: one fetch serves both
    assert sandbox.sandbox.state.stats()["model_lists"] == 1
    listed = {model["id"]: model for model in data(result)["models"]}
    for model_id, entry in published(sandbox).items():
        assert listed[model_id]["usd_per_image"] == entry["quality_pricing"], model_id
        assert listed[model_id]["price_from"] == "live"
    assert f"{FLASH} " in text(result) and f"price per image 1K ${price(sandbox):.2f} (live)" in text(result)


@pytest.mark.parametrize("endpoint", ["404", "500", "garbage"])
async def test_a_broken_model_list_never_breaks_generation(sandbox: SandboxServer, endpoint: str) -> None:
    each = price(sandbox)
    sandbox.configure(models_endpoint=endpoint)
    async with client(sandbox) as session:
        models = await session.call_tool("list_models", {})
        result = await generate(session)
    assert not models.is_error and "live model list is unavailable" in " ".join(data(models)["warnings"])
    assert all(model["price_from"] == "built-in (assumed)" for model in data(models)["models"])
    assert data(result)["status"] == "SUCCESS", text(result)
    assert data(result)["estimate_usd"] == pytest.approx(each)  # the built-in price agrees here


# -- checks before spending -----------------------------------------------------------------------------------------


async def test_published_limits_refuse_before_anything_is_submitted(sandbox: SandboxServer) -> None:
    entry = published(sandbox)["vertex/imagen-4"]
    cases = {
        "num_images": ({"num_images": entry["maxNumImages"] + 1}, str(entry["maxNumImages"])),
        "aspect_ratio": ({"aspect_ratio": "7:3"}, entry["imageSize"][0]),
        "quality": ({"quality": "8K"}, entry["quality"][0]),
    }
    async with client(sandbox) as session:
        results = {
            name: await session.call_tool("generate_image", {"model": "vertex/imagen-4", "prompt": "x", **args})
            for name, (args, _) in cases.items()
        }
    for name, (_, limit) in cases.items():
        said = text(results[name])
        assert results[name].is_error and said.startswith(f"Error executing tool generate_image: {name}:"), said
        assert limit in said and "Nothing was submitted" in said
    assert submitted(sandbox) == 0


# -- estimates and receipts -----------------------------------------------------------------------------------------


async def test_results_carry_the_estimate_and_the_cost_the_api_reported(sandbox: SandboxServer) -> None:
    each = price(sandbox, FLASH)
    async with client(sandbox) as session:
        result = await generate(session, num_images=2)
        later = await session.call_tool("get_task", {"task_id": data(result)["task_id"]})
    body = data(result)
    assert body["estimate_usd"] == pytest.approx(2 * each)
    assert body["cost_usd"] == body["usage"]["cost_usd"] == pytest.approx(2 * each)
    assert f"estimated ${2 * each:.2f}" in text(result)
    assert data(later)["estimate_usd"] == pytest.approx(2 * each)  # the ledger keeps the estimate


# -- caps -----------------------------------------------------------------------------------------------------------


async def test_per_call_cap_refuses_before_submitting(sandbox: SandboxServer) -> None:
    each = price(sandbox)
    async with client(sandbox, QOLABA_MAX_COST_PER_CALL_USD=str(each * 1.5)) as session:
        refused = await generate(session, num_images=2)
        allowed = await generate(session, num_images=1)
    said = text(refused)
    assert refused.is_error and "QOLABA_MAX_COST_PER_CALL_USD" in said and "Nothing was submitted" in said
    assert f"${2 * each:.2f}" in said and f"${each * 1.5:.3f}".rstrip("0") in said
    assert data(allowed)["status"] == "SUCCESS"
    assert submitted(sandbox) == 1


async def test_max_cost_usd_argument_is_a_cap(sandbox: SandboxServer) -> None:
    async with client(sandbox) as session:
        refused = await generate(session, num_images=2, max_cost_usd=price(sandbox))
        allowed = await generate(session, num_images=2, max_cost_usd=2 * price(sandbox))
    assert refused.is_error and text(refused).startswith("Error executing tool generate_image: max_cost_usd:")
    assert data(allowed)["status"] == "SUCCESS" and submitted(sandbox) == 1


async def test_unpriced_model_is_refused_while_a_cap_applies(sandbox: SandboxServer, tmp_path: Path) -> None:
    models = tmp_path / "models.json"  # a model the sandbox does not know, so the live list does not price it
    models.write_text(json.dumps([{"id": "acme/new", "quality_pricing": {}, "qualities": ["HD"]}]))
    async with client(sandbox, QOLABA_DAILY_BUDGET_USD="1", QOLABA_MODELS_FILE=str(models)) as session:
        result = await session.call_tool("generate_image", {"model": "acme/new", "prompt": "x", "quality": "SD"})
    assert result.is_error and "price of" in text(result) and "not known" in text(result)
    assert submitted(sandbox) == 0


def priced_at(sandbox: SandboxServer, monkeypatch: pytest.MonkeyPatch, usd: float, model: str = FLASH) -> None:
    """The sandbox publishes (and charges) ``usd`` an image for ``model`` at every quality, for this test only."""
    state = sandbox.sandbox.state
    changed = [
        entry.model_copy(update={"quality_pricing": dict.fromkeys(entry.qualities, usd)})
        if entry.id == model
        else entry
        for entry in state.catalog
    ]
    monkeypatch.setattr(state, "catalog", Catalog(changed))


async def test_a_zero_price_cannot_switch_the_budget_off(
    sandbox: SandboxServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A live price of $0 is no price: under a cap it is refused, as an unpriced model is, and never runs up
    spend past the budget (before, 30 such calls under a $0.30 budget were all submitted)."""
    priced_at(sandbox, monkeypatch, 0.0)
    async with client(sandbox, QOLABA_DAILY_BUDGET_USD="0.30") as session:
        results = await anyio_gather([lambda n=n: generate(session, prompt=f"free fox {n}") for n in range(30)])
        spend = data(await session.call_tool("get_spend", {}))
    assert all(r.is_error and "price of" in text(r) and "not known" in text(r) for r in results), text(results[0])
    assert submitted(sandbox) == 0 and spend["last_24h"]["total_usd"] == 0


async def test_an_overflowing_price_is_unknown_never_inf(
    sandbox: SandboxServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    priced_at(sandbox, monkeypatch, 1e308)  # two images: 2e308, past the largest float
    async with client(sandbox, QOLABA_MAX_COST_PER_CALL_USD="1") as capped, client(sandbox) as free:
        refused = await generate(capped, num_images=2)
        made = await generate(free, num_images=2)  # no cap: the call goes on, its price shown as unknown
    assert refused.is_error and "not known" in text(refused) and submitted(sandbox) == 1
    assert data(made)["estimate_usd"] is None and "inf" not in text(made).lower()


CALLS, BUDGET = 40, 0.30


async def anyio_gather(calls: list[Callable[[], Awaitable[CallToolResult]]]) -> list[CallToolResult]:
    """The calls run concurrently; their results."""
    results: list[CallToolResult] = []

    async def one(call: Callable[[], Awaitable[CallToolResult]]) -> None:
        results.append(await call())

    async with anyio.create_task_group() as group:
        for call in calls:
            group.start_soon(one, call)
    return results


async def forty_calls(sessions: list[Client]) -> list[CallToolResult]:
    """CALLS concurrent generations of one image each, spread over the sessions, all different (none joins)."""
    results: list[CallToolResult] = []

    async def one(number: int) -> None:
        results.append(await generate(sessions[number % len(sessions)], prompt=f"fox number {number}"))

    async with anyio.create_task_group() as group:
        for number in range(CALLS):
            group.start_soon(one, number)
    return results


def check_budget_held(results: list[CallToolResult], sandbox: SandboxServer, each: float) -> tuple[int, int]:
    fit = int(BUDGET / each + 1e-9)
    succeeded = [r for r in results if not r.is_error and data(r)["status"] == "SUCCESS"]
    refused = [r for r in results if r.is_error]
    assert len(succeeded) == fit and len(refused) == CALLS - fit, [text(r)[:200] for r in refused[:1]]
    for result in refused:
        said = text(result)
        assert "daily budget of $0.30" in said and "Nothing was submitted" in said and "frees up at" in said
    assert submitted(sandbox) == fit  # the refused never reached the API
    spent = sum(data(r)["cost_usd"] for r in succeeded)
    assert spent <= BUDGET + 1e-9
    return len(succeeded), len(refused)


async def test_forty_concurrent_calls_fit_the_daily_budget_with_sqlite(sandbox: SandboxServer, tmp_path: Path) -> None:
    each = price(sandbox)
    ledger = tmp_path / "ledger.db"
    env = {"QOLABA_DAILY_BUDGET_USD": str(BUDGET), "QOLABA_LEDGER_URL": f"sqlite:///{ledger}"}
    async with client(sandbox, **env) as session:
        results = await forty_calls([session])
        spend = data(await session.call_tool("get_spend", {}))
    check_budget_held(results, sandbox, each)
    assert spend["last_24h"]["total_usd"] == pytest.approx(BUDGET) and spend["remaining_usd"] == pytest.approx(0)
    with sqlite3.connect(ledger) as db:
        total = db.execute("SELECT sum(coalesce(cost_usd, reserved_usd)) FROM generations").fetchone()[0]
        states = dict(db.execute("SELECT state, count(*) FROM generations GROUP BY state").fetchall())
    assert total == pytest.approx(BUDGET) and states == {"succeeded": 10, "failed": 30}


async def test_forty_concurrent_calls_over_two_replicas_on_one_postgres(
    sandbox: SandboxServer, postgres_url: str
) -> None:
    each = price(sandbox)
    env = server_env(sandbox.base_url, QOLABA_DAILY_BUDGET_USD=str(BUDGET), QOLABA_LEDGER_URL=postgres_url)
    replicas = [HttpServer(env), HttpServer(env)]
    try:
        async with client(sandbox, http_url=replicas[0].url) as one, client(sandbox, http_url=replicas[1].url) as two:
            results = await forty_calls([one, two])
            spend = [data(await session.call_tool("get_spend", {})) for session in (one, two)]
    finally:
        for replica in replicas:
            replica.stop()
    check_budget_held(results, sandbox, each)
    assert spend[0] == spend[1] and spend[0]["last_24h"]["total_usd"] == pytest.approx(BUDGET)


@pytest.mark.parametrize(
    ("fault", "outcome", "held"),
    [("failed=1", "generation failed", 0), ("drop-after@submit=1", "unknown", 1)],
    ids=["a-failed-task-frees-its-hold", "an-unknown-outcome-keeps-it"],
)
async def test_the_hold_follows_the_outcome(sandbox: SandboxServer, fault: str, outcome: str, held: int) -> None:
    each = price(sandbox)
    async with client(sandbox, QOLABA_DAILY_BUDGET_USD=str(each)) as session:
        sandbox.configure(faults=[Fault.parse(fault)])
        first = await generate(session, prompt="the first")
        sandbox.configure(faults=[])
        spend = data(await session.call_tool("get_spend", {}))
        second = await generate(session, prompt="the second")
    assert first.is_error and outcome in text(first).lower()
    assert spend["last_24h"]["total_usd"] == pytest.approx(held * each)  # unknown: it may have been paid for
    if held:
        assert second.is_error and "daily budget" in text(second)
    else:
        assert data(second)["status"] == "SUCCESS", text(second)


# -- confirmation ---------------------------------------------------------------------------------------------------

ERAS = ["auto", "legacy"]  # auto settles on 2026-07-28 (input_required); legacy is the 2025-11-25 handshake


def confirm_env(sandbox: SandboxServer) -> dict[str, str]:
    return {"QOLABA_CONFIRM_ABOVE_USD": str(price(sandbox) * 1.5)}


@pytest.mark.parametrize("mode", ERAS)
async def test_the_user_is_asked_above_the_threshold_and_accepts(sandbox: SandboxServer, mode: str) -> None:
    asker = Asker("accept")
    async with client(sandbox, mode=mode, asker=asker, **confirm_env(sandbox)) as session:
        cheap = await generate(session, prompt="one fox")
        dear = await generate(session, prompt="two foxes", num_images=2)
    assert data(cheap)["status"] == "SUCCESS" and data(dear)["status"] == "SUCCESS", text(dear)
    assert len(asker.questions) == 1  # only the call above the threshold
    question = asker.questions[0].message
    each = price(sandbox)
    assert f"2 images of {FLASH}" in question and f"${2 * each:.2f}" in question
    assert f"Spent in the last 24 hours: ${each:.2f}" in question  # the cheap call before it
    assert submitted(sandbox) == 2


@pytest.mark.parametrize("mode", ERAS)
@pytest.mark.parametrize(("action", "approve"), [("decline", True), ("cancel", True), ("accept", False)])
async def test_a_user_who_says_no_submits_nothing(
    sandbox: SandboxServer, mode: str, action: str, approve: bool
) -> None:
    asker = Asker(action, approve)
    async with client(sandbox, mode=mode, asker=asker, **confirm_env(sandbox)) as session:
        result = await generate(session, num_images=2)
    assert result.is_error and "nothing was submitted" in text(result) and len(asker.questions) == 1
    assert submitted(sandbox) == 0


@pytest.mark.parametrize("mode", ERAS)
@pytest.mark.parametrize("content", [{}, {"ok": False}, {"approve": "yes"}], ids=["empty", "other-field", "text"])
async def test_only_an_explicit_approve_true_spends(sandbox: SandboxServer, mode: str, content: dict[str, Any]) -> None:
    """An accepted form without approve: true is no yes (before, {} and {"ok": false} were submitted and charged)."""
    asker = Asker("accept", content=content)
    async with client(sandbox, mode=mode, asker=asker, **confirm_env(sandbox)) as session:
        result = await generate(session, num_images=2)
    assert result.is_error and len(asker.questions) == 1, text(result)
    assert submitted(sandbox) == 0
    schema = asker.questions[0].requested_schema  # a valid form: one boolean, unticked to start with
    assert schema["properties"]["approve"]["type"] == "boolean"
    assert schema["properties"]["approve"].get("default", False) is False


@pytest.mark.parametrize("mode", ERAS)
async def test_a_client_that_cannot_ask_needs_max_cost_usd(sandbox: SandboxServer, mode: str) -> None:
    each = price(sandbox)
    async with client(sandbox, mode=mode, **confirm_env(sandbox)) as session:
        refused = await generate(session, num_images=2)
        vouched = await generate(session, num_images=2, max_cost_usd=2 * each)
    said = text(refused)
    assert refused.is_error and "cannot show the user a confirmation" in said and "Ask your user" in said
    assert f"max_cost_usd set to at least {2 * each:g}" in said
    assert data(vouched)["status"] == "SUCCESS"
    assert submitted(sandbox) == 1


async def test_confirmation_over_http_in_both_eras(sandbox: SandboxServer) -> None:
    server = HttpServer(server_env(sandbox.base_url, **confirm_env(sandbox)))
    try:
        for mode in ERAS:
            asker = Asker("accept")
            async with client(sandbox, mode=mode, asker=asker, http_url=server.url) as session:
                result = await generate(session, prompt=f"http {mode}", num_images=2)
            assert data(result)["status"] == "SUCCESS", text(result)
            assert len(asker.questions) == 1, mode
    finally:
        server.stop()


# -- spend visible --------------------------------------------------------------------------------------------------


async def test_spend_report_tool_and_cli(sandbox: SandboxServer, tmp_path: Path) -> None:
    each = price(sandbox)
    ledger = f"sqlite:///{tmp_path}/ledger.db"
    async with client(sandbox, QOLABA_LEDGER_URL=ledger, QOLABA_DAILY_BUDGET_USD="1") as session:
        await generate(session, num_images=2)
        await session.call_tool("generate_image", {"model": "vertex/imagen-4-fast", "prompt": "x"})
        report = await session.call_tool("get_spend", {})
        flash_only = data(await session.call_tool("get_spend", {"model": FLASH}))
        unused = data(await session.call_tool("get_spend", {"model": "vertex/imagen-4"}))
    fast = price(sandbox, "vertex/imagen-4-fast")
    assert flash_only["last_24h"] == {
        "total_usd": pytest.approx(2 * each),
        "by_model": {FLASH: pytest.approx(2 * each)},
    }
    assert unused["last_30d"] == {"total_usd": 0, "by_model": {}}
    assert flash_only["remaining_usd"] == unused["remaining_usd"] == pytest.approx(1 - 2 * each - fast)
    body = data(report)
    assert body["last_24h"]["by_model"] == pytest.approx({FLASH: 2 * each, "vertex/imagen-4-fast": fast})
    assert body["last_30d"]["total_usd"] == pytest.approx(2 * each + fast)
    assert body["remaining_usd"] == pytest.approx(1 - 2 * each - fast) and body["daily_budget_usd"] == 1
    assert "Spent in the last 24 hours" in text(report) and "daily budget $1.00" in text(report)

    env = server_env(sandbox.base_url, QOLABA_LEDGER_URL=ledger, QOLABA_DAILY_BUDGET_USD="1")
    run = [sys.executable, "-m", "qolaba_mcp", "spend"]
    shown = subprocess.run(run, env=env, capture_output=True, text=True, timeout=60, check=True).stdout
    as_json = json.loads(subprocess.run([*run, "--json"], env=env, capture_output=True, text=True, check=True).stdout)
    assert FLASH in shown and f"${2 * each:.2f}" in shown and "daily budget $1.00" in shown
    assert as_json["last_24h"]["total_usd"] == pytest.approx(2 * each + fast)
