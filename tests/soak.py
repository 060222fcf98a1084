"""The fault soak: many generate_image calls through one stdio server against a sandbox injecting faults.

    .venv/bin/python -m tests.soak --calls 500 --concurrency 20      (what `make soak` runs)

Every call must end as a success, a clean error (carrying the task_id where a task exists) or a clean "still
running" result with its task_id; anything else is lost. Submissions are counted by the sandbox per call (each
call has its own prompt), so a retried submission shows up as a duplicate.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import anyio
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.types import CallToolResult, TextContent

from qolaba_mcp.sandbox import Fault, SandboxConfig, SandboxServer

SOAK_FAULTS = [
    Fault(kind="rate_limit", rate=0.10),
    Fault(kind="server_error", rate=0.05, on="poll"),
    Fault(kind="disconnect", rate=0.05),
    Fault(kind="failed_task", rate=0.02),
    Fault(kind="malformed", rate=0.01),
]


@dataclass
class SoakReport:
    calls: int = 0
    succeeded: int = 0
    clean_errors: int = 0
    errors_with_task_id: int = 0
    still_running: int = 0
    lost: int = 0
    duplicate_submissions: int = 0
    submissions: int = 0
    server_crashes: int = 0
    latencies: list[float] = field(default_factory=list)
    faults: dict[str, int] = field(default_factory=dict)
    lost_examples: list[str] = field(default_factory=list)
    texts: list[str] = field(default_factory=list, repr=False)
    wall_seconds: float = 0.0

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies) or [0.0]
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]

    def render(self) -> str:
        return "\n".join(
            [
                f"calls                 {self.calls}",
                f"succeeded             {self.succeeded}",
                f"clean errors          {self.clean_errors} ({self.errors_with_task_id} carrying their task_id)",
                f"still running         {self.still_running} (returned the task_id and next step)",
                f"lost (neither)        {self.lost}",
                f"duplicate submissions {self.duplicate_submissions} ({self.submissions} tasks for {self.calls} calls)",
                f"server crashes        {self.server_crashes}",
                f"latency               p50 {self.percentile(0.5):.2f} s, p95 {self.percentile(0.95):.2f} s",
                f"wall time             {self.wall_seconds:.1f} s",
                f"faults injected       {sum(self.faults.values())} {dict(sorted(self.faults.items()))}",
            ]
        )


def _text(result: CallToolResult) -> str:
    return "\n".join(block.text for block in result.content if isinstance(block, TextContent))


async def _one(client: Client, index: int, results: dict[int, tuple[CallToolResult | None, float, str]]) -> None:
    started = time.monotonic()
    arguments = {"model": "vertex/nano-banana-flash", "prompt": f"soak call {index}", "wait_seconds": 30}
    try:
        result: CallToolResult | None = await client.call_tool("generate_image", arguments)
        problem = ""
    except Exception as exc:  # anything raised here is a call that did not end cleanly
        result, problem = None, f"{type(exc).__name__}: {exc}"
    results[index] = (result, time.monotonic() - started, problem)


async def _soak(
    report: SoakReport, *, calls: int, concurrency: int, env: dict[str, str], log_level: str, errlog: TextIO
) -> dict[int, tuple[CallToolResult | None, float, str]]:
    params = StdioServerParameters(command=sys.executable, args=["-m", "qolaba_mcp", "--log-level", log_level], env=env)
    results: dict[int, tuple[CallToolResult | None, float, str]] = {}
    async with Client(stdio_client(params, errlog=errlog)) as client:
        limiter = anyio.CapacityLimiter(concurrency)

        async def limited(index: int) -> None:
            async with limiter:
                await _one(client, index, results)

        async with anyio.create_task_group() as group:
            for index in range(calls):
                group.start_soon(limited, index)
        try:
            with anyio.fail_after(10):
                alive = not (await client.call_tool("list_models", {})).is_error
        except Exception:
            alive = False
        report.server_crashes = 0 if alive else 1
    return results


def run_soak(
    *,
    calls: int = 500,
    concurrency: int = 20,
    latency: float = 1.0,
    api_key: str = "qk_soak_0f9e8d7c6b5a",
    log_level: str = "WARNING",
    stderr_path: Path | None = None,
) -> SoakReport:
    """Run the soak and return its figures; the server's stderr goes to ``stderr_path`` when given."""
    report = SoakReport(calls=calls)
    config = SandboxConfig(latency=latency, faults=SOAK_FAULTS, retry_after=0.2, random_seed=20261126)
    with SandboxServer(config) as sandbox:
        env = {k: v for k, v in os.environ.items() if not k.startswith("QOLABA_")}
        env.update(
            QOLABA_API_BASE_URL=sandbox.base_url,
            QOLABA_API_KEY=api_key,
            QOLABA_POLL_MAX_INTERVAL="1",
            QOLABA_SAVE="off",
            QOLABA_LEDGER_URL="sqlite:///:memory:",  # its made-up generations never reach a user's real ledger
        )
        started = time.monotonic()
        with open(stderr_path, "w", encoding="utf-8") if stderr_path else tempfile.TemporaryFile("w+") as errlog:
            results = anyio.run(
                lambda: _soak(report, calls=calls, concurrency=concurrency, env=env, log_level=log_level, errlog=errlog)
            )
        report.wall_seconds = time.monotonic() - started
        tasks_by_prompt: dict[str, list[str]] = {}
        for task in sandbox.sandbox.state.tasks.values():
            tasks_by_prompt.setdefault(task.request.prompt or "", []).append(task.task_id)
        report.submissions = len(sandbox.sandbox.state.tasks)
        report.faults = dict(Counter(sandbox.sandbox.state.faults))
    report.duplicate_submissions = sum(len(ids) - 1 for ids in tasks_by_prompt.values() if len(ids) > 1)
    for index in range(calls):
        result, seconds, problem = results.get(index, (None, 0.0, "no result recorded"))
        report.latencies.append(seconds)
        task_ids = tasks_by_prompt.get(f"soak call {index}", [])
        if result is None:
            report.lost += 1
            report.lost_examples.append(f"call {index}: {problem}")
            continue
        text = _text(result)
        data: dict[str, Any] = result.structured_content or {}
        report.texts.append(text)
        if not result.is_error and data.get("status") == "SUCCESS" and data.get("images"):
            report.succeeded += 1
        elif not result.is_error and data.get("task_id") in task_ids and "get_task" in (data.get("next_step") or ""):
            report.still_running += 1
        elif result.is_error and text and (not task_ids or any(task_id in text for task_id in task_ids)):
            report.clean_errors += 1
            report.errors_with_task_id += bool(task_ids)
        else:
            report.lost += 1
            report.lost_examples.append(f"call {index}: {text[:300]!r}")
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--latency", type=float, default=1.0, help="seconds each sandbox generation takes")
    args = parser.parse_args()
    report = run_soak(calls=args.calls, concurrency=args.concurrency, latency=args.latency)
    print(report.render())
    for example in report.lost_examples[:10]:
        print(f"  lost: {example}")
    goal = report.lost == 0 and report.duplicate_submissions == 0 and report.server_crashes == 0
    print("goal (0 lost, 0 duplicates, 0 crashes):", "met" if goal else "MISSED")
    raise SystemExit(0 if goal else 1)


if __name__ == "__main__":
    main()
