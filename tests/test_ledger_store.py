"""The ledger's storage: one suite, run against SQLite (a file) and a real PostgreSQL (tests/pg.py)."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from collections.abc import Awaitable, Callable
from contextlib import closing
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

import anyio
import pytest

from qolaba_mcp import ledger
from qolaba_mcp.ledger import (
    ACTIVE_STATES,
    SCHEMA_VERSION,
    Changes,
    ImageRecord,
    LedgerError,
    LedgerRow,
    LedgerStore,
    NewGeneration,
    Query,
    _postgres,
    _sqlite,
    default_ledger_url,
    open_ledger,
    principal_of,
    request_hash,
)

pytestmark = pytest.mark.anyio
T = TypeVar("T")

ALICE_KEY, BOB_KEY = "qk_alice_9b1e4f7a2c", "qk_bob_3d8a6c0e51"
ALICE, BOB = principal_of(ALICE_KEY), principal_of(BOB_KEY)
API = "https://api.qolaba.ai/api/v1"
NOW = 1_800_000_000.0
WINDOW = 600.0
ROUNDS = 20


def new(
    prompt: str | None = "a red fox in the snow",
    *,
    principal: str = ALICE,
    api_base: str = API,
    model: str = "flux-pro",
    seed: int = 1,
) -> NewGeneration:
    request = {"model": model, "prompt": prompt, "seed": seed}
    return NewGeneration(
        principal=principal,
        api_base=api_base,
        request_hash=request_hash(request),
        request=request,
        model=model,
        prompt=prompt,
        inputs=["https://example.com/in.png"],
    )


def backend(url: str) -> ModuleType:
    return _sqlite if url.startswith("sqlite") else _postgres


async def raw(url: str, sql: str) -> list[tuple[Any, ...]]:
    """Run ``sql`` on the database behind ``url``, outside the store."""
    if url.startswith("sqlite"):
        with closing(sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)) as conn:
            return conn.execute(sql).fetchall()
    import asyncpg  # type: ignore[import-untyped]

    conn = await asyncpg.connect(url)
    try:
        return [tuple(record) for record in await conn.fetch(sql)]
    finally:
        await conn.close()


async def make_old_ledger(url: str, version: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """A ledger at ``url`` with the schema of ``version``: as an older qolaba-mcp left it, to migrate from."""
    module = backend(url)
    with monkeypatch.context() as patch:
        patch.setattr(module, "_MIGRATIONS", module._MIGRATIONS[:version])
        old = open_ledger(url)
        await old.open()
        await old.close()
    assert await raw(url, "SELECT schema_version FROM meta") == [(version,)]


async def concurrently(times: int, *calls: Callable[[], Awaitable[T]]) -> list[T]:
    """``times`` calls started together, taking turns through ``calls``; their results."""
    results: list[T] = []

    async def one(call: Callable[[], Awaitable[T]]) -> None:
        results.append(await call())

    async with anyio.create_task_group() as group:
        for i in range(times):
            group.start_soon(one, calls[i % len(calls)])
    return results


# -- begin_or_join ---------------------------------------------------------------------------------------------


async def test_begin_creates_a_submitting_row_then_joins_it_while_active(store: LedgerStore) -> None:
    row, joined = await store.begin_or_join(new(), window_seconds=WINDOW, now=NOW)
    assert not joined and row.state == "submitting" and row.created_at == row.updated_at == NOW
    assert row.principal == ALICE and row.inputs == ["https://example.com/in.png"] and not row.delivered
    assert await store.get(row.id) == row
    for state in sorted(ACTIVE_STATES):
        await store.update(row.id, Changes(state=state), now=NOW + 1)
        again, joined = await store.begin_or_join(new(), window_seconds=WINDOW, now=NOW + 2)
        assert joined and again.id == row.id and again.state == state


async def test_a_succeeded_row_is_joined_until_delivered_then_a_call_is_a_new_generation(store: LedgerStore) -> None:
    row, _ = await store.begin_or_join(new(), window_seconds=WINDOW, now=NOW)
    await store.update(row.id, Changes(state="succeeded", finished_at=NOW + 5), now=NOW + 5)
    joined_row, joined = await store.begin_or_join(new(), window_seconds=WINDOW, now=NOW + 6)
    assert joined and joined_row.id == row.id and joined_row.state == "succeeded"
    assert await store.mark_delivered(row.id)
    fresh, joined = await store.begin_or_join(new(), window_seconds=WINDOW, now=NOW + 7)
    assert not joined and fresh.id != row.id


@pytest.mark.parametrize(
    ("state", "second", "later"),
    [
        ("failed", new(), 1.0),
        ("submitted", new(), WINDOW + 0.001),
        ("submitted", new(principal=BOB), 1.0),
        ("submitted", new(api_base="https://other.example/api"), 1.0),
        ("submitted", new(seed=2), 1.0),
    ],
    ids=["failed", "outside-window", "other-principal", "other-api-base", "other-hash"],
)
async def test_begin_does_not_join(store: LedgerStore, state: Any, second: NewGeneration, later: float) -> None:
    row, _ = await store.begin_or_join(new(), window_seconds=WINDOW, now=NOW)
    await store.update(row.id, Changes(state=state), now=NOW)
    other, joined = await store.begin_or_join(second, window_seconds=WINDOW, now=NOW + later)
    assert not joined and other.id != row.id and other.state == "submitting"


async def test_begin_joins_at_the_window_edge_and_the_newest_joinable_row(store: LedgerStore) -> None:
    first, _ = await store.begin_or_join(new(), window_seconds=WINDOW, now=NOW)
    await store.update(first.id, Changes(state="failed"), now=NOW + 1)
    second, _ = await store.begin_or_join(new(), window_seconds=WINDOW, now=NOW + 2)
    joined_row, joined = await store.begin_or_join(new(), window_seconds=WINDOW, now=NOW + 2 + WINDOW)
    assert joined and joined_row.id == second.id


async def warm(store: LedgerStore) -> None:
    """Every pooled connection open first, so that concurrent calls really run at once."""
    await concurrently(20, lambda: store.history(Query(search="warm")))


async def test_fifty_identical_calls_at_once_make_exactly_one_row(store: LedgerStore) -> None:
    await warm(store)
    for seed in range(ROUNDS):  # a race may be lost only now and then: many rounds
        results = await concurrently(50, partial(store.begin_or_join, new(seed=seed), window_seconds=WINDOW, now=NOW))
        assert sorted(joined for _, joined in results) == [False] + [True] * 49
        assert len({row.id for row, _ in results}) == 1
    assert len((await store.history(Query(limit=200)))[0]) == ROUNDS


async def test_identical_calls_through_two_stores_on_one_database_make_one_row(ledger_url: str) -> None:
    """Two processes (SQLite) or two replicas (PostgreSQL): two stores, each with its own connections."""
    stores = [open_ledger(ledger_url), open_ledger(ledger_url)]
    async with anyio.create_task_group() as group:  # opening together: one creates the schema, once
        for each in stores:
            group.start_soon(each.open)
    try:
        for each in stores:
            await warm(each)
        for seed in range(ROUNDS):
            calls = [partial(each.begin_or_join, new(seed=seed), window_seconds=WINDOW, now=NOW) for each in stores]
            results = await concurrently(50, *calls)
            assert sorted(joined for _, joined in results) == [False] + [True] * 49
            assert len({row.id for row, _ in results}) == 1
    finally:
        for each in stores:
            await each.close()


_WORKER = """
import json, sys
import anyio
from qolaba_mcp.ledger import NewGeneration, open_ledger

async def main() -> None:
    store = open_ledger(sys.argv[1])
    await store.open()
    new = NewGeneration.model_validate_json(sys.argv[2])
    print("ready", flush=True)
    sys.stdin.readline()
    results = []
    async def one() -> None:
        row, joined = await store.begin_or_join(new, window_seconds=600, now=float(sys.argv[3]))
        results.append([row.id, joined])
    async with anyio.create_task_group() as group:
        for _ in range(25):
            group.start_soon(one)
    await store.close()
    print(json.dumps(results))

anyio.run(main)
"""


@pytest.mark.anyio
async def test_a_new_ledger_opens_while_another_process_holds_the_file_for_a_write(tmp_path: Path) -> None:
    """SQLite refuses to switch a file to WAL at once (no busy wait) while another connection holds a write lock:
    two processes opening one new ledger met this in CI. The ledger tries again until its busy timeout."""
    path = tmp_path / "ledger.db"
    with closing(sqlite3.connect(path, isolation_level=None, check_same_thread=False)) as other:
        other.execute("CREATE TABLE another_process (i)")
        other.execute("BEGIN IMMEDIATE")
        store = open_ledger(f"sqlite:///{path}")
        async with anyio.create_task_group() as group:
            group.start_soon(store.open)
            await anyio.sleep(1.0)  # the other process's write takes a second (the adversary, not a wait for state)
            other.execute("COMMIT")
        try:
            assert await store.get("nothing") is None
        finally:
            await store.close()


def test_identical_calls_from_two_processes_on_one_sqlite_file_make_one_row(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/ledger.db"
    args = [sys.executable, "-c", _WORKER, url, new().model_dump_json(), str(NOW)]
    procs = [subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    for proc in procs:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    for proc in procs:  # both are connected and waiting: let them go at once
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
    results = [item for proc in procs for item in json.loads(proc.communicate(timeout=60)[0])]
    assert all(proc.returncode == 0 for proc in procs)
    assert sorted(joined for _, joined in results) == [False] + [True] * 49
    assert len({row_id for row_id, _ in results}) == 1


async def test_a_sqlite_begin_waits_for_another_processs_write_and_then_joins_its_row(tmp_path: Path) -> None:
    """Deterministic: begin_or_join takes the file's write lock before it reads (BEGIN IMMEDIATE)."""
    path = tmp_path / "ledger.db"
    store = open_ledger(f"sqlite:///{path}")
    await store.open()
    theirs = LedgerRow(**new().model_dump(), id="theirs", state="submitted", created_at=NOW, updated_at=NOW)
    outcome: list[tuple[LedgerRow, bool]] = []

    async def ours() -> None:
        outcome.append(await store.begin_or_join(new(), window_seconds=WINDOW, now=NOW))

    try:
        with closing(sqlite3.connect(path, isolation_level=None)) as other:
            other.execute("BEGIN IMMEDIATE")
            async with anyio.create_task_group() as group:
                group.start_soon(ours)
                await anyio.sleep(0.3)  # ours is now waiting for the lock
                other.execute(_sqlite._SQL_INSERT, _sqlite._params(theirs))
                other.execute("COMMIT")
    finally:
        await store.close()
    assert [(row.id, joined) for row, joined in outcome] == [("theirs", True)]


# -- update, get, by_task, mark_delivered, expire_submitting ---------------------------------------------------------


async def test_update_changes_only_the_given_fields_and_by_task_respects_the_principal(store: LedgerStore) -> None:
    row, _ = await store.begin_or_join(new(), window_seconds=WINDOW, now=NOW)
    submitted = await store.update(row.id, Changes(state="submitted", task_id="task-1"), now=NOW + 1)
    assert submitted.state == "submitted" and submitted.task_id == "task-1"
    assert submitted.updated_at == NOW + 1 and submitted.created_at == NOW
    done = Changes(
        state="succeeded",
        finished_at=NOW + 9,
        images=[ImageRecord(url="https://cdn.example/1.png", width=1024, height=768, content_type="image/png")],
        usage={"credits": 3, "detail": {"steps": 30}},
        cost_usd=0.04,
        saved_files=[None, "/out/1.png"],
    )
    final = await store.update(row.id, done, now=NOW + 9)
    assert final.task_id == "task-1" and final.error is None and final.updated_at == NOW + 9
    assert final.images == done.images and final.usage == done.usage and final.saved_files == done.saved_files
    assert final.cost_usd == 0.04 and final.finished_at == NOW + 9
    assert await store.get(row.id) == final
    assert await store.by_task("task-1", principal=ALICE) == final
    assert await store.by_task("task-1", principal=None) == final
    assert await store.by_task("task-1", principal=BOB) is None
    assert await store.by_task("task-2", principal=None) is None
    assert await store.get("no-such-row") is None
    with pytest.raises(LedgerError, match="no-such-row"):
        await store.update("no-such-row", Changes(state="failed"), now=NOW)


async def test_mark_delivered_is_true_for_exactly_one_of_many_callers(store: LedgerStore) -> None:
    row, _ = await store.begin_or_join(new(), window_seconds=WINDOW, now=NOW)
    await store.update(row.id, Changes(state="succeeded"), now=NOW)
    assert sorted(await concurrently(20, lambda: store.mark_delivered(row.id))) == [False] * 19 + [True]
    assert not await store.mark_delivered(row.id)
    assert not await store.mark_delivered("no-such-row")
    delivered = await store.get(row.id)
    assert delivered is not None and delivered.delivered


async def test_last_delivered_is_the_newest_delivered_success_of_the_same_request(store: LedgerStore) -> None:
    def last(since: float, generation: NewGeneration | None = None) -> Awaitable[LedgerRow | None]:
        generation = generation or new()
        return store.last_delivered(
            principal=generation.principal,
            api_base=generation.api_base,
            request_hash=generation.request_hash,
            since=since,
        )

    rows = []
    for at in (NOW, NOW + 10, NOW + 20):
        row, _ = await store.begin_or_join(new(), window_seconds=0, now=at)
        await store.update(row.id, Changes(state="succeeded", task_id=f"t{at:g}", finished_at=at + 5), now=at + 5)
        rows.append(row)
    assert await last(NOW) is None  # succeeded, never delivered: a call would join it, not pay again
    await store.mark_delivered(rows[0].id)
    await store.mark_delivered(rows[1].id)
    found = await last(NOW)
    assert found is not None and found.id == rows[1].id and found.finished_at == NOW + 15
    assert await last(NOW + 16) is None  # finished before `since`
    failed, _ = await store.begin_or_join(new(), window_seconds=0, now=NOW + 30)
    await store.update(failed.id, Changes(state="failed", finished_at=NOW + 31), now=NOW + 31)
    await store.mark_delivered(failed.id)
    assert (await last(NOW)).id == rows[1].id  # type: ignore[union-attr]
    for other in (new(principal=BOB), new(api_base="https://other.example"), new(seed=2)):
        assert await last(NOW, other) is None


async def test_expire_submitting_marks_only_old_submitting_rows_unknown(store: LedgerStore) -> None:
    old, _ = await store.begin_or_join(new(seed=1), window_seconds=WINDOW, now=NOW - 100)
    fresh, _ = await store.begin_or_join(new(seed=2), window_seconds=WINDOW, now=NOW)
    old_submitted, _ = await store.begin_or_join(new(seed=3), window_seconds=WINDOW, now=NOW - 100)
    await store.update(old_submitted.id, Changes(state="submitted"), now=NOW - 100)
    assert await store.expire_submitting(older_than=NOW - 50, now=NOW + 1) == 1
    states = {r.id: (r.state, r.updated_at) for r in (await store.history(Query()))[0]}
    assert states == {
        old.id: ("unknown", NOW + 1),
        fresh.id: ("submitting", NOW),
        old_submitted.id: ("submitted", NOW - 100),
    }
    assert await store.expire_submitting(older_than=NOW - 50, now=NOW + 2) == 0


# -- history ---------------------------------------------------------------------------------------------------


async def add(store: LedgerStore, generation: NewGeneration, at: float, **changes: Any) -> LedgerRow:
    row, joined = await store.begin_or_join(generation, window_seconds=0, now=at)
    assert not joined
    return await store.update(row.id, Changes(**changes), now=at) if changes else row


async def test_history_search_uses_words_never_query_syntax(store: LedgerStore) -> None:
    fox = await add(store, new("The cat's fox, or a wolf (maybe)"), NOW)
    await add(store, new("a cat and a dog", seed=2), NOW + 1)
    await add(store, new("foxes OR wolves", seed=3, model="sdxl-turbo"), NOW + 2)
    await add(store, new(None, seed=4, model="ideogram"), NOW + 3)

    async def found(text: str) -> list[str | None]:
        return [row.prompt for row in (await store.history(Query(search=text)))[0]]

    assert await found('cat"s (fox) OR -') == [fox.prompt]  # the words cat, s, fox, or: all of them
    assert await found("FOX MayBe") == [fox.prompt]  # case does not matter
    assert await found("fox") == ["foxes OR wolves", fox.prompt]  # the last word is also a prefix
    assert await found("fox wolf") == [fox.prompt]  # ... only the last
    assert await found("a f") == [] and await found("fox s") == [fox.prompt]  # ... and never a single letter
    assert await found("sdxl") == ["foxes OR wolves"] and await found("ideogram") == [None]  # the model too
    assert await found("giraffe") == []
    odd = await add(store, new("v1.5 <b>poster</b> by x@y.com, /art/v2 neon_sign", seed=5), NOW + 4)
    for text in ("v1.5", "V1 5", "poster b", "y.com x", "art v2", "neon sign"):  # words, whatever joins them
        assert await found(text) == [odd.prompt], text
    assert await found(' " - ( ) * ') == []  # nothing to look for finds nothing


@pytest.mark.parametrize(
    "text",
    ['"', "'", "*", "-", "((", "a AND", "NOT", "NEAR(a b)", "prompt:fox", "^fox", "{prompt model}: fox", "&|!<->:*",
     "fox\\", "x" * 5000, "Ünïcødé 猫 🦊", "a_b c-d e.f", "\x00", " ".join(["fox"] * 100)],
)  # fmt: skip
async def test_history_search_never_fails_on_odd_text(store: LedgerStore, text: str) -> None:
    await add(store, new("fox"), NOW)
    rows, _ = await store.history(Query(search=text))
    assert all(row.prompt == "fox" for row in rows)


async def test_sqlite_history_is_the_same_whichever_way_a_search_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Few matches are sorted; many are found walking a time index (FEW_MATCHES decides): one answer either way."""
    store = open_ledger(f"sqlite:///{tmp_path}/ledger.db")
    await store.open()
    try:
        for i in range(30):
            prompt = f"row {i} {'red' if i % 3 else 'blue'} fox"
            await add(store, new(prompt, seed=i, principal=BOB if i % 4 == 0 else ALICE), NOW + i // 2)

        async def pages(query: Query) -> list[list[str]]:
            found, cursor = [], None
            while True:
                page, cursor = await store.history(query.model_copy(update={"cursor": cursor}))
                found.append([row.id for row in page])
                if cursor is None:
                    return found

        queries = [
            Query(search="fox", limit=7),
            Query(search="red fo", principal=ALICE, limit=4),
            Query(search="blue", since=NOW + 3, until=NOW + 12, limit=2),
            Query(search="row 1", state="submitting", model="flux-pro"),
        ]
        answers = [await pages(query) for query in queries]
        assert all(len(answer) > 1 or answer[0] for answer in answers)
        monkeypatch.setattr(_sqlite, "FEW_MATCHES", 0)
        assert [await pages(query) for query in queries] == answers
    finally:
        await store.close()


async def test_history_filters(store: LedgerStore) -> None:
    a = await add(store, new("one", model="flux-pro"), NOW, state="succeeded")
    b = await add(store, new("two", model="sdxl", seed=2), NOW + 10, state="failed")
    c = await add(store, new("three", model="flux-pro", seed=3), NOW + 20, state="succeeded")
    d = await add(store, new("four", principal=BOB), NOW + 30)

    async def ids(**query: Any) -> list[str]:
        return [row.id for row in (await store.history(Query(**query)))[0]]

    assert await ids() == [d.id, c.id, b.id, a.id]  # newest first, every principal
    assert await ids(principal=ALICE) == [c.id, b.id, a.id]
    assert await ids(principal=BOB) == [d.id]
    assert await ids(principal=principal_of("nobody")) == []
    assert await ids(model="flux-pro") == [d.id, c.id, a.id]
    assert await ids(state="succeeded", principal=ALICE) == [c.id, a.id]
    assert await ids(since=NOW + 10, until=NOW + 30) == [c.id, b.id]  # since inclusive, until exclusive
    assert await ids(limit=2) == [d.id, c.id]
    assert await ids(search="two three", principal=ALICE) == []
    assert await ids(search="thr", principal=ALICE, state="succeeded") == [c.id]
    assert await ids(search="four", principal=ALICE) == []


async def test_history_pages_with_a_cursor_without_duplicates_or_gaps(store: LedgerStore) -> None:
    rows = [await add(store, new(f"page row {i}", seed=i), NOW + i // 3) for i in range(25)]  # ties in created_at
    await add(store, new("page row of bob", principal=BOB), NOW + 5)
    expected = [row.id for row in sorted(rows, key=lambda r: (r.created_at, r.id), reverse=True)]
    for search in (None, "page row"):
        seen: list[str] = []
        cursor: str | None = None
        for _ in range(10):
            page, cursor = await store.history(Query(principal=ALICE, search=search, limit=7, cursor=cursor))
            seen += [row.id for row in page]
            if cursor is None:
                break
        assert seen == expected
    page, cursor = await store.history(Query(principal=ALICE, limit=25))
    assert len(page) == 25 and cursor is None  # exactly a full page: no empty page after it


@pytest.mark.parametrize("cursor", ["", "not a cursor", "W10", "WzEsMl0"])  # "[]", "[1,2]"
async def test_a_foreign_cursor_is_a_value_error(store: LedgerStore, cursor: str) -> None:
    with pytest.raises(ValueError, match="cursor"):
        await store.history(Query(cursor=cursor))


async def test_spend_sums_one_principals_costs_of_generations_started_since_a_time(store: LedgerStore) -> None:
    assert await store.spend(principal=ALICE, since=0) == 0.0
    await add(store, new(seed=1), NOW - 100, cost_usd=1.25)
    await add(store, new(seed=2), NOW, cost_usd=0.5)
    await add(store, new(seed=3), NOW + 1, cost_usd=0.25)
    await add(store, new(seed=4), NOW + 2)  # no cost recorded (yet)
    await add(store, new(principal=BOB), NOW, cost_usd=7.0)
    assert await store.spend(principal=ALICE, since=NOW) == pytest.approx(0.75)
    assert await store.spend(principal=ALICE, since=0) == pytest.approx(2.0)
    assert await store.spend(principal=BOB, since=NOW + 1) == 0.0


# -- schema, opening, secrets ----------------------------------------------------------------------------------


def test_there_is_one_migration_per_schema_version() -> None:
    assert len(_sqlite._MIGRATIONS) == len(_postgres._MIGRATIONS) == SCHEMA_VERSION


async def test_a_newer_schema_is_refused_with_a_clear_message(ledger_url: str) -> None:
    first = open_ledger(ledger_url)
    await first.open()
    await first.close()
    await raw(ledger_url, "UPDATE meta SET schema_version = 99")
    with pytest.raises(LedgerError) as raised:
        await open_ledger(ledger_url).open()
    message = str(raised.value)
    expected = f"has schema version 99, newer than this qolaba-mcp understands ({SCHEMA_VERSION}); upgrade qolaba-mcp"
    assert expected in message
    assert message.endswith("or point QOLABA_LEDGER_URL elsewhere")
    assert await raw(ledger_url, "SELECT schema_version FROM meta") == [(99,)]  # left as it was


async def test_reopening_keeps_the_rows_and_the_schema(ledger_url: str) -> None:
    for i in range(3):
        store = open_ledger(ledger_url)
        await store.open()
        await store.begin_or_join(new(), window_seconds=0, now=NOW + i)
        await store.close()
    assert await raw(ledger_url, "SELECT schema_version FROM meta") == [(SCHEMA_VERSION,)]
    assert await raw(ledger_url, "SELECT count(*) FROM generations") == [(3,)]


async def test_a_previous_version_is_migrated_by_the_next_entry(
    ledger_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = open_ledger(ledger_url)
    await store.open()
    row, _ = await store.begin_or_join(new(), window_seconds=0, now=NOW)
    await store.close()
    module = backend(ledger_url)
    statement = "ALTER TABLE generations ADD COLUMN note TEXT"
    step = (statement,) if module is _sqlite else statement
    monkeypatch.setattr(module, "_MIGRATIONS", [*module._MIGRATIONS, step])
    store = open_ledger(ledger_url)
    await store.open()
    try:
        assert await store.get(row.id) == row
        assert (await store.history(Query(search="fox")))[0] == [row]
    finally:
        await store.close()
    assert await raw(ledger_url, "SELECT schema_version FROM meta") == [(SCHEMA_VERSION + 1,)]
    assert await raw(ledger_url, "SELECT note FROM generations") == [(None,)]


async def test_the_api_key_is_never_stored(ledger_url: str, store: LedgerStore) -> None:
    row, _ = await store.begin_or_join(new(), window_seconds=WINDOW, now=NOW)
    await store.update(row.id, Changes(state="succeeded", task_id="t", cost_usd=0.1), now=NOW)
    assert row.principal == ALICE and len(ALICE) == 32 and ALICE_KEY not in ALICE
    dumped = json.dumps(await raw(ledger_url, "SELECT * FROM generations"), default=str)
    assert ALICE in dumped and ALICE_KEY not in dumped
    if ledger_url.startswith("sqlite"):
        await store.close()
        files = Path(ledger_url.removeprefix("sqlite:///")).parent.iterdir()
        assert not any(ALICE_KEY.encode() in file.read_bytes() for file in files)


async def test_an_empty_sqlite_file_is_version_zero_and_gets_the_schema(tmp_path: Path) -> None:
    (tmp_path / "ledger.db").touch()
    store = open_ledger(f"sqlite:///{tmp_path}/ledger.db")
    await store.open()
    try:
        row, _ = await store.begin_or_join(new(), window_seconds=0, now=NOW)
        assert (await store.history(Query(search="snow")))[0] == [row]
    finally:
        await store.close()


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"this is not a database, it only sits where one should", "not a database"), (None, "already exists")],
    ids=["not-sqlite", "someone-elses-tables"],
)
async def test_a_file_that_is_not_a_ledger_is_refused(tmp_path: Path, content: bytes | None, message: str) -> None:
    path = tmp_path / "ledger.db"
    if content is None:
        with closing(sqlite3.connect(path)) as conn:
            conn.execute("CREATE TABLE generations (x)")
    else:
        path.write_bytes(content)
    with pytest.raises(LedgerError, match=message):
        await open_ledger(f"sqlite:///{path}").open()


async def test_an_in_memory_ledger_serves_concurrent_reads_and_writes() -> None:
    store = open_ledger("sqlite:///:memory:")
    await store.open()
    try:
        results = await concurrently(30, lambda: store.begin_or_join(new(), window_seconds=WINDOW, now=NOW))
        rows = await concurrently(10, lambda: store.history(Query(search="fox")))
        assert sum(not joined for _, joined in results) == 1 and all(len(found) == 1 for found, _ in rows)
    finally:
        await store.close()


async def test_a_default_url_makes_its_folder(tmp_path: Path) -> None:
    url = default_ledger_url(tmp_path / "a" / "b")
    assert url == f"sqlite:///{tmp_path}/a/b/ledger.db"
    store = open_ledger(url)
    await store.open()
    await store.close()
    assert (tmp_path / "a" / "b" / "ledger.db").is_file()


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://qolaba:hunter2secret@127.0.0.1:1/ledger", "postgresql://qolaba:***@127.0.0.1:1/ledger"),
        ("postgres://127.0.0.1:1/ledger?user=q&password=hunter2secret", "?user=q&password=***"),
    ],
)
async def test_an_unreachable_postgresql_is_a_ledger_error_without_the_password(url: str, shown: str) -> None:
    with pytest.raises(LedgerError) as raised:
        await open_ledger(url).open()
    assert "hunter2secret" not in str(raised.value) and shown in str(raised.value)


@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("mysql://root:hunter2secret@db/ledger", "a 'mysql' URL"),
        ("root:hunter2secret@db/ledger", "not a URL"),
        ("", "not a URL"),
        ("sqlite:///relative/ledger.db", "absolute path"),
        ("sqlite://host/ledger.db", "absolute path"),
    ],
)
def test_an_unusable_url_names_the_setting_and_the_accepted_forms(url: str, said: str) -> None:
    with pytest.raises(LedgerError) as raised:
        open_ledger(url)
    text = str(raised.value)
    assert "QOLABA_LEDGER_URL" in text and said in text and "hunter2secret" not in text
    assert "sqlite:///<absolute path>" in text and "postgresql://" in text


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("sqlite:////var/lib/qolaba/ledger.db", "SQLiteLedger"),
        ("sqlite:///:memory:", "SQLiteLedger"),
        ("postgresql://u:p@db:5432/ledger", "PostgresLedger"),
        ("postgres://db/ledger", "PostgresLedger"),
    ],
)
def test_the_url_scheme_picks_the_backend_without_connecting(url: str, kind: str) -> None:
    assert type(open_ledger(url)).__name__ == kind


def test_the_public_names_are_sorted_and_importing_loads_no_backend() -> None:
    assert ledger.__all__ == sorted(ledger.__all__)
    assert all(getattr(ledger, name) is not None for name in ledger.__all__)
    probe = "import sys, qolaba_mcp, qolaba_mcp.ledger; print(sorted(m for m in sys.modules if m.startswith(%r)))"
    heavy = ("asyncpg", "sqlite3", "_sqlite3", "qolaba_mcp.ledger._sqlite", "qolaba_mcp.ledger._postgres")
    out = subprocess.run([sys.executable, "-c", probe % (heavy,)], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
