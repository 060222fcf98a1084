"""How quickly qolaba-mcp notices a finished task: progress notifications, polls and completion lag.

    .venv/bin/python bench/completion.py --latency 10 --calls 5

Runs a sandbox in this process and qolaba-mcp over stdio with the SDK Client; for each generate_image call it
counts progress notifications and polls, and measures the lag between the sandbox finishing the task
(created + latency) and the tool result arriving.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Any

import anyio
from mcp import Client, StdioServerParameters

from qolaba_mcp.sandbox import SandboxConfig, SandboxServer


async def one_call(client: Client, sandbox: SandboxServer, rows: list[dict[str, Any]]) -> None:
    notes = 0

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        nonlocal notes
        notes += 1

    result = await client.call_tool(
        "generate_image",
        {"model": "vertex/nano-banana-flash", "prompt": "benchmark", "wait_seconds": 50},
        progress_callback=on_progress,
    )
    arrived = time.time()
    data = result.structured_content or {}
    task = sandbox.sandbox.state.tasks[data["task_id"]]
    rows.append(
        {
            "status": data["status"],
            "notifications": notes,
            "polls": sandbox.sandbox.state.polls_by_task[data["task_id"]],
            "lag_ms": (arrived - (task.created + task.latency)) * 1000,
            "latency": task.latency,
        }
    )


async def run(latency: float, calls: int, env: dict[str, str]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    with SandboxServer(SandboxConfig(latency=latency)) as sandbox:
        # previews and saving off: this measures noticing completion; bench/delivery.py measures delivery
        env = {**env, "QOLABA_API_BASE_URL": sandbox.base_url, "QOLABA_API_KEY": "bench"}
        env.update(QOLABA_PREVIEW="off", QOLABA_SAVE="off", QOLABA_LEDGER_URL="sqlite:///:memory:")
        params = StdioServerParameters(command=sys.executable, args=["-m", "qolaba_mcp"], env=env)
        async with Client(params) as client, anyio.create_task_group() as group:
            for _ in range(calls):
                group.start_soon(one_call, client, sandbox, rows)
    return rows


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latency", type=float, default=10.0)
    parser.add_argument("--calls", type=int, default=5)
    args = parser.parse_args()
    import os

    rows = anyio.run(run, args.latency, args.calls, dict(os.environ))
    lags = [row["lag_ms"] for row in rows]
    print(
        f"{args.calls} calls, {args.latency:g} s sandbox generations, all {rows[0]['status']}"
        if all(r["status"] == "SUCCESS" for r in rows)
        else f"statuses: {[r['status'] for r in rows]}"
    )
    print(f"progress notifications per call: {statistics.mean(r['notifications'] for r in rows):.1f}")
    print(
        f"polls per task: {statistics.mean(r['polls'] for r in rows):.1f} "
        f"({statistics.mean(r['polls'] for r in rows) / args.latency:.2f}/s)"
    )
    print(
        f"completion lag: p50 {percentile(lags, 0.5):.0f} ms, p95 {percentile(lags, 0.95):.0f} ms, "
        f"max {max(lags):.0f} ms"
    )


if __name__ == "__main__":
    main()
