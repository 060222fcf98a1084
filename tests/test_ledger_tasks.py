"""What the ledger keeps for MCP tasks (schema 5): a cancellation, set once and only while the generation runs, and
the ttl a task's creator asked for. On SQLite and a real PostgreSQL (tests/pg.py)."""

from __future__ import annotations

import pytest

from qolaba_mcp.ledger import SCHEMA_VERSION, Changes, LedgerError, LedgerState, LedgerStore, Query, open_ledger

from .test_ledger_store import ALICE, NOW, WINDOW, concurrently, make_old_ledger, new, raw

pytestmark = pytest.mark.anyio


async def test_a_running_task_is_cancelled_once_and_its_generation_goes_on(store: LedgerStore) -> None:
    row, _ = await store.begin_or_join(new(), window_seconds=WINDOW, now=NOW)
    await store.update(row.id, Changes(state="running", task_id="t-1"), now=NOW + 1)
    cancelled, changed = await store.cancel_task(row.id, now=NOW + 2)
    assert changed and cancelled.cancelled_at == NOW + 2 and cancelled.state == "running"
    again, changed = await store.cancel_task(row.id, now=NOW + 3)
    assert not changed and again.cancelled_at == NOW + 2  # the first cancellation stands
    # The generation is recorded as it ends; the cancellation stays.
    done = await store.update(row.id, Changes(state="succeeded", cost_usd=0.04, finished_at=NOW + 9), now=NOW + 9)
    assert (done.state, done.cost_usd, done.cancelled_at) == ("succeeded", 0.04, NOW + 2)
    assert await store.get(row.id) == done
    assert (await store.by_task("t-1", principal=ALICE)) == done


@pytest.mark.parametrize("state", ["succeeded", "failed", "unknown"])
async def test_a_task_whose_generation_ended_is_not_cancelled(store: LedgerStore, state: LedgerState) -> None:
    row, _ = await store.begin_or_join(new(), window_seconds=WINDOW, now=NOW)
    ended = await store.update(row.id, Changes(state=state, task_id="t-2"), now=NOW + 1)
    found, changed = await store.cancel_task(row.id, now=NOW + 2)
    assert not changed and found == ended and found.cancelled_at is None


async def test_of_many_cancels_at_once_exactly_one_cancels(store: LedgerStore) -> None:
    row, _ = await store.begin_or_join(new(), window_seconds=WINDOW, now=NOW)
    await store.update(row.id, Changes(state="submitted", task_id="t-3"), now=NOW)
    results = await concurrently(20, *(lambda n=n: store.cancel_task(row.id, now=NOW + n) for n in range(20)))
    assert sum(changed for _, changed in results) == 1
    assert len({found.cancelled_at for found, _ in results}) == 1


async def test_a_tasks_ttl_is_kept_once(store: LedgerStore) -> None:
    row, _ = await store.begin_or_join(new(), window_seconds=WINDOW, now=NOW)
    assert row.task_ttl_ms is None
    assert (await store.keep_task_ttl(row.id, ttl_ms=60_000)).task_ttl_ms == 60_000
    assert (await store.keep_task_ttl(row.id, ttl_ms=5)).task_ttl_ms == 60_000  # a joining call's does not replace it
    assert [found.task_ttl_ms for found in (await store.history(Query(principal=ALICE)))[0]] == [60_000]


async def test_a_missing_row_is_a_ledger_error(store: LedgerStore) -> None:
    with pytest.raises(LedgerError, match="no generation"):
        await store.cancel_task("no-such-row", now=NOW)
    with pytest.raises(LedgerError, match="no generation"):
        await store.keep_task_ttl("no-such-row", ttl_ms=1)


async def test_a_version_four_database_is_migrated_and_keeps_its_rows(
    ledger_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    await make_old_ledger(ledger_url, 4, monkeypatch)
    # A row as a version-4 ledger holds it (today's code writes columns that version has not got).
    await raw(
        ledger_url,
        "INSERT INTO generations (id, principal, api_base, request_hash, request, model, prompt, inputs, state,"
        " task_id, created_at, updated_at, images, saved_files, cost_usd, reserved_usd, owner, lease_until) VALUES"
        f" ('v4', '{ALICE}', 'b', 'h', '{{}}', 'flux-pro', 'an old fox', '[]', 'running', 'task-v4', {NOW}, {NOW},"
        f" '[]', '[]', NULL, 0.05, 'someone', {NOW + 60})",
    )
    store = open_ledger(ledger_url)
    await store.open()
    try:
        assert await raw(ledger_url, "SELECT schema_version FROM meta") == [(SCHEMA_VERSION,)] == [(5,)]
        kept = await store.get("v4")
        assert kept is not None
        assert (kept.prompt, kept.state, kept.task_id, kept.reserved_usd, kept.owner, kept.lease_until) == (
            "an old fox", "running", "task-v4", 0.05, "someone", NOW + 60
        )  # fmt: skip
        assert (kept.cancelled_at, kept.task_ttl_ms) == (None, None)
        assert (await store.history(Query(search="fox")))[0] == [kept]
        cancelled, changed = await store.cancel_task("v4", now=NOW + 1)
        assert changed and cancelled.cancelled_at == NOW + 1
    finally:
        await store.close()
