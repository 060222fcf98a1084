"""Privacy: a caller sees only its own tasks, the ledger is its user's alone, and tests and the sandbox never reach
the user's real records. Also: the CLI fails as the server does, and every view of a task tells the same seed."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from qolaba_mcp.images._delivery import default_data_dir
from qolaba_mcp.ledger import NewGeneration, default_ledger_url, open_ledger
from qolaba_mcp.sandbox import SandboxServer

from .conftest import TEST_DATA_HOME, HttpServer, connect, server_env
from .results import data, text

CAT = {"model": "vertex/nano-banana-flash", "prompt": "a cat on a roof"}


@asynccontextmanager
async def as_caller(server: HttpServer, key: str | None) -> AsyncIterator[Client]:
    """A client over HTTP with its own Qolaba key (None: the server's)."""
    headers = {"X-Qolaba-Api-Key": key} if key else {}
    http = httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30, read=60))
    async with http, Client(streamable_http_client(server.url, http_client=http)) as client:
        yield client


async def answers(client: Client, task_id: str) -> list[str]:
    """What get_task and qolaba://tasks/ say about ``task_id``, the id itself written as <id>."""
    result = await client.call_tool("get_task", {"task_id": task_id})
    said = [f"error={result.is_error} {text(result)}"]
    try:
        said.append(f"resource {(await client.read_resource(f'qolaba://tasks/{task_id}')).contents}")
    except Exception as exc:
        said.append(f"resource error {exc}")
    return [line.replace(task_id, "<id>") for line in said]


@pytest.mark.anyio
@pytest.mark.parametrize("ledger", ["off", "sqlite"])
async def test_a_sync_request_is_answered_to_its_caller_alone(
    sandbox: SandboxServer, tmp_path: Path, ledger: str
) -> None:
    sandbox.configure(latency=3)
    url = "off" if ledger == "off" else f"sqlite:///{tmp_path / 'ledger.db'}"
    server = HttpServer(server_env(sandbox.base_url, QOLABA_LEDGER_URL=url, QOLABA_SAVE="off"), "--allow-client-keys")
    try:
        async with as_caller(server, "qk_alice_0123456789") as alice:
            first = data(await alice.call_tool("generate_image", {**CAT, "mode": "sync", "wait_seconds": 0.5}))
            local = first["task_id"]
            assert first["status"] == "PENDING" and local.startswith("sync-")
            async with as_caller(server, "qk_bob_9876543210") as bob, as_caller(server, None) as operator:
                for other in (bob, operator):
                    unknown = await answers(other, "sync-" + "0" * 32)
                    assert "error=True" in unknown[0] and "resource error" in unknown[1]
                    assert await answers(other, local) == unknown  # while it runs
                done = data(await alice.call_tool("get_task", {"task_id": local, "wait_seconds": 15}))
                assert done["status"] == "SUCCESS" and done["images"]
                for other in (bob, operator):  # and once it has images
                    assert await answers(other, local) == await answers(other, "sync-" + "0" * 32)
            mine = await alice.read_resource(f"qolaba://tasks/{local}")
            assert json.loads(mine.contents[0].text)["status"] == "SUCCESS"  # type: ignore[union-attr]
    finally:
        _, err = server.stop()
    assert "qk_alice" not in err and "qk_bob" not in err


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.anyio
@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permissions")
async def test_the_ledger_is_readable_by_its_user_alone(tmp_path: Path) -> None:
    folder = tmp_path / "data" / "qolaba-mcp"
    store = open_ledger(default_ledger_url(folder))
    await store.open()
    try:
        new = NewGeneration(principal="p", api_base="a", request_hash="h", request={"prompt": "x"}, model="m")
        await store.begin_or_join(new, window_seconds=0, now=1.0)
        files = [folder / name for name in ("ledger.db", "ledger.db-wal", "ledger.db-shm")]
        assert mode(folder) == 0o700
        assert {file.name: mode(file) for file in files} == {file.name: 0o600 for file in files}
    finally:
        await store.close()
    # A ledger an earlier version left readable by others is made private when opened; its folder stays as it is.
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    old = shared / "ledger.db"
    old.touch(mode=0o644)
    old.chmod(0o644)
    store = open_ledger(default_ledger_url(shared))
    await store.open()
    await store.close()
    assert mode(old) == 0o600 and mode(shared) == 0o755


@pytest.mark.parametrize("command", ["history", "spend"])
def test_the_cli_fails_on_a_broken_ledger_as_the_server_does(tmp_path: Path, command: str) -> None:
    broken = tmp_path / "ledger.db"
    broken.write_bytes(b"this is not a database, it only sits where one should" * 4)
    env = server_env("http://127.0.0.1:9", QOLABA_LEDGER_URL=f"sqlite:///{broken}")
    server = subprocess.run(
        [sys.executable, "-m", "qolaba_mcp"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    cli = subprocess.run(
        [sys.executable, "-m", "qolaba_mcp", command], env=env, capture_output=True, text=True, timeout=60
    )
    assert server.returncode == 2 and len(server.stderr.splitlines()) == 1, server.stderr
    assert (cli.returncode, cli.stderr, cli.stdout) == (2, server.stderr, "")
    assert "not a database" in cli.stderr and "QOLABA_LEDGER_URL" in cli.stderr


@pytest.mark.anyio
@pytest.mark.parametrize("ledger", ["memory", "file"])
async def test_every_view_of_a_task_tells_the_seed_the_api_chose(
    sandbox: SandboxServer, tmp_path: Path, ledger: str
) -> None:
    sandbox.configure(latency=0.2)
    url = "sqlite:///:memory:" if ledger == "memory" else f"sqlite:///{tmp_path / 'ledger.db'}"
    async with connect("memory", "auto", base_url=sandbox.base_url, QOLABA_LEDGER_URL=url, QOLABA_SAVE="off") as c:
        made = await c.call_tool("generate_image", {**CAT, "wait_seconds": 20})  # no seed given: the API picks one
        seed, task_id = data(made)["seed"], data(made)["task_id"]
        assert isinstance(seed, int) and f"seed {seed}" in text(made)
        again = await c.call_tool("get_task", {"task_id": task_id})
        resource = await c.read_resource(f"qolaba://tasks/{task_id}")
        listed = data(await c.call_tool("list_generations", {}))["generations"]
    assert data(again)["seed"] == seed and f"seed {seed}" in text(again), text(again)
    assert json.loads(resource.contents[0].text)["seed"] == seed  # type: ignore[union-attr]
    assert [(row["task_id"], row["seed"]) for row in listed] == [(task_id, seed)]
    facts = ("status", "images", "usage", "model", "prompt", "task_id", "seed")
    assert {key: data(again)[key] for key in facts} == {key: data(made)[key] for key in facts}


def test_servers_under_test_find_their_data_folder_in_a_temporary_one() -> None:
    """The suite's guard (tests/conftest.py) is in place: the default data folder is the suite's own."""
    home = os.environ[TEST_DATA_HOME]
    assert default_data_dir().is_relative_to(home)
    done = subprocess.run(
        [sys.executable, "-c", "from qolaba_mcp.images._delivery import default_data_dir as d; print(d())"],
        env=server_env("http://127.0.0.1:9"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert Path(done.stdout.strip()).is_relative_to(home)


@pytest.mark.anyio
@pytest.mark.skipif(sys.platform == "darwin", reason="the data folder follows HOME alone there")
async def test_generations_against_a_local_sandbox_stay_out_of_the_real_ledger(
    sandbox: SandboxServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With QOLABA_LEDGER_URL unset, an API on this machine gets its own ledger file: no spend in the real one."""
    mine = {"XDG_DATA_HOME": str(tmp_path), "LOCALAPPDATA": str(tmp_path), "QOLABA_LEDGER_URL": None}
    for name in ("XDG_DATA_HOME", "LOCALAPPDATA"):  # the server in this process finds its data folder from here
        monkeypatch.setenv(name, str(tmp_path))
    async with connect("memory", "auto", base_url=sandbox.base_url, QOLABA_SAVE="off", **mine) as client:
        made = data(await client.call_tool("generate_image", {**CAT, "wait_seconds": 20}))
        assert made["status"] == "SUCCESS"
    folder = tmp_path / "qolaba-mcp"
    assert (folder / "sandbox-ledger.db").is_file() and not (folder / "ledger.db").exists()

    def cli(base_url: str, *args: str) -> str:
        run = [sys.executable, "-m", "qolaba_mcp", *args]
        return subprocess.run(run, env=server_env(base_url, **mine), capture_output=True, text=True, timeout=60).stdout

    assert json.loads(cli("https://api.platform.qolaba.ai", "spend", "--json"))["last_24h"]["total_usd"] == 0
    assert made["task_id"] in cli(sandbox.base_url, "history")
