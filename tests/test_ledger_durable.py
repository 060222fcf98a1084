"""No ledger write is silently dropped (issue 18, item 2): a ledger another process holds locked, or a PostgreSQL
connection dropped mid-write, delays a record but never loses it, and never costs the caller its paid result.

Real parts only: the sandbox over loopback HTTP, a second sqlite3 connection holding the file's write lock, and a
real PostgreSQL whose backend is terminated by an admin connection while the ledger's write waits on a row lock.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import tempfile
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import anyio
import asyncpg  # type: ignore[import-untyped]
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.types import CallToolResult
from pydantic import SecretStr

from qolaba_mcp._errors import QolabaError
from qolaba_mcp.api._client import QolabaClient
from qolaba_mcp.api._wire import GenerateRequest
from qolaba_mcp.generations._pacing import PollPolicy
from qolaba_mcp.generations._recorded import RecordedRunner
from qolaba_mcp.generations._runner import Generation, Runner
from qolaba_mcp.ledger import WriteQueue, open_ledger
from qolaba_mcp.sandbox import SandboxServer

from .conftest import SERVER_KEY, HttpServer, RawStdio, connect, server_env
from .results import text

pytestmark = pytest.mark.anyio

FOX = {"model": "vertex/nano-banana-flash", "prompt": "a red fox in the snow", "seed": 7}


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The ledger's rows, read beside any writer (WAL)."""
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(row) for row in conn.execute("SELECT * FROM generations ORDER BY created_at")]


async def wait_for_row(path: Path, check: Callable[[dict[str, Any]], bool], seconds: float = 20) -> dict[str, Any]:
    with anyio.fail_after(seconds):
        while True:
            rows = read_rows(path) if path.exists() else []
            if rows and check(rows[-1]):
                return rows[-1]
            await anyio.sleep(0.02)


async def test_a_write_lock_held_past_the_busy_timeout_delays_the_record_never_the_paid_result(
    sandbox: SandboxServer, tmp_path: Path
) -> None:
    path = tmp_path / "ledger.db"
    sandbox.configure(latency=1.5)
    env = {"QOLABA_LEDGER_URL": f"sqlite:///{path}?busy_timeout=0.5", "QOLABA_JOIN_WINDOW_SECONDS": "900"}
    async with connect("memory", "auto", base_url=sandbox.base_url, QOLABA_SAVE="on", **env) as client:
        results: list[CallToolResult] = []

        async def call() -> None:
            results.append(await client.call_tool("generate_image", {**FOX, "wait_seconds": 20}))

        holder = sqlite3.connect(path, isolation_level=None, timeout=30)
        try:
            async with anyio.create_task_group() as group:
                group.start_soon(call)
                # The task exists: from now on the ledger is locked, by another process's transaction, for longer
                # than the server's busy timeout (0.5 s), until the call has returned.
                await wait_for_row(path, lambda row: row["state"] == "submitted")
                holder.execute("BEGIN IMMEDIATE")
            [result] = results
            assert result.structured_content is not None, text(result)
            assert result.structured_content["status"] == "SUCCESS" and result.structured_content["images"]
            assert any("record is not written yet" in note for note in result.structured_content["notes"])
            assert "record is not written yet" in text(result)
            assert result.structured_content["saved_files"]  # the paid result, and its file
            [behind] = read_rows(path)
            assert behind["state"] == "submitted" and behind["cost_usd"] is None
        finally:
            if holder.in_transaction:
                holder.execute("ROLLBACK")
            holder.close()
        # Released: the record lands in full, without another call.
        row = await wait_for_row(path, lambda row: row["state"] == "succeeded" and row["delivered"] == 1)
        assert row["task_id"] == result.structured_content["task_id"] and row["cost_usd"] is not None
        assert row["saved_files"] != "[]" and row["finished_at"] is not None
        spend = await client.call_tool("get_spend", {})
        assert spend.structured_content is not None, text(spend)
        assert row["cost_usd"] > 0
        assert spend.structured_content["last_24h"]["total_usd"] == pytest.approx(row["cost_usd"])
        # Delivered: an identical call is a new generation, never a join of the result already given.
        again = await client.call_tool("generate_image", {**FOX, "wait_seconds": 20})
        assert again.structured_content is not None, text(again)
        assert again.structured_content["joined"] is False
        assert again.structured_content["task_id"] != result.structured_content["task_id"]
        assert sandbox.stats()["submissions"] == 2


async def test_an_identical_call_never_joins_a_result_whose_record_is_behind(
    sandbox: SandboxServer, tmp_path: Path
) -> None:
    path = tmp_path / "ledger.db"
    sandbox.configure(latency=0.3)
    ledger = open_ledger(f"sqlite:///{path}?busy_timeout=0.2")
    await ledger.open()
    try:
        async with QolabaClient(base_url=sandbox.base_url, api_key=SERVER_KEY) as client:
            jobs = Runner(client=client, poll=PollPolicy(min_interval=0.05))
            tracked = RecordedRunner(
                runner=jobs,
                ledger=ledger,
                api_base=sandbox.base_url,
                api_key=SecretStr(SERVER_KEY),
                join_window=900,
                # retried every 2 s: an identical call made just after the lock is released comes first
                writes=WriteQueue(ledger=ledger, retry_min=2.0, retry_max=2.0),
            )
            async with tracked.writes, jobs, tracked:
                holder = sqlite3.connect(path, isolation_level=None, timeout=30)
                done: list[Generation] = []

                async def first() -> None:
                    done.append(await tracked.generate(GenerateRequest(**FOX, celery=True), wait_seconds=20))

                async with anyio.create_task_group() as group:
                    group.start_soon(first)
                    await wait_for_row(path, lambda row: row["state"] == "submitted")
                    holder.execute("BEGIN IMMEDIATE")
                [generation] = done
                row_id = generation.row_id or ""
                assert generation.status == "SUCCESS" and tracked.pending(row_id)
                assert any("record is not written yet" in note for note in generation.notes)
                await tracked.delivered(row_id)  # the caller has it: the record says so once it lands
                with pytest.raises(QolabaError, match="nothing was submitted"):  # the ledger is locked
                    await tracked.generate(GenerateRequest(**FOX, celery=True), wait_seconds=20)
                holder.execute("ROLLBACK")
                holder.close()
                # The ledger's copy still says "succeeded, not delivered": joining it would hand out a delivered
                # result as if it were this call's own.
                with pytest.raises(QolabaError, match="could not write yet") as behind:
                    await tracked.generate(GenerateRequest(**FOX, celery=True), wait_seconds=20)
                assert row_id in behind.value.message and "nothing was submitted" in behind.value.message
                await wait_for_row(path, lambda row: row["state"] == "succeeded" and row["delivered"] == 1)
                assert not tracked.pending(row_id)
                fresh = await tracked.generate(GenerateRequest(**FOX, celery=True), wait_seconds=20)
                assert not fresh.joined and fresh.task_id != generation.task_id
    finally:
        await ledger.close()
    assert sandbox.stats()["submissions"] == 2


async def test_a_postgres_connection_dropped_mid_write_still_lands_the_record(
    sandbox: SandboxServer, postgres_url: str
) -> None:
    sandbox.configure(latency=1.0)
    ledger = open_ledger(postgres_url)
    await ledger.open()
    admin = await asyncpg.connect(postgres_url)
    try:
        async with QolabaClient(base_url=sandbox.base_url, api_key=SERVER_KEY) as client:
            jobs = Runner(client=client, poll=PollPolicy(min_interval=0.05))
            async with (
                jobs,
                RecordedRunner(
                    runner=jobs,
                    ledger=ledger,
                    api_base=sandbox.base_url,
                    api_key=SecretStr(SERVER_KEY),
                    join_window=900,
                ) as tracked,
            ):
                done: list[Generation] = []

                async def call() -> None:
                    done.append(await tracked.generate(GenerateRequest(**FOX, celery=True), wait_seconds=20))

                async with anyio.create_task_group() as group:
                    group.start_soon(call)
                    with anyio.fail_after(20):
                        while (await admin.fetchval("SELECT state FROM generations")) != "submitted":
                            await anyio.sleep(0.02)
                        # Hold the row, so the ledger's next write (the result) waits on it; then cut its connection.
                        holding = admin.transaction()
                        await holding.start()
                        await admin.execute("SELECT 1 FROM generations FOR UPDATE")
                        while not (waiting := await admin.fetch(_WAITING_ON_A_LOCK)):
                            await anyio.sleep(0.02)
                        assert await admin.fetchval("SELECT pg_terminate_backend($1)", waiting[0]["pid"])
                        await holding.rollback()
                [generation] = done
                assert generation.status == "SUCCESS" and generation.task_id
                with anyio.fail_after(20):
                    while (row := await ledger.get(generation.row_id or "")) is None or row.state != "succeeded":
                        await anyio.sleep(0.02)
                assert row.task_id == generation.task_id and row.cost_usd is not None and row.images
    finally:
        await admin.close()
        await ledger.close()


_WAITING_ON_A_LOCK = """SELECT pid FROM pg_stat_activity
    WHERE datname = current_database() AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"""


def stderr_of(server: HttpServer) -> bytes:
    server._err.seek(0)
    return server._err.read()


async def test_sigterm_flushes_a_record_still_behind_before_the_server_exits(
    sandbox: SandboxServer, tmp_path: Path
) -> None:
    """Over HTTP, where SIGTERM ends the lifespan: the queue's flush lands what the locked ledger refused."""
    path = tmp_path / "ledger.db"
    sandbox.configure(latency=1.5)
    env = server_env(
        sandbox.base_url,
        QOLABA_LEDGER_URL=f"sqlite:///{path}?busy_timeout=0.5",
        QOLABA_JOIN_WINDOW_SECONDS="900",
        QOLABA_SAVE="off",
    )
    server = HttpServer(env)
    holder = sqlite3.connect(path, isolation_level=None, timeout=30)
    try:
        http = httpx2.AsyncClient(timeout=httpx2.Timeout(30, read=60))
        async with http, Client(streamable_http_client(server.url, http_client=http)) as client:
            results: list[CallToolResult] = []

            async def call() -> None:
                results.append(await client.call_tool("generate_image", {**FOX, "wait_seconds": 20}))

            async with anyio.create_task_group() as group:
                group.start_soon(call)
                await wait_for_row(path, lambda row: row["state"] == "submitted")
                holder.execute("BEGIN IMMEDIATE")
        [result] = results
        assert result.structured_content is not None and result.structured_content["status"] == "SUCCESS"
        assert "record is not written yet" in text(result)
        server.proc.send_signal(signal.SIGTERM)
        with anyio.fail_after(30):  # the lock is released only once the server is on its way out
            while b"not written yet: trying for up to" not in stderr_of(server):
                await anyio.sleep(0.02)
        holder.execute("ROLLBACK")  # its flush lands the record before it exits
        assert server.proc.wait(timeout=60) == 0
        [row] = read_rows(path)
        assert row["state"] == "succeeded" and row["delivered"] == 1 and row["cost_usd"] is not None
    finally:
        if holder.in_transaction:
            holder.execute("ROLLBACK")
        holder.close()
        server.stop()


def test_sigterm_on_stdio_flushes_a_record_still_behind_and_exits(sandbox: SandboxServer, tmp_path: Path) -> None:
    """Over stdio, where the SDK reads stdin in a thread nothing can interrupt: SIGTERM still leaves through the
    lifespan (the record lands) and the process exits 0 instead of dying at once or hanging on that thread."""
    path = tmp_path / "ledger.db"
    sandbox.configure(latency=1.5)
    env = server_env(sandbox.base_url, QOLABA_LEDGER_URL=f"sqlite:///{path}?busy_timeout=0.5", QOLABA_SAVE="off")
    holder = sqlite3.connect(path, isolation_level=None, timeout=30)
    with tempfile.TemporaryFile() as stderr:
        server = RawStdio(env, stderr=stderr)
        proc, send, until = server.proc, server.send, server.until

        def log() -> bytes:
            stderr.seek(0)
            return stderr.read()

        try:
            params = {"name": "generate_image", "arguments": {**FOX, "wait_seconds": 20}, "_meta": {"progressToken": 1}}
            send({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": params})
            until(lambda message: "submitted" in str(message.get("params", {}).get("message")))
            holder.execute("BEGIN IMMEDIATE")  # the task exists; its outcome cannot be written until this ends
            result = until(lambda message: message.get("id") == 2)["result"]
            assert result["structuredContent"]["status"] == "SUCCESS"
            assert "record is not written yet" in json.dumps(result)
            proc.send_signal(signal.SIGTERM)  # stdin stays open: the client has not gone
            deadline = time.monotonic() + 30
            while b"not written yet: trying for up to" not in log():
                assert time.monotonic() < deadline and proc.poll() is None, log().decode(errors="replace")
                time.sleep(0.02)
            holder.execute("ROLLBACK")  # the flush now lands the record, and the process leaves
            assert proc.wait(timeout=60) == 0, log().decode(errors="replace")
        finally:
            if holder.in_transaction:
                holder.execute("ROLLBACK")
            holder.close()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    [row] = read_rows(path)
    assert row["state"] == "succeeded" and row["delivered"] == 1 and row["cost_usd"] is not None
