"""A stdio client that vanishes mid-call: the server exits cleanly, says so in one line, and the generation stays
answerable from the ledger."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from qolaba_mcp.sandbox import SandboxServer

from .conftest import RawStdio, connect, server_env

pytestmark = pytest.mark.anyio

FOX = {"model": "vertex/nano-banana-flash", "prompt": "a fox that outlives its client", "wait_seconds": 20}


async def test_a_client_gone_mid_generation_is_a_clean_exit(sandbox: SandboxServer, tmp_path: Path) -> None:
    """A real subprocess: what is checked is the process's exit and its stderr."""
    sandbox.configure(latency=5)
    ledger = f"sqlite:///{tmp_path / 'ledger.db'}"
    env = server_env(sandbox.base_url, QOLABA_LEDGER_URL=ledger, QOLABA_SAVE="off")
    with tempfile.TemporaryFile() as stderr:
        server = RawStdio(env, stderr=stderr)
        proc = server.proc
        try:
            params = {"name": "generate_image", "arguments": FOX, "_meta": {"progressToken": "fox"}}
            server.send({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": params})
            # The task is recorded (with its id) before this progress is sent: the row exists, the images do not.
            server.until(lambda message: "submitted" in str(message.get("params", {}).get("message")))
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.close()
            proc.stdout.close()
            code = proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        stderr.seek(0)
        log = stderr.read().decode(errors="replace")
    lines = log.strip().splitlines()
    assert code == 0, log
    assert "Traceback" not in log and len(lines) == 1, log
    assert "client" in lines[0] and "list_generations" in lines[0], lines[0]

    async with connect("memory", "auto", base_url=sandbox.base_url, QOLABA_LEDGER_URL=ledger) as client:
        listed = await client.call_tool("list_generations", {"search": "outlives"})
        rows = listed.structured_content["generations"]  # type: ignore[index]
        assert [row["status"] for row in rows] == ["PENDING"]
        finished = await client.call_tool("get_task", {"task_id": rows[0]["task_id"], "wait_seconds": 20})
    assert finished.structured_content["status"] == "SUCCESS", finished.content  # type: ignore[index]
    assert sandbox.stats()["submissions"] == 1
