"""Three --stateless replicas on one PostgreSQL ledger behind a real HAProxy (deploy/haproxy.cfg), under load while
one replica is SIGKILLed and another SIGTERMed; what clients lost, what was paid twice, whether the budget held.

    .venv/bin/python -m bench.scale [--calls 200] [--out BENCHMARKS.md]

Installs HAProxy with apt-get when it is missing (nginx is not needed). Exit status 1 when a generation is lost, a
submission is duplicated or the budget is overspent.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import httpx2
from mcp import Client

from qolaba_mcp.sandbox import SandboxConfig, SandboxServer
from tests.pg import PostgresServer

ROOT = Path(__file__).resolve().parent.parent
MODEL = "vertex/nano-banana-flash"
PRICE = 0.03  # the sandbox's price of one image of MODEL
MARK = "<!-- make scale -->"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def haproxy_binary() -> str:
    found = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/usr/local/sbin")
    if found is None:
        subprocess.run(["apt-get", "install", "-y", "-q", "haproxy"], check=True, capture_output=True)
        found = shutil.which("haproxy", path="/usr/sbin:/usr/local/sbin")
    if found is None:
        raise SystemExit("no haproxy, and apt-get could not install it")
    return found


def wait_ready(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx2.get(url, timeout=1).status_code == 200:
                return
        except httpx2.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} not ready in {timeout:.0f} s")


class Replica:
    def __init__(self, env: dict[str, str], logs: Path, name: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = (logs / f"{name}.log").open("wb")
        command = [sys.executable, "-m", "qolaba_mcp", "--transport", "http", "--stateless", "--port", str(self.port)]
        self.proc = subprocess.Popen(command, env=env, stdout=self.log, stderr=self.log)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()


class Tally:
    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.failures: dict[str, int] = {}
        self.task_ids: dict[str, str] = {}  # prompt -> task id the client holds
        self.succeeded: set[str] = set()  # prompts whose images the client got
        self.refused = 0
        self.retries = 0

    def fail(self, why: str) -> None:
        why = re.sub(r"\d+", "N", why)[:90]
        self.failures[why] = self.failures.get(why, 0) + 1


async def tool(client: Client, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    result = await client.call_tool(name, arguments)
    data: dict[str, Any] = dict(result.structured_content or {})
    if result.is_error:
        data["error_text"] = " ".join(getattr(block, "text", "") for block in result.content)
    return data


async def one_generation(url: str, index: int, tally: Tally) -> None:
    """One user's generation, as a careful client makes it: the same call again after a broken connection (the
    ledger joins it: no second payment), then get_task until it has the images."""
    prompt = f"scale run image {index}"
    kind = ("sync", "async", "async_then_get")[index % 3]
    arguments: dict[str, Any] = {"model": MODEL, "prompt": prompt}
    if kind == "sync":
        arguments.update(mode="sync", wait_seconds=30)
    elif kind == "async":
        arguments.update(wait_seconds=30)
    else:
        arguments.update(wait_seconds=0)
    started = time.monotonic()
    for attempt in range(6):
        try:
            async with Client(f"{url}/mcp") as client:
                data = await tool(client, "generate_image", arguments)
                if "budget" in data.get("error_text", "").lower():
                    tally.refused += 1
                    return
                if data.get("error_text") and not data.get("task_id"):
                    raise RuntimeError(data["error_text"])
                task_id = data.get("task_id")
                if not task_id:
                    raise RuntimeError(f"no task_id: {data.get('status')} {data.get('error_text', '')[:60]}")
                tally.task_ids[prompt] = task_id
                while data.get("status") != "SUCCESS":
                    if data.get("status") in ("FAILED",):
                        raise RuntimeError(f"FAILED {data.get('error')}")
                    data = await tool(client, "get_task", {"task_id": tally.task_ids[prompt], "wait_seconds": 30})
                tally.succeeded.add(prompt)
                tally.latencies.append(time.monotonic() - started)
                return
        except Exception as exc:  # a replica killed under the call: try again, as a client would
            leaf = exc
            while isinstance(leaf, BaseExceptionGroup):
                leaf = leaf.exceptions[0]
            tally.fail(f"{type(leaf).__name__}: {leaf}")
            tally.retries += 1
            await anyio.sleep(0.5 * (attempt + 1))
            if prompt in tally.task_ids:
                return await finish(url, prompt, tally, started)
    tally.fail("gave up after 6 attempts")


async def finish(url: str, prompt: str, tally: Tally, started: float) -> None:
    for attempt in range(6):
        try:
            async with Client(f"{url}/mcp") as client:
                data = await tool(client, "get_task", {"task_id": tally.task_ids[prompt], "wait_seconds": 30})
                if data.get("status") == "SUCCESS":
                    tally.succeeded.add(prompt)
                    tally.latencies.append(time.monotonic() - started)
                    return
        except Exception as exc:
            tally.fail(f"get_task {type(exc).__name__}")
        await anyio.sleep(0.5 * (attempt + 1))


async def crowd(url: str, calls: int, concurrency: int, tally: Tally, offset: int = 0) -> None:
    limiter = anyio.CapacityLimiter(concurrency)

    async def run(index: int) -> None:
        async with limiter:
            await one_generation(url, index, tally)

    async with anyio.create_task_group() as group:
        for index in range(offset, offset + calls):
            group.start_soon(run, index)


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--latency-calls", type=int, default=60)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    haproxy = haproxy_binary()
    logs = Path(tempfile.mkdtemp(prefix="qolaba-scale-"))
    # the latency phase's generations count too; of the run's own, about 15 % must meet the budget
    budget = round(PRICE * (2 * args.latency_calls + args.calls * 0.85), 2)
    started_at = time.monotonic()
    with PostgresServer.start() as pg, SandboxServer(SandboxConfig(latency=1.0, pictures="plain")) as sandbox:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("QOLABA_", "OTEL_"))}
        env.update(
            QOLABA_API_BASE_URL=sandbox.base_url,
            QOLABA_API_KEY="scale-key",
            QOLABA_LEDGER_URL=pg.create_database(),
            QOLABA_DAILY_BUDGET_USD=str(budget),
            QOLABA_OUTPUT_DIR=str(logs / "images"),
            QOLABA_POLL_MAX_INTERVAL="0.5",
            QOLABA_PREVIEW="off",
        )
        replicas = [Replica(env, logs, f"replica{n}") for n in (1, 2, 3)]
        lb_port = free_port()
        lb_env = {
            **os.environ,
            "LB_BIND": f"127.0.0.1:{lb_port}",
            "STATS_BIND": f"127.0.0.1:{free_port()}",
            **{f"REPLICA_{n}": f"127.0.0.1:{r.port}" for n, r in enumerate(replicas, start=1)},
        }
        lb_log = (logs / "haproxy.log").open("wb")
        balancer = subprocess.Popen(
            [haproxy, "-db", "-f", str(ROOT / "deploy" / "haproxy.cfg")], env=lb_env, stdout=lb_log, stderr=lb_log
        )
        lb = f"http://127.0.0.1:{lb_port}"
        try:
            for replica in replicas:
                wait_ready(f"{replica.url}/readyz")
            wait_ready(f"{lb}/readyz")
            time.sleep(2.5)  # every replica passes its health checks (rise 2, 1 s apart)
            # added latency: the same sync generations straight to one replica, then through the balancer
            direct, balanced = Tally(), Tally()
            sandbox.configure(latency=0.2, pictures="plain")
            anyio.run(crowd, replicas[0].url, args.latency_calls, 10, direct, 100_000)
            anyio.run(crowd, lb, args.latency_calls, 10, balanced, 200_000)
            sandbox.configure(latency=1.0, pictures="plain")
            warmup_tasks = len(sandbox.sandbox.state.tasks)
            sandbox.sandbox.state.reset()

            tally = Tally()

            async def chaos() -> None:
                await anyio.sleep(args.calls * 0.02)
                replicas[2].proc.send_signal(signal.SIGKILL)
                await anyio.sleep(args.calls * 0.02)
                replicas[1].proc.send_signal(signal.SIGTERM)

            async def run() -> None:
                async with anyio.create_task_group() as group:
                    group.start_soon(chaos)
                    await crowd(lb, args.calls, args.concurrency, tally)

            run_started = time.monotonic()
            anyio.run(run)
            run_seconds = time.monotonic() - run_started
            tasks = dict(sandbox.sandbox.state.tasks)
        finally:
            balancer.terminate()
            balancer.wait(10)
            lb_log.close()
            for replica in replicas:
                replica.stop()
    prompts = [task.request.prompt for task in tasks.values()]
    submitted = set(prompts)
    duplicates = len(prompts) - len(submitted)
    lost_prompts = submitted - tally.succeeded
    lost = len(lost_prompts)
    for prompt in sorted(lost_prompts):
        print(f"lost: {prompt} task {tally.task_ids.get(prompt)}", file=sys.stderr)
    spend = round((warmup_tasks + len(tasks)) * PRICE, 2)
    ratio_p50 = pct(balanced.latencies, 0.5) / pct(direct.latencies, 0.5)
    ratio_p95 = pct(balanced.latencies, 0.95) / pct(direct.latencies, 0.95)
    failures = "; ".join(f"{why} x{n}" for why, n in sorted(tally.failures.items(), key=lambda kv: -kv[1]))
    lines = [
        MARK,
        "## Replicas behind HAProxy (`make scale`)",
        "",
        f"Three `--stateless` replicas on one PostgreSQL ledger behind HAProxy {_version(haproxy)} "
        f"([deploy/haproxy.cfg](deploy/haproxy.cfg)); {args.calls} generations ({args.concurrency} at a time: sync, "
        "async, async then `get_task` through the balancer, so usually on another replica) against a sandbox "
        f"(1 s per generation), a daily budget of ${budget:.2f}; replica 3 SIGKILLed and replica 2 SIGTERMed "
        f"mid-run. Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} "
        f"in {time.monotonic() - started_at:.0f} s.",
        "",
        "| figure | value |",
        "| --- | --- |",
        f"| generations submitted to the API | {len(tasks)} (refused by the budget: {tally.refused}) |",
        f"| generations lost (submitted, images never reached the client) | {lost} |",
        f"| duplicate submissions (one prompt paid twice) | {duplicates} |",
        f"| spend vs budget | ${spend:.2f} <= ${budget:.2f}: {'yes' if spend <= budget + 1e-9 else 'NO'} |",
        f"| client calls that failed and were retried | {tally.retries}: {failures or 'none'} |",
        f"| run wall time | {run_seconds:.1f} s |",
        f"| sync latency, one replica direct: p50 / p95 | {pct(direct.latencies, 0.5) * 1000:.0f} ms / "
        f"{pct(direct.latencies, 0.95) * 1000:.0f} ms |",
        f"| the same through HAProxy: p50 / p95 | {pct(balanced.latencies, 0.5) * 1000:.0f} ms / "
        f"{pct(balanced.latencies, 0.95) * 1000:.0f} ms ({ratio_p50:.2f}x / {ratio_p95:.2f}x; target p95 <= 1.2x) |",
        "",
    ]
    report = "\n".join(lines)
    print(report)
    if args.out:
        path = Path(args.out)
        text = path.read_text() if path.exists() else ""
        text = text.split(MARK)[0].rstrip() + "\n\n" + report if MARK in text else text.rstrip() + "\n\n" + report
        path.write_text(text)
    print(f"logs: {logs}", file=sys.stderr)
    return 0 if lost == 0 and duplicates == 0 and spend <= budget + 1e-9 else 1


def _version(haproxy: str) -> str:
    out = subprocess.run([haproxy, "-v"], capture_output=True, text=True).stdout
    found = re.search(r"version (\S+)", out)
    return found.group(1) if found else ""


if __name__ == "__main__":
    sys.exit(main())
