"""Spend caps in the ledger: reservations held atomically against a budget, run against SQLite and PostgreSQL."""

from __future__ import annotations

import math
import random
from typing import Any

import pytest

from qolaba_mcp.ledger import (
    SCHEMA_VERSION,
    Changes,
    LedgerError,
    LedgerRow,
    LedgerStore,
    NewGeneration,
    Query,
    Reservation,
    open_ledger,
)
from qolaba_mcp.money._budget import DailyBudget
from tests.test_ledger_store import ALICE, BOB, NOW, backend, concurrently, make_old_ledger, new, raw

pytestmark = pytest.mark.anyio

DAY = 86_400.0
CALLS, PRICE, BUDGET = 40, 0.03, 0.30  # room for exactly 10


_seed = iter(range(1_000_000))


async def row_at(store: LedgerStore, at: float, *, principal: str = ALICE, model: str = "flux-pro") -> LedgerRow:
    row, joined = await store.begin_or_join(
        new(principal=principal, model=model, seed=next(_seed)), window_seconds=0, now=at
    )
    assert not joined
    return row


async def reserve(
    store: LedgerStore,
    row: LedgerRow,
    amount: float,
    *,
    now: float = NOW,
    daily_budget: float | None = BUDGET,
    per_call_cap: float | None = None,
) -> Reservation:
    return await store.reserve(
        row.id,
        principal=row.principal,
        amount=amount,
        policy=DailyBudget(daily_budget=daily_budget, per_call_cap=per_call_cap),
        now=now,
    )


async def spent_in_window(url: str, *, now: float = NOW) -> float:
    """What ALICE has spent in the day before ``now``, read from the database itself."""
    total = await raw(
        url,
        "SELECT coalesce(sum(coalesce(cost_usd, reserved_usd)), 0) FROM generations"
        f" WHERE principal = '{ALICE}' AND created_at > {now - DAY}",
    )
    return float(total[0][0])


def check_forty_reserves(results: list[Reservation]) -> None:
    granted = [result for result in results if result.ok]
    refused = [result for result in results if not result.ok]
    assert len(granted) == 10 and len(refused) == 30
    # Each grant saw every earlier one: the spends they saw are 0, 0.03, ..., 0.27, once each.
    assert sorted(round(result.spent_usd, 6) for result in granted) == [round(i * PRICE, 6) for i in range(10)]
    assert all(result.limit_name == "daily" and result.limit_usd == BUDGET for result in refused)
    assert all(result.spent_usd == pytest.approx(BUDGET) for result in refused)


# -- atomic budgets ----------------------------------------------------------------------------------------------


async def test_forty_concurrent_reserves_through_one_store_grant_exactly_ten(
    ledger_url: str, store: LedgerStore
) -> None:
    rows = [await row_at(store, NOW - i) for i in range(CALLS)]
    pending = iter(rows)
    results = await concurrently(CALLS, lambda: reserve(store, next(pending), PRICE))
    check_forty_reserves(results)
    assert await spent_in_window(ledger_url) == pytest.approx(BUDGET)
    held = await raw(ledger_url, "SELECT count(*) FROM generations WHERE reserved_usd > 0 AND estimate_usd > 0")
    assert held == [(10,)]


async def test_forty_concurrent_reserves_through_two_stores_on_one_database_grant_exactly_ten(ledger_url: str) -> None:
    # Two stores on one SQLite file are two processes' worth of connections; on PostgreSQL, two pools are two
    # replicas.
    first, second = open_ledger(ledger_url), open_ledger(ledger_url)
    await first.open()
    await second.open()
    try:
        rows = [await row_at(first, NOW - i) for i in range(CALLS)]
        pending = iter(rows)
        results = await concurrently(
            CALLS, lambda: reserve(first, next(pending), PRICE), lambda: reserve(second, next(pending), PRICE)
        )
    finally:
        await first.close()
        await second.close()
    check_forty_reserves(results)
    assert await spent_in_window(ledger_url) == pytest.approx(BUDGET)


async def test_reserve_holds_the_amount_and_update_keeps_it(store: LedgerStore) -> None:
    row = await row_at(store, NOW)
    assert (row.estimate_usd, row.reserved_usd) == (None, 0.0)
    assert await reserve(store, row, 0.12) == Reservation(ok=True, spent_usd=0.0, amount=0.12)
    changed = await store.update(row.id, Changes(state="running", task_id="t-1"), now=NOW + 1)
    assert (changed.state, changed.estimate_usd, changed.reserved_usd) == ("running", 0.12, 0.12)
    assert await store.get(row.id) == changed
    # Reserving the same row again replaces its reservation rather than adding to it.
    again = await reserve(store, row, 0.2)
    assert again.ok and again.spent_usd == 0.0
    assert (await store.get(row.id)).reserved_usd == 0.2  # type: ignore[union-attr]


async def test_a_reservation_needs_the_principals_own_existing_row(store: LedgerStore) -> None:
    bobs = await row_at(store, NOW, principal=BOB)
    with pytest.raises(LedgerError, match="no generation"):
        await store.reserve(
            bobs.id, principal=ALICE, amount=0.1, policy=DailyBudget(daily_budget=1.0, per_call_cap=None), now=NOW
        )
    with pytest.raises(LedgerError, match="no generation"):
        await store.reserve(
            "missing", principal=ALICE, amount=0.1, policy=DailyBudget(daily_budget=1.0, per_call_cap=None), now=NOW
        )
    with pytest.raises(LedgerError, match="no generation"):
        await store.release("missing", now=NOW)
    with pytest.raises(LedgerError, match="no generation"):
        await store.settle("missing", actual_usd=0.1, now=NOW)


async def test_the_per_call_cap_refuses_before_the_budget(store: LedgerStore) -> None:
    row = await row_at(store, NOW)
    refused = await reserve(store, row, 0.5, daily_budget=None, per_call_cap=0.4)
    assert refused == Reservation(ok=False, spent_usd=0.0, amount=0.5, limit_name="per_call", limit_usd=0.4)
    assert (await store.get(row.id)).reserved_usd == 0.0  # type: ignore[union-attr]
    assert (await reserve(store, row, 0.4, daily_budget=None, per_call_cap=0.4)).ok
    other = await row_at(store, NOW)
    # Over the cap and over the budget: the cap is what refused it.
    assert (await reserve(store, other, 0.5, daily_budget=0.6, per_call_cap=0.4)).limit_name == "per_call"
    assert (await reserve(store, other, 0.3, daily_budget=0.6, per_call_cap=0.4)).limit_name == "daily"


async def test_other_principals_spend_does_not_count(store: LedgerStore) -> None:
    await reserve(store, await row_at(store, NOW, principal=BOB), 0.3)
    granted = await reserve(store, await row_at(store, NOW), 0.3)
    assert granted.ok and granted.spent_usd == 0.0


# -- settle and release ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("actual", "room"), [(0.25, 0.05), (0.02, 0.28), (0.0, 0.30)])
async def test_settle_replaces_the_reservation_by_the_actual_cost(
    store: LedgerStore, actual: float, room: float
) -> None:
    row = await row_at(store, NOW)
    assert (await reserve(store, row, 0.10)).ok
    settled = await store.settle(row.id, actual_usd=actual, now=NOW + 5)
    assert (settled.cost_usd, settled.reserved_usd, settled.estimate_usd) == (actual, 0.0, 0.10)
    assert settled.updated_at == NOW + 5
    assert await store.spend(principal=ALICE, since=0) == pytest.approx(actual)
    too_much = await reserve(store, await row_at(store, NOW + 6), room + 0.01, now=NOW + 6)
    assert not too_much.ok and too_much.spent_usd == pytest.approx(actual)
    assert (await reserve(store, await row_at(store, NOW + 7), room, now=NOW + 7)).ok


async def test_settle_without_a_cost_keeps_the_reservation(store: LedgerStore) -> None:
    row = await row_at(store, NOW)
    await reserve(store, row, 0.10)
    settled = await store.settle(row.id, actual_usd=None, now=NOW + 5)
    assert (settled.cost_usd, settled.reserved_usd) == (None, 0.10)
    assert (await reserve(store, await row_at(store, NOW), 0.25)).spent_usd == pytest.approx(0.10)


async def test_release_frees_the_room_and_an_unknown_submission_keeps_it(store: LedgerStore) -> None:
    failed, unknown = await row_at(store, NOW), await row_at(store, NOW)
    assert (await reserve(store, failed, 0.15)).ok
    assert (await reserve(store, unknown, 0.15)).ok
    await store.update(unknown.id, Changes(state="unknown"), now=NOW + 1)
    third = await row_at(store, NOW + 2)
    assert not (await reserve(store, third, 0.15, now=NOW + 2)).ok
    await store.update(failed.id, Changes(state="failed", error="boom"), now=NOW + 3)
    released = await store.release(failed.id, now=NOW + 3)
    assert (released.state, released.reserved_usd, released.estimate_usd) == ("failed", 0.0, 0.15)
    granted = await reserve(store, third, 0.15, now=NOW + 4)
    assert granted.ok and granted.spent_usd == pytest.approx(0.15)  # the unknown one still counts


# -- the window --------------------------------------------------------------------------------------------------


async def test_rows_older_than_the_window_do_not_count(store: LedgerStore) -> None:
    for at in (NOW - DAY - 50, NOW - DAY):  # out of the window: created_at must be after now - window
        await store.update((await row_at(store, at)).id, Changes(cost_usd=0.3), now=at)
    inside = await row_at(store, NOW - DAY + 1)
    await store.update(inside.id, Changes(cost_usd=0.1), now=NOW)
    result = await reserve(store, await row_at(store, NOW), 0.25)
    assert not result.ok and result.spent_usd == pytest.approx(0.1)
    assert result.frees_at == NOW + 1  # when `inside` leaves the window
    assert (await reserve(store, await row_at(store, NOW), 0.2)).ok


async def test_frees_at_is_when_enough_of_the_spend_has_aged_out(store: LedgerStore) -> None:
    for at in (NOW - 1000, NOW - 500, NOW - 100):
        assert (await reserve(store, await row_at(store, at), 0.10, now=at)).ok
    late = await row_at(store, NOW)
    refused = await reserve(store, late, 0.15)
    # 0.30 spent, 0.15 more needs 0.15 out: the two oldest rows, so when the second leaves.
    assert not refused.ok and refused.spent_usd == pytest.approx(0.3) and refused.amount == 0.15
    assert (refused.limit_name, refused.limit_usd, refused.frees_at) == ("daily", BUDGET, NOW - 500 + DAY)
    assert not (await reserve(store, late, 0.15, now=refused.frees_at - 0.001)).ok
    assert (await reserve(store, late, 0.15, now=refused.frees_at)).ok
    # An amount over the whole budget never fits.
    never = await reserve(store, await row_at(store, NOW), 0.31)
    assert never.limit_name == "daily" and never.frees_at is None


async def test_a_custom_window(store: LedgerStore) -> None:
    assert (await reserve(store, await row_at(store, NOW - 60), 0.3, now=NOW - 60)).ok
    row = await row_at(store, NOW)
    hour = await store.reserve(
        row.id,
        principal=ALICE,
        amount=0.1,
        policy=DailyBudget(daily_budget=0.3, per_call_cap=None),
        window_seconds=3600,
        now=NOW,
    )
    assert not hour.ok and hour.frees_at == NOW - 60 + 3600
    minute = await store.reserve(
        row.id,
        principal=ALICE,
        amount=0.1,
        policy=DailyBudget(daily_budget=0.3, per_call_cap=None),
        window_seconds=60,
        now=NOW,
    )
    assert minute.ok and minute.spent_usd == 0.0


# -- the report --------------------------------------------------------------------------------------------------


async def test_spend_report_by_model_for_a_day_and_a_month(store: LedgerStore) -> None:
    async def spent(at: float, model: str, *, cost: float | None = None, held: float = 0.0, who: str = ALICE) -> None:
        row = await row_at(store, at, principal=who, model=model)
        if held:
            assert (await reserve(store, row, held, now=at, daily_budget=None)).ok
        if cost is not None:
            await store.settle(row.id, actual_usd=cost, now=at)

    await spent(NOW - 10, "flux-pro", cost=0.04, held=0.05)  # the cost, not the reservation
    await spent(NOW - 20, "flux-pro", held=0.05)  # still running: the reservation
    await spent(NOW - 30, "sdxl", cost=0.01)
    await spent(NOW - 40, "sdxl")  # nothing spent yet: listed at $0
    await spent(NOW - 2 * DAY, "ideogram", cost=0.5)
    await spent(NOW - 2 * DAY, "flux-pro", cost=0.25)
    await spent(NOW - 31 * DAY, "flux-pro", cost=9.0)  # out of both
    await spent(NOW, "flux-pro", cost=7.0, who=BOB)  # another principal
    report: dict[str, Any] = await store.spend_report(principal=ALICE, now=NOW)
    assert report == {
        "last_24h": {"total_usd": 0.1, "by_model": {"flux-pro": 0.09, "sdxl": 0.01}},
        "last_30d": {"total_usd": 0.85, "by_model": {"flux-pro": 0.34, "ideogram": 0.5, "sdxl": 0.01}},
    }
    empty = {"total_usd": 0.0, "by_model": {}}
    assert await store.spend_report(principal="nobody", now=NOW) == {"last_24h": empty, "last_30d": empty}
    everyone = await store.spend_report(principal=None, now=NOW)  # the local CLI's view: every principal
    assert everyone["last_24h"] == {"total_usd": 7.1, "by_model": {"flux-pro": 7.09, "sdxl": 0.01}}
    assert everyone["last_30d"]["total_usd"] == pytest.approx(7.85)


# -- schema versions 2 and 3 -------------------------------------------------------------------------------------


async def test_an_empty_database_gets_the_spend_columns(ledger_url: str, store: LedgerStore) -> None:
    await row_at(store, NOW)
    assert await raw(ledger_url, "SELECT schema_version FROM meta") == [(SCHEMA_VERSION,)]
    assert await raw(ledger_url, "SELECT estimate_usd, reserved_usd FROM generations") == [(None, 0.0)]


async def test_a_version_one_database_is_migrated_and_keeps_its_rows(
    ledger_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    await make_old_ledger(ledger_url, 1, monkeypatch)
    false = "0" if backend(ledger_url).__name__.endswith("_sqlite") else "false"
    for row_id, cost in (("old-1", "0.25"), ("old-2", "NULL")):
        await raw(
            ledger_url,
            "INSERT INTO generations (id, principal, api_base, request_hash, request, model, prompt, inputs, state,"
            " task_id, created_at, updated_at, finished_at, images, usage, cost_usd, error, saved_files, delivered)"
            f" VALUES ('{row_id}', '{ALICE}', 'https://api.qolaba.ai/api/v1', 'h-{row_id}', '{{}}', 'flux-pro',"
            f" 'an old fox', '[]', 'succeeded', 'task-{row_id}', {NOW - 60}, {NOW - 60}, {NOW - 50}, '[]', NULL,"
            f" {cost}, NULL, '[]', {false})",
        )
    store = open_ledger(ledger_url)
    await store.open()
    try:
        assert await raw(ledger_url, "SELECT schema_version FROM meta") == [(SCHEMA_VERSION,)]
        kept = await store.get("old-1")
        assert kept is not None and (kept.prompt, kept.cost_usd, kept.task_id) == ("an old fox", 0.25, "task-old-1")
        assert (kept.estimate_usd, kept.reserved_usd) == (None, 0.0)
        assert sorted(row.id for row in (await store.history(Query(search="fox")))[0]) == ["old-1", "old-2"]
        result = await reserve(store, await row_at(store, NOW), 0.05)
        assert result.ok and result.spent_usd == pytest.approx(0.25)
    finally:
        await store.close()


async def minute_sums(url: str) -> list[tuple[str, int, float]]:
    """spend_minutes as the database holds it, rounded, without the minutes whose spend has all gone."""
    found = await raw(url, "SELECT principal, minute, usd FROM spend_minutes ORDER BY principal, minute")
    return [(who, int(minute), round(usd, 6)) for who, minute, usd in found if round(usd, 6)]


async def row_sums(url: str) -> list[tuple[str, int, float]]:
    """What spend_minutes must hold, summed from the rows themselves (a negative amount counts as 0)."""
    found = await raw(url, "SELECT principal, created_at, cost_usd, reserved_usd FROM generations")
    sums: dict[tuple[str, int], float] = {}
    for who, at, cost, held in found:
        amount = max(cost if cost is not None else held, 0.0)
        sums[(who, math.floor(at / 60))] = sums.get((who, math.floor(at / 60)), 0.0) + amount
    return [(who, minute, round(usd, 6)) for (who, minute), usd in sorted(sums.items()) if round(usd, 6)]


async def test_a_version_two_database_gets_its_spend_summed_by_the_minute(
    ledger_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The minute sums of schema 3 are filled from the rows a version-2 ledger already holds."""
    await make_old_ledger(ledger_url, 2, monkeypatch)
    # Rows as a version-2 ledger holds them (today's code writes columns that version has not got).
    for n, (at, cost, held) in enumerate([(NOW - DAY - 5, 9.0, 0.0), (NOW - DAY + 5, 0.10, 0.0),
                                          (NOW - DAY + 30, None, 0.05), (NOW - 3600, 0.02, 0.0),
                                          (NOW - 3590, None, 0.03), (NOW - 60, -1.0, 0.0)]):  # fmt: skip
        await raw(
            ledger_url,
            "INSERT INTO generations (id, principal, api_base, request_hash, request, model, inputs, state, created_at,"
            " updated_at, images, saved_files, cost_usd, reserved_usd) VALUES"
            f" ('v2-{n}', '{ALICE}', 'b', 'h{n}', '{{}}', 'flux-pro', '[]', 'succeeded', {at}, {at}, '[]', '[]',"
            f" {'NULL' if cost is None else cost}, {held})",
        )
    assert await raw(ledger_url, "SELECT schema_version FROM meta") == [(2,)]
    store = open_ledger(ledger_url)
    await store.open()
    try:
        assert await raw(ledger_url, "SELECT schema_version FROM meta") == [(SCHEMA_VERSION,)]
        assert await minute_sums(ledger_url) == await row_sums(ledger_url) != []
        # 0.10 + 0.05 + 0.02 + 0.03 in the window (the -1.0 counts as nothing): 0.10 more needs 0.10 out.
        refused = await reserve(store, await row_at(store, NOW), 0.20)
        assert not refused.ok and refused.spent_usd == pytest.approx(0.20)
        assert refused.frees_at == NOW + 5  # when the oldest row in the window leaves it
    finally:
        await store.close()


async def test_the_minute_sums_follow_every_change_and_give_the_rows_spend(store: LedgerStore, ledger_url: str) -> None:
    """Reserve, settle, release and update in many minutes and at the window's edge: the budget check (which reads
    the minute sums and one minute of rows) sees exactly what the rows add up to, at any moment."""
    rng = random.Random(18)
    for i in range(120):
        at = NOW - DAY - 300 + i * (DAY + 400) / 120 + rng.random() * 50
        row = await row_at(store, at, principal=rng.choice([ALICE, ALICE, BOB]))
        if rng.random() < 0.8:
            assert (await reserve(store, row, round(rng.uniform(0.01, 0.5), 2), now=at, daily_budget=None)).ok
        step = rng.random()
        if step < 0.3:
            await store.settle(row.id, actual_usd=round(rng.uniform(0, 0.4), 3), now=at)
        elif step < 0.5:
            await store.release(row.id, now=at)
        elif step < 0.6:
            await store.update(row.id, Changes(state="unknown"), now=at)
    assert await minute_sums(ledger_url) == await row_sums(ledger_url)
    probe = await row_at(store, NOW + 400)
    for now in (NOW - 61.5, NOW, NOW + 29.25, NOW + 90, NOW + 400):
        await store.release(probe.id, now=now)  # the row reserved is not counted; spent_in_window counts every row
        expected = await spent_in_window(ledger_url, now=now)
        result = await reserve(store, probe, 0.01, now=now, daily_budget=1e6)
        assert result.ok and result.spent_usd == pytest.approx(expected, abs=1e-9)
        tight = await reserve(store, probe, 0.5, now=now, daily_budget=0.5 + result.spent_usd - 1.0)
        assert not tight.ok and tight.frees_at is not None
        # frees_at is exact: a moment before it the amount does not fit, at it it does.
        budget = tight.limit_usd
        assert not (await reserve(store, probe, 0.5, now=tight.frees_at - 0.001, daily_budget=budget)).ok
        assert (await reserve(store, probe, 0.5, now=tight.frees_at, daily_budget=budget)).ok


def test_new_generation_rows_hold_nothing() -> None:
    fresh = LedgerRow(
        **NewGeneration(principal=ALICE, api_base="a", request_hash="h", request={}, model="m").model_dump(),
        id="x",
        state="submitting",
        created_at=NOW,
        updated_at=NOW,
    )
    assert (fresh.estimate_usd, fresh.reserved_usd) == (None, 0.0)
