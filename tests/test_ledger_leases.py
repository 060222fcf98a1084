"""Owned submissions (issue 18, items 1 and 11): a submission nobody owns any more, or whose answer could not be
read, is never "in progress" forever and never resubmitted blindly: the next identical call is warned, once.

Storage rules run on SQLite and a real PostgreSQL; the end-to-end proofs kill a real process mid-submission, and
serve real (hostile) answers over loopback HTTP.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
from pydantic import SecretStr

from qolaba_mcp._errors import QolabaError, ResponseFormatError
from qolaba_mcp.api._client import QolabaClient
from qolaba_mcp.api._wire import GenerateRequest
from qolaba_mcp.generations._pacing import PollPolicy, RetryPolicy
from qolaba_mcp.generations._recorded import RecordedRunner
from qolaba_mcp.generations._runner import Runner
from qolaba_mcp.ledger import Changes, LedgerRow, LedgerStore, NewGeneration, Query, open_ledger

from .conftest import connect
from .hostile import HostileServer, hang_reply, json_reply, raw_reply, sequence
from .results import text
from .test_ledger_store import NOW, WINDOW, new

pytestmark = pytest.mark.anyio

KEY = "qk_live_lease_4c1d9e7a20"
GEN = "/api/v1/images/generate"
FOX = {"model": "vertex/nano-banana-flash", "prompt": "a red fox in the snow", "seed": 7}
NESTED = b"[" * 200_000 + b"]" * 200_000


def owned(owner: str, lease_until: float | None, generation: NewGeneration | None = None) -> NewGeneration:
    return (generation or new()).model_copy(update={"owner": owner, "lease_until": lease_until})


# -- the storage rules -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("window", [WINDOW, 0.0], ids=["within-window", "after-window"])
async def test_a_submission_whose_lease_ran_out_is_turned_unknown_by_the_next_identical_call(
    store: LedgerStore, window: float
) -> None:
    dead, _ = await store.begin_or_join(owned("dead", NOW + 30), window_seconds=window, now=NOW)
    if window:  # while its lease holds, its owner may still be sending it: joined, as before
        live, joined = await store.begin_or_join(owned("me", NOW + 40), window_seconds=window, now=NOW + 10)
        assert joined and live.id == dead.id and live.state == "submitting"
    warned, joined = await store.begin_or_join(owned("me", NOW + 61), window_seconds=window, now=NOW + 31)
    assert joined and warned.id == dead.id and warned.state == "unknown" and warned.delivered
    assert warned.error is not None and "stopped" in warned.error
    assert await store.get(dead.id) == warned
    fresh, joined = await store.begin_or_join(owned("me", NOW + 62), window_seconds=window, now=NOW + 32)
    assert not joined and fresh.id != dead.id and fresh.owner == "me" and fresh.lease_until == NOW + 62


async def test_an_unknown_row_warns_the_next_identical_call_once_whatever_its_age(store: LedgerStore) -> None:
    row, _ = await store.begin_or_join(new(), window_seconds=WINDOW, now=NOW)
    await store.update(row.id, Changes(state="unknown"), now=NOW)
    warned, joined = await store.begin_or_join(new(), window_seconds=WINDOW, now=NOW + 100 * WINDOW)
    assert joined and warned.id == row.id and warned.state == "unknown" and warned.delivered
    fresh, joined = await store.begin_or_join(new(), window_seconds=WINDOW, now=NOW + 100 * WINDOW)
    assert not joined and fresh.id != row.id and fresh.state == "submitting"


async def test_a_renewed_lease_keeps_the_submission_owned(store: LedgerStore) -> None:
    mine, _ = await store.begin_or_join(owned("alive", NOW + 30), window_seconds=WINDOW, now=NOW)
    other, _ = await store.begin_or_join(owned("alive", NOW + 30, new(seed=2)), window_seconds=WINDOW, now=NOW)
    await store.update(other.id, Changes(state="submitted"), now=NOW)
    assert await store.renew_leases(owner="alive", until=NOW + 100) == 1  # only what it is still submitting
    assert await store.renew_leases(owner="nobody", until=NOW + 100) == 0
    joined_row, joined = await store.begin_or_join(owned("me", NOW + 90), window_seconds=WINDOW, now=NOW + 60)
    assert joined and joined_row.id == mine.id and joined_row.state == "submitting"
    # and its owner is never told that its own submission was abandoned
    own, joined = await store.begin_or_join(owned("alive", NOW + 230), window_seconds=WINDOW, now=NOW + 200)
    assert joined and own.id == mine.id and own.state == "submitting"


async def test_start_up_expiry_goes_by_the_lease(store: LedgerStore) -> None:
    leased, _ = await store.begin_or_join(owned("a", NOW + 30, new(seed=1)), window_seconds=0, now=NOW - 100)
    lapsed, _ = await store.begin_or_join(owned("b", NOW - 1, new(seed=2)), window_seconds=0, now=NOW - 5)
    legacy, _ = await store.begin_or_join(new(seed=3), window_seconds=0, now=NOW - 1000)  # from before leases
    assert await store.expire_submitting(older_than=NOW - 500, now=NOW) == 2
    states = {row.id: row.state for row in [await store.get(r.id) for r in (leased, lapsed, legacy)] if row}
    assert states == {leased.id: "submitting", lapsed.id: "unknown", legacy.id: "unknown"}


# -- end to end: a process killed mid-submission ---------------------------------------------------------------

_DOOMED = """
import sys, anyio
from pydantic import SecretStr
from qolaba_mcp.api._client import QolabaClient
from qolaba_mcp.generations._runner import Runner
from qolaba_mcp.api._wire import GenerateRequest
from qolaba_mcp.generations._recorded import RecordedRunner
from qolaba_mcp.ledger import open_ledger

async def main() -> None:
    base, url, key = sys.argv[1:4]
    ledger = open_ledger(url)
    await ledger.open()
    async with QolabaClient(base_url=base, api_key=key) as client, Runner(client=client) as jobs:
        tracked = RecordedRunner(runner=jobs, ledger=ledger, api_base=base, api_key=SecretStr(key), join_window=900,
                              lease_seconds=1.0, heartbeat_seconds=0.2)
        async with tracked:
            await tracked.generate(GenerateRequest(model="vertex/nano-banana-flash", prompt="a red fox in the snow",
                                                   seed=7, celery=True), wait_seconds=60)

anyio.run(main)
"""


@asynccontextmanager
async def tracked_jobs(host: HostileServer, url: str, **kwargs: Any) -> AsyncIterator[RecordedRunner]:
    ledger = open_ledger(url)
    await ledger.open()
    try:
        async with QolabaClient(base_url=host.base_url, api_key=KEY) as client:
            jobs = Runner(client=client, poll=PollPolicy(min_interval=0.05), retry=RetryPolicy(base_backoff=0.05))
            async with (
                jobs,
                RecordedRunner(
                    runner=jobs,
                    ledger=ledger,
                    api_base=host.base_url,
                    api_key=SecretStr(KEY),
                    join_window=900,
                    **kwargs,
                ) as tracked,
            ):
                yield tracked
    finally:
        await ledger.close()


async def rows(store: LedgerStore) -> list[LedgerRow]:
    return (await store.history(Query()))[0]


async def test_a_retry_after_kill_9_mid_submission_is_warned_once_never_told_it_is_in_progress(
    ledger_url: str,
) -> None:
    done = {"task_id": "t_second", "status": "SUCCESS", "images": [{"url": "https://example.com/a.png"}]}
    with HostileServer() as host:
        # The API holds the first submission open (the server is killed meanwhile); the second is answered.
        host.route("POST", GEN, sequence(hang_reply(), json_reply(202, {"task_id": "t_second"})))
        host.route("GET", "/api/v1/tasks/t_second", json_reply(200, done))
        doomed = subprocess.Popen([sys.executable, "-c", _DOOMED, host.base_url, ledger_url, KEY])
        try:
            with anyio.fail_after(30):
                while host.count("POST", GEN) < 1:  # it has sent the submission (its row was written first)
                    await anyio.sleep(0.02)
        finally:
            doomed.kill()  # kill -9, the answer never recorded
            doomed.wait()
        async with tracked_jobs(host, ledger_url, lease_seconds=5.0, heartbeat_seconds=1.0) as tracked:
            [dead] = await rows(tracked.ledger)
            assert dead.state == "submitting" and dead.owner not in (None, tracked.owner)
            started = time.monotonic()
            warned = await tracked.generate(GenerateRequest(**FOX, celery=True), wait_seconds=20)
            # told as soon as the dead process's lease (1 s) ran out, not after the whole wait
            assert time.monotonic() - started < 10
            assert warned.status == "UNKNOWN" and not warned.joined and warned.row_id == dead.id
            assert warned.error is not None
            assert dead.id in warned.error and "may have been charged" in warned.error
            assert time.strftime("%Y-%m-%d %H:%M", time.gmtime(dead.created_at)) in warned.error
            assert "call generate_image again with the same arguments" in warned.error
            assert host.count("POST", GEN) == 1  # nothing was submitted
            [row] = await rows(tracked.ledger)
            assert row.state == "unknown"
            # Warned once: calling again is the explicit confirmation, and submits.
            again = await tracked.generate(GenerateRequest(**FOX, celery=True), wait_seconds=20)
            assert again.status == "SUCCESS" and again.task_id == "t_second" and host.count("POST", GEN) == 2


async def test_a_live_submission_keeps_its_lease_past_the_lease_length(ledger_url: str) -> None:
    with HostileServer() as host:
        host.route("POST", GEN, hang_reply())  # the API holds the submission open for longer than any lease
        async with (
            tracked_jobs(host, ledger_url, lease_seconds=0.5, heartbeat_seconds=0.1) as submitter,
            tracked_jobs(host, ledger_url, lease_seconds=0.5, heartbeat_seconds=0.1) as retrier,
            anyio.create_task_group() as group,
        ):
            group.start_soon(lambda: submitter.generate(GenerateRequest(**FOX, celery=True), wait_seconds=30))
            with anyio.fail_after(10):
                while host.count("POST", GEN) < 1:
                    await anyio.sleep(0.02)
            [row] = await rows(retrier.ledger)
            assert row.lease_until is not None
            with anyio.fail_after(10):  # well past its first lease: renewed by the heartbeat
                while time.time() < row.lease_until + 1.0:
                    await anyio.sleep(0.05)
            joined = await retrier.generate(GenerateRequest(**FOX, celery=True), wait_seconds=0.5)
            assert joined.status != "UNKNOWN" and joined.joined and joined.row_id == row.id
            [now] = await rows(retrier.ledger)
            assert now.state == "submitting" and now.lease_until is not None and now.lease_until > row.lease_until
            assert host.count("POST", GEN) == 1
            group.cancel_scope.cancel()


# -- item 11: a 202 the parser cannot read ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "task_id"),
    [
        (b'{"task_id": "t1", "status": "PENDING", "deep": ' + NESTED + b"}", "t1"),
        (b'{"deep": ' + NESTED + b', "task_id": 4242}', "4242"),
        (b'{"job": {"task_id": "t_other"}, "deep": {"a": ' + NESTED + b'}, "task_id": "t_after"}', "t_after"),
        (b'{"note": "\\"task_id\\": \\"x\\"", "deep": ' + NESTED + b', "task_id": "t9"}', "t9"),
    ],
    ids=["first", "after-the-nesting", "nested-one-first", "quoted-lookalike"],
)
async def test_a_202_too_deep_to_parse_keeps_its_top_level_task(body: bytes, task_id: str) -> None:
    with HostileServer() as host:
        host.route("POST", GEN, raw_reply(202, body))
        async with QolabaClient(base_url=host.base_url, api_key=KEY) as client:
            created = await client.generate(GenerateRequest(**FOX, celery=True))
    assert created.task_id == task_id


UNREADABLE = b'{"result": {"task_id": "t_nested_other"}, "deep": ' + NESTED + b"}"  # no top-level task_id


async def test_an_unreadable_202_without_a_top_level_task_is_unknown_and_an_identical_retry_is_warned(
    tmp_path: Any,
) -> None:
    url = f"sqlite:///{tmp_path}/ledger.db"
    with HostileServer() as host:
        host.route("POST", GEN, raw_reply(202, UNREADABLE))
        async with tracked_jobs(host, url) as tracked:
            with pytest.raises(QolabaError) as raised:
                await tracked.generate(GenerateRequest(**FOX, celery=True), wait_seconds=5)
            assert isinstance(raised.value, ResponseFormatError)  # never a nested id taken for the task
            message = raised.value.message
            assert "may have been accepted and charged" in message and "do not resubmit blindly" in message
            [row] = await rows(tracked.ledger)
            assert row.state == "unknown" and row.task_id is None and not row.delivered
            warned = await tracked.generate(GenerateRequest(**FOX, celery=True), wait_seconds=5)
            assert warned.status == "UNKNOWN" and warned.row_id == row.id and warned.error is not None
            assert "Nothing was submitted" in warned.error and "may have been charged" in warned.error
            assert host.count("POST", GEN) == 1


async def test_an_unreadable_202_end_to_end_says_so_and_the_retry_is_warned_not_submitted() -> None:
    with HostileServer() as host:
        host.route("POST", GEN, raw_reply(202, UNREADABLE))
        async with connect(
            "memory", "auto", base_url=host.base_url, QOLABA_SAVE="off", QOLABA_PREVIEW="off", QOLABA_API_KEY=KEY
        ) as client:
            first = await client.call_tool("generate_image", {**FOX, "wait_seconds": 5})
            assert first.is_error and "may have been accepted and charged" in text(first), text(first)
            retry = await client.call_tool("generate_image", {**FOX, "wait_seconds": 5})
    assert not retry.is_error and retry.structured_content is not None
    assert retry.structured_content["status"] == "UNKNOWN"
    assert "Nothing was submitted" in text(retry) and "ledger row" in text(retry), text(retry)
    assert host.count("POST", GEN) == 1
