"""qolaba-mcp against its floors, side by side, in one run: start-up, round trips, sync overhead, completion
lag, 100 concurrent calls and memory; and the gallery MCP App's size and paint time in headless Chromium.

    .venv/bin/python bench/bench.py [--quick] [--only SCENARIO ...] [--out BENCHMARKS.md]

Every MCP figure goes through the SDK Client over stdio, as a host would see it. The baselines are
bench/floor_server.py (a bare SDK server with one echo tool: the floor no Python MCP server can beat) and, for
synchronous generation, a direct HTTP POST to the same sandbox. Sandboxes run in this process on background
threads; servers run with QOLABA_SAVE=off and QOLABA_PREVIEW=off, so the figures are the protocol path, not
image handling, except the second crowd: 4-image calls with the defaults (previews on, files saved), whose peak
memory is what a desktop user gets; its sandbox serves images drawn before the clock starts (bench/predrawn.py), and
its server CPU per image and its wall are set against Pillow's own preview of the same PNGs, measured in the run.
Prints a table and writes it, with per-scenario details, to BENCHMARKS.md (a run with --only writes nothing unless
--out is given: a partial report must not replace the full one).
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import platform
import random
import shlex
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import anyio
import httpx2
from mcp import Client, StdioServerParameters
from mcp.types import CallToolResult, TextResourceContents
from predrawn import (
    PreDrawnSandbox,
    delivery_cpu,
    pillow_floor,
    pillow_floor_wall,
)  # bench/, first on sys.path when run as a script

from qolaba_mcp.ledger import LedgerRow, open_ledger, principal_of
from qolaba_mcp.sandbox import SandboxConfig, SandboxServer

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
FLOOR_SCRIPT = BENCH_DIR / "floor_server.py"
MODEL = "vertex/nano-banana-flash"
GENERATE_PATH = "/api/v1/images/generate"
WAIT_SECONDS = 50
# Markers that pick each server's process out of this process's children (matched against its argv).
QOLABA_MARKER = "qolaba_mcp"
FLOOR_MARKER = FLOOR_SCRIPT.name


@dataclass(frozen=True)
class Plan:
    """How much of each scenario to run."""

    starts: int  # cold starts per server
    round_trips: int  # calls per tool on a warm session
    sync_calls: int  # sync generations, and as many direct POSTs
    latencies: tuple[float, ...]  # sandbox latencies for the completion-lag scenario
    lag_calls: int  # concurrent generate_image calls per latency
    concurrent: int  # calls in the one-process concurrency scenario
    concurrent_latency: float = 5.0
    crowd_images: int = 4  # images per call in the default-configuration crowd
    ledger_rows: int = 100_000  # rows in the ledger that list_generations searches
    ledger_queries: int = 200
    app_runs: int = 10  # gallery app mounts timed in Chromium, each with a generation of its own
    app_images: int = 4  # images per timed generation
    budget_rows: int = 200_000  # the caller's ledger rows in the last 24 hours, for the daily-budget scenario
    budget_calls: int = 60  # sync generations with the daily budget on, and as many with it off
    task_calls: int = 40  # tasks created, and as many direct 202s, tasks/get and get_task calls


SCENARIOS = ("start", "trips", "sync", "lag", "crowd", "ledger", "app", "budget", "tasks")


FULL = Plan(starts=12, round_trips=300, sync_calls=60, latencies=(2.0, 10.0, 30.0), lag_calls=5, concurrent=100)
QUICK = Plan(
    starts=5,
    round_trips=50,
    sync_calls=20,
    latencies=(2.0,),
    lag_calls=5,
    concurrent=20,
    ledger_rows=10_000,
    app_runs=3,
    budget_rows=20_000,
    budget_calls=20,
    task_calls=10,
)


# --- helpers: statistics, environment, /proc ---------------------------------------------------------------


def pct(values: Sequence[float], q: float) -> float:
    """The q-quantile (0..1) by linear interpolation between the closest ranks."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def median(values: Sequence[float]) -> float:
    return pct(values, 0.5)


# Where the servers keep their ledger: a file of this run's own (never the user's history); "off" for the floor.
LEDGER_DIR = Path(tempfile.mkdtemp(prefix="qolaba-bench-ledger-"))


def ledger_file(name: str) -> str:
    return f"sqlite:///{LEDGER_DIR / name}.db"


def server_env(base_url: str, *, output_dir: str | None = None, ledger: str = "off") -> dict[str, str]:
    """One environment for every server: no inherited QOLABA_* settings, files and previews off.

    With ``output_dir`` the image settings stay at their defaults (previews on; stdio saves files) and files go
    there. PYTHONDONTWRITEBYTECODE is dropped so the discarded warm-up start caches bytecode for a checkout being
    edited, as installing a package does: otherwise every start would compile qolaba_mcp from source.
    """
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("QOLABA_") and key != "PYTHONDONTWRITEBYTECODE"
    }
    env.update(
        QOLABA_API_BASE_URL=base_url,
        QOLABA_API_KEY="bench",
        QOLABA_SAVE="off",
        QOLABA_PREVIEW="off",
        QOLABA_MAX_WAIT_SECONDS=str(WAIT_SECONDS),
        QOLABA_LEDGER_URL=ledger,
    )
    if output_dir is not None:
        del env["QOLABA_SAVE"], env["QOLABA_PREVIEW"]
        env["QOLABA_OUTPUT_DIR"] = output_dir
    return env


def qolaba_params(base_url: str, *, output_dir: str | None = None, ledger: str = "off") -> StdioServerParameters:
    env = server_env(base_url, output_dir=output_dir, ledger=ledger)
    return StdioServerParameters(command=sys.executable, args=["-m", "qolaba_mcp"], env=env)


def floor_params(base_url: str) -> StdioServerParameters:
    return StdioServerParameters(command=sys.executable, args=[str(FLOOR_SCRIPT)], env=server_env(base_url))


def child_pid(marker: str) -> int:
    """The pid of the one child of this process whose argv mentions ``marker``.

    The SDK spawns a stdio server directly (no shell), so the server is a child of this process.
    """
    me = os.getpid()
    found: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            # The command name in field 2 may hold spaces or parentheses: fields after the last ")" are safe.
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid != me:
                continue
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue  # the process ended while we looked
        if any(marker.encode() in arg for arg in argv):
            found.append(int(entry.name))
    if len(found) != 1:
        raise RuntimeError(f"expected one child process matching {marker!r}, found {found}")
    return found[0]


def memory_kb(pid: int, key: str) -> int:
    """A ``Vm*`` figure (kB) from /proc/<pid>/status: VmRSS now, VmHWM the peak so far."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1])
    raise RuntimeError(f"{key} not found for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far, all its threads (/proc/<pid>/stat utime and stime)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def check(result: CallToolResult, what: str) -> dict[str, Any]:
    """The structured result of a call that must have succeeded."""
    if result.is_error:
        raise RuntimeError(f"{what} failed: {result.content}")
    return result.structured_content or {}


# --- scenario 1 and 6: cold start and idle RSS ----------------------------------------------------------------


@dataclass
class Starts:
    seconds: dict[str, list[float]] = field(default_factory=dict)
    rss_kb: dict[str, list[int]] = field(default_factory=dict)


async def start_once(params: StdioServerParameters, marker: str) -> tuple[float, int]:
    """Spawn -> tools/list answered, in seconds; then the server's resident memory at rest (kB)."""
    started = time.perf_counter()
    async with Client(params) as client:
        await client.list_tools()
        elapsed = time.perf_counter() - started
        rss = memory_kb(child_pid(marker), "VmRSS")
    return elapsed, rss


async def cold_starts(plan: Plan, base_url: str) -> Starts:
    servers = {"qolaba-mcp": (qolaba_params(base_url), QOLABA_MARKER), "floor": (floor_params(base_url), FLOOR_MARKER)}
    out = Starts({name: [] for name in servers}, {name: [] for name in servers})
    for params, marker in servers.values():  # discarded: warms the page cache, caches bytecode
        await start_once(params, marker)
    names = list(servers)
    for i in range(plan.starts):
        # Alternate which server goes first, so drift in machine load falls on both alike.
        for name in names if i % 2 == 0 else reversed(names):
            elapsed, rss = await start_once(*servers[name])
            out.seconds[name].append(elapsed)
            out.rss_kb[name].append(rss)
    return out


# --- scenario 2 and 3: round trips on warm sessions -----------------------------------------------------------


async def interleaved(
    calls: dict[str, Callable[[], Awaitable[object]]], runs: int, warmup: int
) -> dict[str, list[float]]:
    """Time ``runs`` awaits of each call, one at a time, alternating between them; ``warmup`` rounds discarded."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    for i in range(warmup + runs):
        for name, call in calls.items():
            started = time.perf_counter()
            await call()
            if i >= warmup:
                times[name].append(time.perf_counter() - started)
    return times


async def round_trips(plan: Plan, base_url: str) -> dict[str, list[float]]:
    async with Client(qolaba_params(base_url)) as qolaba, Client(floor_params(base_url)) as floor:

        async def list_models() -> None:
            check(await qolaba.call_tool("list_models", {}), "list_models")

        async def echo() -> None:
            check(await floor.call_tool("echo", {"text": "bench"}), "echo")

        return await interleaved({"qolaba-mcp": list_models, "floor": echo}, plan.round_trips, warmup=10)


async def sync_generations(plan: Plan, base_url: str) -> dict[str, list[float]]:
    arguments = {"model": MODEL, "prompt": "bench", "mode": "sync"}
    body = {"model": MODEL, "prompt": "bench", "celery": False}
    async with (
        Client(qolaba_params(base_url)) as qolaba,
        Client(qolaba_params(base_url, ledger=ledger_file("sync"))) as recorded,
        httpx2.AsyncClient(base_url=base_url, headers={"X-API-Key": "bench"}, timeout=30) as http,
    ):

        def via(client: Client) -> Callable[[], Awaitable[None]]:
            async def call() -> None:
                data = check(await client.call_tool("generate_image", arguments), "sync generate_image")
                if data.get("status") != "SUCCESS":
                    raise RuntimeError(f"sync generate_image ended {data.get('status')}")

            return call

        async def direct() -> None:
            (await http.post(GENERATE_PATH, json=body)).raise_for_status()

        calls = {"qolaba-mcp": via(qolaba), "ledger on": via(recorded), "direct": direct}
        return await interleaved(calls, plan.sync_calls, warmup=3)


# --- scenario 4 and 5: async generations ----------------------------------------------------------------------


@dataclass
class AsyncCall:
    started: float  # wall clock, just before the call
    arrived: float  # wall clock, when its result arrived
    status: str
    task_done: float | None = None  # wall clock when the sandbox finished the task (created + latency)
    latency: float | None = None
    polls: int = 0
    notifications: int = 0
    previews: int = 0
    saved: int = 0
    notes: int = 0
    error: str | None = None

    @property
    def lag_ms(self) -> float | None:
        return None if self.task_done is None else (self.arrived - self.task_done) * 1000


async def async_call(
    client: Client,
    sandbox: SandboxServer | PreDrawnSandbox,
    calls: list[AsyncCall],
    extra: dict[str, Any] | None = None,
) -> None:
    """One async generate_image; its outcome is recorded, never raised, so one failure stops no other call."""
    notifications = 0

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        nonlocal notifications
        notifications += 1

    started = time.time()
    prompt = f"bench {uuid.uuid4().hex[:12]}"  # each call its own request: identical ones would join, not generate
    try:
        result = await client.call_tool(
            "generate_image",
            {"model": MODEL, "prompt": prompt, "wait_seconds": WAIT_SECONDS, **(extra or {})},
            progress_callback=on_progress,
        )
    except Exception as exc:  # reported in the table's details, never raised
        calls.append(AsyncCall(started, time.time(), "EXCEPTION", error=repr(exc)))
        return
    arrived = time.time()
    data = result.structured_content or {}
    call = AsyncCall(
        started,
        arrived,
        str(data.get("status", "ERROR")),
        notifications=notifications,
        previews=sum(1 for block in result.content if block.type == "image"),
        saved=sum(1 for path in data.get("saved_files", []) if path),
        notes=len(data.get("notes", [])),
    )
    if result.is_error:
        call.status = "ERROR" if call.status == "SUCCESS" else call.status
        call.error = str(result.content)[:300]
    task = sandbox.sandbox.state.tasks.get(data.get("task_id", ""))
    if task is not None:
        call.task_done = task.created + task.latency
        call.latency = task.latency
        call.polls = sandbox.sandbox.state.polls_by_task[task.task_id]
    calls.append(call)


@dataclass
class Batch:
    latency: float
    calls: list[AsyncCall]
    peak_rss_kb: int | None = None
    num_images: int = 1
    defaults: bool = False  # previews on and files saved, rather than both off
    recorded: int | None = None  # ledger rows that ended "succeeded" (defaults only: the ledger is on)
    cpu_s: float | None = None  # the server process's CPU time from its first call to its last result
    floor_s: float | None = None  # Pillow's CPU per preview of the same PNGs (defaults only: the images are pre-drawn)
    floor_wall_s: float | None = None  # wall for as many Pillow previews as images delivered, on every core
    served: int = 0  # pre-drawn PNGs downloaded
    delivery_s: float | None = None  # CPU per image of Delivery alone, in the benchmark process, on the same PNGs

    @property
    def ok(self) -> list[AsyncCall]:
        return [c for c in self.calls if c.status == "SUCCESS" and c.lag_ms is not None]

    def lags(self) -> list[float]:
        return [c.lag_ms for c in self.ok if c.lag_ms is not None]

    def polls(self) -> list[float]:
        return [float(c.polls) for c in self.ok]


async def batch(
    latency: float, n: int, *, measure_memory: bool = False, num_images: int | None = None, defaults: bool = False
) -> Batch:
    """n concurrent generate_image calls through one server process, against a sandbox of its own.

    ``defaults``: the server keeps its default settings (previews on, files saved in a throwaway folder, the ledger
    on in a file of this run's), and the sandbox serves pictures it drew before the clock started, so the figures
    are our delivery, not the sandbox drawing on the same cores; Pillow's floor is then measured on those PNGs.
    """
    calls: list[AsyncCall] = []
    extra = {} if num_images is None else {"num_images": num_images}
    config = SandboxConfig(latency=latency)
    sandbox = PreDrawnSandbox(config, model=MODEL, images=num_images or 1) if defaults else SandboxServer(config)
    with sandbox, tempfile.TemporaryDirectory() as folder:
        params = qolaba_params(
            sandbox.base_url,
            output_dir=folder if defaults else None,
            ledger=ledger_file(f"crowd-{time.time_ns()}") if defaults else "off",
        )
        async with Client(params) as client:
            # measured only for a batch running alone: the lag scenario runs several servers at once
            pid = child_pid(QOLABA_MARKER) if measure_memory else None
            cpu_before = cpu_seconds(pid) if pid is not None else 0.0
            async with anyio.create_task_group() as group:
                for _ in range(n):
                    group.start_soon(async_call, client, sandbox, calls, extra)
            cpu = cpu_seconds(pid) - cpu_before if pid is not None else None
            peak = memory_kb(pid, "VmHWM") if pid is not None else None
        floor = floor_wall = alone = None
        served = sandbox.served if isinstance(sandbox, PreDrawnSandbox) else 0  # by the crowd alone
        if isinstance(sandbox, PreDrawnSandbox):
            pngs = [png for drawn in sandbox.pngs.values() for png in drawn]
            floor = pillow_floor(pngs)
            floor_wall = pillow_floor_wall(pngs, sum(c.previews for c in calls), cores())
            alone = await delivery_cpu(sandbox, Path(folder) / "alone", DELIVERY_CALLS, num_images or 1)
    recorded = None
    if defaults:  # every write landed (a "database is locked" would leave a row behind)
        with closing(sqlite3.connect(params.env["QOLABA_LEDGER_URL"].removeprefix("sqlite:///"))) as db:  # type: ignore[index]
            recorded = db.execute("SELECT count(*) FROM generations WHERE state = 'succeeded'").fetchone()[0]
    return Batch(latency, calls, peak, num_images or 1, defaults, recorded, cpu, floor, floor_wall, served, alone)


async def completion_lag(plan: Plan) -> list[Batch]:
    """All latencies at once, each with its own sandbox and server, so the scenario lasts the longest one."""
    batches: list[Batch] = []

    async def one(latency: float) -> None:
        batches.append(await batch(latency, plan.lag_calls))

    async with anyio.create_task_group() as group:
        for latency in plan.latencies:
            group.start_soon(one, latency)
    return sorted(batches, key=lambda b: b.latency)


# --- scenario 7: the gallery MCP App ---------------------------------------------------------------------------

APP_TARGET_KB = 48
PAINT_TARGET_MS = 500  # the grid fills in while the user still reads the status line
HOST_PREFIX = REPO / ".interop" / "apps-host"

# Run in the app's frame before the result is sent: resolves with the time of the first animation frame after every
# thumbnail has loaded (complete, naturalWidth > 0), the frame that paints them. Load events and DOM changes drive
# it, so nothing polls.
PAINT_WATCH = """() => {
  window.qolabaPainted = new Promise((resolve) => {
    const check = () => {
      const thumbs = [...document.querySelectorAll(".card img.thumb")];
      if (!thumbs.length || !thumbs.every((img) => img.complete && img.naturalWidth > 0)) return;
      observer.disconnect();
      document.removeEventListener("load", check, true);
      requestAnimationFrame(() => resolve({ at: performance.timeOrigin + performance.now(), count: thumbs.length }));
    };
    const observer = new MutationObserver(check);
    observer.observe(document, { subtree: true, childList: true, attributes: true, attributeFilter: ["src"] });
    document.addEventListener("load", check, true);
  });
}"""
SEND_RESULT = "(r) => { const at = performance.timeOrigin + performance.now(); host.toolResult(r); return at; }"


@dataclass
class AppFigures:
    size_bytes: int
    images: int
    paint_ms: list[float] = field(default_factory=list)  # tool result sent -> thumbnails painted, one per run
    skipped: str | None = None  # why there are no paint times


def browser_host() -> Any:
    """tests/browser/host.py, the MCP Apps host the browser tests use (it imports playwright, a dev dependency)."""
    spec = importlib.util.spec_from_file_location("bench_apps_host", REPO / "tests" / "browser" / "host.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def host_page_missing(host: Any) -> str | None:
    """Why the host page cannot be had: (re)built with scripts/apps_host/build.sh where npm is (a cached install)."""
    if host.find_chromium() is None:
        return f"no Chromium on PATH ({', '.join(host.CHROMIUM_NAMES)})"
    if shutil.which("npm") and shutil.which("node"):
        build = subprocess.run(
            ["bash", str(REPO / "scripts" / "apps_host" / "build.sh"), str(HOST_PREFIX)], capture_output=True, text=True
        )
        if build.returncode != 0:
            last = (build.stderr or build.stdout).strip().splitlines()[-1:] or ["no output"]
            return f"scripts/apps_host/build.sh failed: {last[0][:200]}"
    if not host.host_built(HOST_PREFIX):
        return f"the MCP Apps host page is not built in {HOST_PREFIX} and npm is not available"
    return None


async def gallery_app(plan: Plan, base_url: str) -> AppFigures:
    """The app's resource size; then, in Chromium, result sent -> thumbnails painted, each run a new mount."""
    host = browser_host()
    # The defaults (previews on, files saved): generate_image downloads every image, so the sandbox has drawn it
    # before the clock starts, as a real API has it stored; gallery_image still fetches and shrinks it.
    with tempfile.TemporaryDirectory(prefix="qolaba-bench-app-") as folder:
        params = qolaba_params(base_url, output_dir=folder, ledger=ledger_file("app"))
        async with Client(params, extensions=[host.ui_extension()]) as client:
            (contents,) = (await client.read_resource(host.APP_URI)).contents
            if not isinstance(contents, TextResourceContents):
                raise RuntimeError(f"{host.APP_URI} is not text")
            figures = AppFigures(len(contents.text.encode()), plan.app_images)
            figures.skipped = host_page_missing(host)
            if not figures.skipped:
                tool = next(t for t in (await client.list_tools()).tools if t.name == "generate_image")
                with host.serve_host_page(HOST_PREFIX) as url:
                    async with host.chromium(host.find_chromium()) as browser:
                        for run in range(plan.app_runs + 1):  # the first warms Chromium and the server's image path
                            async with host.AppHost.open(browser, url, host.client_call_tool(client)) as app_host:
                                await app_host.mount(contents.text, meta=dict(contents.meta or {}), tool=tool)
                                paint_ms = await paint_time(host, app_host, client, plan.app_images, run)
                            if run:
                                figures.paint_ms.append(paint_ms)
    return figures


async def paint_time(host: Any, app_host: Any, client: Client, images: int, run: int) -> float:
    """One generation shown in a mounted app: ms from the result sent to its thumbnails painted."""
    frame = await app_host.app()
    arguments = {"model": MODEL, "prompt": f"bench gallery {run}", "num_images": images}
    await app_host.tool_input(arguments)
    result = host.wire(await client.call_tool("generate_image", arguments))
    await frame.evaluate(PAINT_WATCH)
    sent = await app_host.page.evaluate(SEND_RESULT, result)
    with anyio.fail_after(30):
        painted = await frame.evaluate("() => window.qolabaPainted")
    if painted["count"] != images or app_host.errors:
        raise RuntimeError(f"the gallery showed {painted['count']} of {images} images; errors: {app_host.errors}")
    return float(painted["at"] - sent)


# --- report ---------------------------------------------------------------------------------------------------


@dataclass
class Row:
    figure: str
    ours: str
    baseline: str
    ratio: str
    target: str
    verdict: str  # "met", "MISSED" or "info"


HEADERS = ("figure", "qolaba-mcp", "baseline", "ratio", "target", "result")


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def mb(kb: float) -> str:
    return f"{kb / 1024:.1f} MB"


def text_table(rows: list[Row]) -> str:
    cells = [HEADERS, *[(r.figure, r.ours, r.baseline, r.ratio, r.target, r.verdict) for r in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(HEADERS))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) for row in cells]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def markdown_table(rows: list[Row]) -> str:
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + " --- |" * len(HEADERS)]
    for r in rows:
        verdict_cell = f"**{r.verdict}**" if r.verdict == "MISSED" else r.verdict
        lines.append(f"| {r.figure} | {r.ours} | {r.baseline} | {r.ratio} | {r.target} | {verdict_cell} |")
    return "\n".join(lines)


def machine_facts() -> list[str]:
    try:
        cores = subprocess.run(["nproc"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        cores = str(os.cpu_count())
    cpu = "unknown CPU"
    memory = "unknown"
    try:
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
        total_kb = next(
            int(line.split()[1])
            for line in Path("/proc/meminfo").read_text().splitlines()
            if line.startswith("MemTotal")
        )
        memory = f"{total_kb / 1024 / 1024:.1f} GiB"
    except (OSError, StopIteration):
        pass
    return [
        f"{cores} CPUs (`nproc`), {cpu}, {memory} RAM, {platform.system()} {platform.release()}",
        f"Python {platform.python_version()} ({platform.python_implementation()}), mcp {metadata.version('mcp')}, "
        f"qolaba-mcp {metadata.version('qolaba-mcp')}, httpx2 {metadata.version('httpx2')}",
    ]


@dataclass
class Results:
    """What a run measured; a scenario left out with --only is None."""

    plan: Plan
    starts: Starts | None = None
    trips: dict[str, list[float]] | None = None
    sync: dict[str, list[float]] | None = None
    lag: list[Batch] | None = None
    crowds: list[Batch] | None = None  # previews and files off, then the defaults
    search: tuple[float, float, float, float] | None = None  # SQLite: fill seconds, search p50/p95 ms, mean page
    app: AppFigures | None = None
    budget: dict[str, list[float]] | None = None  # sync generate_image seconds, "budget on" and "budget off"
    tasks: dict[str, list[float]] | None = None  # MCP Tasks: seconds per call kind, and polls/s per task
    seconds: float = 0.0
    load: tuple[float, float] = (0.0, 0.0)  # 1-minute load average at the start and the end of the run


def paired_rows(name: str, ours: list[float], floor: list[float], limit: float, note: str = "") -> list[Row]:
    """p50 against the floor with its ratio target, and p95 for information."""
    suffix = f" {note}" if note else ""
    ratio = median(ours) / median(floor)
    p95 = pct(ours, 0.95) / pct(floor, 0.95)
    return [
        Row(f"{name} p50{suffix}", ms(median(ours)), ms(median(floor)), f"{ratio:.2f}x", f"<= {limit:g}x",
            verdict(ratio <= limit)),
        Row(f"{name} p95{suffix}", ms(pct(ours, 0.95)), ms(pct(floor, 0.95)), f"{p95:.2f}x", "-", "info"),
    ]  # fmt: skip


def build_rows(res: Results) -> list[Row]:
    rows: list[Row] = []
    if res.starts is not None:
        rows += paired_rows("cold start", res.starts.seconds["qolaba-mcp"], res.starts.seconds["floor"], 1.15)
    if res.trips is not None:
        rows += paired_rows("round trip", res.trips["qolaba-mcp"], res.trips["floor"], 1.3, "(list_models vs echo)")

    if res.sync is not None:
        sync_q, sync_d = res.sync["qolaba-mcp"], res.sync["direct"]
        for label, q in (("p50", 0.5), ("p95", 0.95)):
            ours, base = pct(sync_q, q), pct(sync_d, q)
            rows.append(
                Row(
                    f"sync generate_image {label} (vs direct POST)",
                    ms(ours),
                    ms(base),
                    f"{ours / base:.2f}x",
                    f"- (+{(ours - base) * 1000:.1f} ms)",
                    "info",
                )
            )
        on, off = pct(res.sync["ledger on"], 0.5), pct(sync_q, 0.5)
        extra = (on - off) * 1000
        rows.append(
            Row("sync generate_image p50, ledger on vs off", ms(on), ms(off), f"{extra:+.1f} ms",
                "<= +2 ms", verdict(extra <= 2))
        )  # fmt: skip

    for b in res.lag or []:
        lags = b.lags()
        polls_per_s = (sum(b.polls()) / len(b.ok) / b.latency) if b.ok else math.inf
        all_ok = len(b.ok) == len(b.calls)
        label = f"{b.latency:g} s"
        p95 = pct(lags, 0.95) if lags else math.inf
        rows.append(
            Row(
                f"async lag p50, {label} ({len(b.ok)}/{len(b.calls)} ok)",
                f"{pct(lags, 0.5):.0f} ms" if lags else "n/a",
                "-",
                "-",
                "-",
                "info",
            )
        )
        rows.append(
            Row(f"async lag p95, {label}", f"{p95:.0f} ms", "-", "-", "<= 300 ms", verdict(all_ok and p95 <= 300))
        )
        rows.append(
            Row(f"polls/s per task, {label}", f"{polls_per_s:.2f}", "-", "-", "<= 1.5", verdict(polls_per_s <= 1.5))
        )

    for crowd in res.crowds or []:
        rows += crowd_rows(crowd)

    if res.search is not None:
        _, p50, p95, _ = res.search
        rows.append(
            Row(f"list_generations text search, {res.plan.ledger_rows:,} rows, SQLite p50", f"{p50:.1f} ms",
                "-", "-", "-", "info")
        )  # fmt: skip
        rows.append(
            Row(f"list_generations text search, {res.plan.ledger_rows:,} rows, SQLite p95", f"{p95:.1f} ms",
                "-", "-", "<= 30 ms", verdict(p95 <= 30))
        )  # fmt: skip

    if res.app is not None:
        rows += app_rows(res.app)

    if res.budget is not None:
        on, off = median(res.budget["budget on"]), median(res.budget["budget off"])
        extra = (on - off) * 1000
        rows.append(
            Row(f"sync generate_image p50, daily budget on vs off, {res.plan.budget_rows:,} rows in 24 h", ms(on),
                ms(off), f"{extra:+.1f} ms", "<= +2 ms", verdict(extra <= 2))
        )  # fmt: skip

    if res.tasks is not None:
        rows += task_rows(res.tasks)

    if res.starts is not None:
        rss_q, rss_f = res.starts.rss_kb["qolaba-mcp"], res.starts.rss_kb["floor"]
        ratio = median(rss_q) / median(rss_f)
        rows.append(
            Row(
                "idle RSS (after tools/list)",
                mb(median(rss_q)),
                mb(median(rss_f)),
                f"{ratio:.2f}x",
                "<= 1.2x",
                verdict(ratio <= 1.2),
            )
        )
    return rows


def task_rows(tasks: dict[str, list[float]]) -> list[Row]:
    get, tool = median(tasks["tasks/get"]), median(tasks["get_task"])
    create, direct = median(tasks["create"]), median(tasks["202"])
    extra = (create - direct) * 1000
    polls = max(tasks["polls/s"])
    return [
        Row("tasks/get round trip p50 (vs get_task, running task)", ms(get), ms(tool), f"{get / tool:.2f}x", "-",
            "info"),
        Row("CreateTaskResult p50 (vs the API's 202)", ms(create), ms(direct), f"{extra:+.1f} ms", "<= +10 ms",
            verdict(extra <= 10)),
        Row("tasks/get polls/s per task at pollIntervalMs (worst of 3)", f"{polls:.2f}", "-", "-", "<= 1.5",
            verdict(polls <= 1.5)),
    ]  # fmt: skip


def app_rows(app: AppFigures) -> list[Row]:
    size = Row("gallery app resource (ui://qolaba/gallery.html)", f"{app.size_bytes / 1024:.1f} KB", "-", "-",
               f"<= {APP_TARGET_KB} KB", verdict(app.size_bytes <= APP_TARGET_KB * 1024))  # fmt: skip
    label = f"gallery: tool result -> {app.images} thumbnails painted, Chromium"
    if not app.paint_ms:
        return [size, Row(label, "n/a", "-", "-", f"p95 <= {PAINT_TARGET_MS} ms", f"skipped: {app.skipped}")]
    p95 = pct(app.paint_ms, 0.95)
    return [
        size,
        Row(f"{label} p50", f"{median(app.paint_ms):.0f} ms", "-", "-", "-", "info"),
        Row(f"{label} p95", f"{p95:.0f} ms", "-", "-", f"<= {PAINT_TARGET_MS} ms", verdict(p95 <= PAINT_TARGET_MS)),
    ]


def crowd_label(crowd: Batch) -> str:
    n = len(crowd.calls)
    if crowd.defaults:
        return f"{n} concurrent {crowd.num_images}-image calls, defaults (previews on, files saved)"
    return f"{n} concurrent calls"


def crowd_rows(crowd: Batch) -> list[Row]:
    """Every call succeeded, in time, within the memory target: 150 MB with image handling off, 200 MB on."""
    n, label = len(crowd.calls), crowd_label(crowd)
    # With the defaults a call must also have brought every preview and file, with nothing to note.
    want = crowd.num_images if crowd.defaults else 0
    delivered = [c for c in crowd.ok if c.previews == want and c.saved == want and c.notes == 0]
    wall, slowest = crowd_times(crowd)
    peak, limit_mb = crowd.peak_rss_kb or 0, 200 if crowd.defaults else 150
    return [
        Row(f"{label} succeeded", f"{len(delivered)}/{n}", "-", "-", "all", verdict(len(delivered) == n)),
        Row(
            f"{label}: wall vs slowest task",
            f"{wall:.2f} s",
            f"{slowest:.2f} s",
            f"+{wall - slowest:.2f} s",
            "-" if crowd.defaults else "<= +1 s",
            "info" if crowd.defaults else verdict(wall <= slowest + 1),
        ),
        Row(
            f"{label}: peak RSS (VmHWM)",
            mb(peak),
            "-",
            "-",
            f"<= {limit_mb} MB",
            verdict(0 < peak <= limit_mb * 1024),
        ),
        *(
            [
                Row(
                    f"{label}: ledger rows succeeded",
                    f"{crowd.recorded}/{n}",
                    "-",
                    "-",
                    "all (no 'database is locked')",
                    verdict(crowd.recorded == n),
                )
            ]
            if crowd.recorded is not None
            else []
        ),
        *delivery_rows(crowd),
    ]


DELIVERY_CALLS = 25  # concurrent deliveries when Delivery is measured alone, in the benchmark process
CPU_TARGET = 1.3  # server CPU per delivered image over Pillow's own preview of it
CROWD_TARGET = 1.5  # the crowd's wall over its slowest task, over what Pillow's floor needs on this machine's cores


def cores() -> int:
    return len(os.sched_getaffinity(0))


def delivery_figures(crowd: Batch) -> tuple[int, float, float, float] | None:
    """(images delivered, server CPU s per image, Pillow floor s per image, floor s for them all on every core)."""
    images = sum(c.previews for c in crowd.calls)
    if crowd.cpu_s is None or crowd.floor_s is None or not images:
        return None
    return images, crowd.cpu_s / images, crowd.floor_s, images * crowd.floor_s / cores()


def delivery_rows(crowd: Batch) -> list[Row]:
    """The defaults crowd against Pillow's floor on the same PNGs: CPU per image, and wall for them all."""
    figures = delivery_figures(crowd)
    if figures is None:
        return []
    images, per_image, floor, predicted = figures
    wall, slowest = crowd_times(crowd)
    over = wall - slowest
    label = crowd_label(crowd)
    return [
        Row(f"{label}: server CPU per delivered image (vs Pillow's preview of the same PNG)", ms(per_image),
            ms(floor), f"{per_image / floor:.2f}x", f"<= {CPU_TARGET:g}x", verdict(per_image <= CPU_TARGET * floor)),
        *([Row(f"{label}: of which Delivery alone, CPU per image (in the benchmark process, same PNGs)",
               ms(crowd.delivery_s), ms(floor), f"{crowd.delivery_s / floor:.2f}x", "-", "info")]
          if crowd.delivery_s else []),
        Row(f"{label}: wall over slowest task (vs Pillow's floor for {images} images on {cores()} cores)",
            f"{over:+.2f} s", f"{predicted:.2f} s", f"{over / predicted:.2f}x", f"<= {CROWD_TARGET:g}x",
            verdict(over <= CROWD_TARGET * predicted)),
        *([Row(f"{label}: wall over slowest task (vs that floor run now on {cores()} threads, under this load)",
               f"{over:+.2f} s", f"{crowd.floor_wall_s:.2f} s", f"{over / crowd.floor_wall_s:.2f}x", "-", "info")]
          if crowd.floor_wall_s else []),
    ]  # fmt: skip


def crowd_times(crowd: Batch) -> tuple[float, float]:
    """(first call start -> last result, first call start -> last task finished in the sandbox), seconds."""
    first = min(c.started for c in crowd.calls)
    last = max(c.arrived for c in crowd.calls)
    done = [c.task_done for c in crowd.calls if c.task_done is not None]
    return last - first, (max(done) - first) if done else math.nan


def details(res: Results) -> str:
    p = res.plan
    out: list[str] = []

    def samples(values: list[float], scale: float = 1000, unit: str = "ms") -> str:
        return ", ".join(f"{v * scale:.0f}" for v in values) + f" {unit}"

    if res.starts is not None:
        out.append("### 1. Cold start\n")
        out.append(
            f"Spawn -> `tools/list` answered, timed from just before `async with Client(...)` to `list_tools()` "
            f"returning; {p.starts} starts per server after one discarded warm-up start each, alternating which "
            f"server starts first.\n"
        )
        for name, values in res.starts.seconds.items():
            out.append(
                f"- {name}: min {ms(min(values))}, p50 {ms(median(values))}, p95 {ms(pct(values, 0.95))}, "
                f"max {ms(max(values))}; samples: {samples(values)}"
            )
    if res.trips is not None:
        out.append("\n### 2. Round trip on a warm session\n")
        out.append(
            f"`list_models` (no arguments, the whole catalogue) on qolaba-mcp against `echo` on the floor server, "
            f"{p.round_trips} calls each after 10 discarded rounds, alternating one call of each.\n"
        )
        for name, values in res.trips.items():
            out.append(
                f"- {name}: min {ms(min(values))}, p50 {ms(median(values))}, p95 {ms(pct(values, 0.95))}, "
                f"p99 {ms(pct(values, 0.99))}, max {ms(max(values))}"
            )
    if res.sync is not None:
        out.append("\n### 3. Synchronous generation against a zero-latency sandbox\n")
        out.append(
            f'`generate_image` with `mode: "sync"` (qolaba-mcp over stdio) against a direct httpx2 POST of '
            f'`{{"model": "{MODEL}", "prompt": "bench", "celery": false}}` to `{GENERATE_PATH}` on the same '
            f"sandbox, {p.sync_calls} of each after 3 discarded rounds, alternating.\n"
        )
        for name, values in res.sync.items():
            out.append(
                f"- {name}: min {ms(min(values))}, p50 {ms(median(values))}, p95 {ms(pct(values, 0.95))}, "
                f"max {ms(max(values))}"
            )
        overhead = median(res.sync["qolaba-mcp"]) - median(res.sync["direct"])
        out.append(f"- overhead of the MCP path at p50: {overhead * 1000:.1f} ms per call")
    if res.lag is not None:
        out.append("\n### 4. Async completion lag\n")
        out.append(
            f"For each sandbox latency, {p.lag_calls} concurrent `generate_image` calls (`wait_seconds: "
            f"{WAIT_SECONDS}`, with a progress token) through one qolaba-mcp process and a sandbox of its own; all "
            f"latencies run at the same time. Lag = wall clock when the result arrives - (task.created + "
            f"task.latency); polls from the sandbox's per-task counter.\n"
        )
        for b in res.lag:
            describe_batch(out, b)
    if res.crowds is not None:
        out.append("\n### 5. Concurrent calls in one server process\n")
        out.append(
            f"Concurrent async `generate_image` calls (`wait_seconds: {WAIT_SECONDS}`) through one qolaba-mcp "
            f"process, twice: first with previews and files off (the protocol path), then {p.crowd_images}-image "
            f"calls with the server's default image settings (a JPEG preview of each image, each file saved, the "
            f"ledger on), against a sandbox serving {p.crowd_images} PNGs it drew for the model's default size before "
            f"the clock started (`bench/predrawn.py`), so no drawing shares the cores with delivery. "
            f"Wall = first call start -> last result; slowest task = first call start -> the last task's "
            f"completion in the sandbox (created + latency). Server CPU = utime + stime of the server process from "
            f"/proc, from its first call to its last result, protocol, polls and ledger included; per delivered "
            f"image, it is set against Pillow's floor measured in the benchmark process on the same PNGs after the "
            f"crowd (open, draft, decode, reduce to long side 512 with `reducing_gap=2.0`, one JPEG at quality 80, "
            f"thread CPU time); the floor for all images is that times the images over the cores.\n"
        )
        for crowd in res.crowds:
            wall, slowest = crowd_times(crowd)
            out.append(f"- {crowd_label(crowd)}, sandbox latency {crowd.latency:g} s:")
            out.append(f"  wall {wall:.2f} s, slowest task {slowest:.2f} s, difference {wall - slowest:+.2f} s")
            out.append(f"  peak RSS of the server process (VmHWM): {mb(crowd.peak_rss_kb or 0)}")
            if crowd.cpu_s is not None:
                out.append(
                    f"  CPU time of the server process: {crowd.cpu_s:.2f} s "
                    f"({ms(crowd.cpu_s / len(crowd.calls))} per call)"
                )
            figures = delivery_figures(crowd)
            if figures is not None:
                images, per_image, floor, predicted = figures
                out.append(
                    f"  pre-drawn PNGs served {crowd.served}; server CPU per delivered image {ms(per_image)} against "
                    f"Pillow's floor {ms(floor)} ({per_image / floor:.2f}x); the floor for {images} images on "
                    f"{cores()} cores: {predicted:.2f} s, wall over slowest task {wall - slowest:+.2f} s "
                    f"({(wall - slowest) / predicted:.2f}x); the same {images} Pillow previews run on {cores()} "
                    f"threads in the benchmark process right after the crowd took {crowd.floor_wall_s or 0:.2f} s of "
                    f"wall (what the floor gets of the cores under the machine's load). Cores in use on average: "
                    f"the server {crowd.cpu_s / wall:.2f} over the whole crowd, "
                    f"the floor run {images * floor / (crowd.floor_wall_s or math.inf):.2f}"
                )
            if figures is not None and crowd.delivery_s is not None:
                out.append(
                    f"  Delivery alone (qolaba_mcp.images' `Delivery` in the benchmark process, {DELIVERY_CALLS} "
                    f"concurrent {crowd.num_images}-image deliveries of the same PNGs, previews on and files saved; "
                    f"process CPU less the sandbox thread's): {ms(crowd.delivery_s)} per image, "
                    f"{crowd.delivery_s / figures[2]:.2f}x the floor; the rest of the server's figure is the MCP "
                    f"path (protocol, polls, results, ledger)"
                )
            if crowd.defaults:
                out.append(
                    f"  previews {sum(c.previews for c in crowd.calls)}, files saved "
                    f"{sum(c.saved for c in crowd.calls)}, notes {sum(c.notes for c in crowd.calls)}"
                )
            describe_batch(out, crowd)
    if res.starts is not None:
        out.append("\n### 6. Idle RSS\n")
        out.append(
            "VmRSS of the server process right after start-up and one `tools/list`, one reading per cold start.\n"
        )
        for name, kbs in res.starts.rss_kb.items():
            out.append(f"- {name}: median {mb(median(kbs))}, min {mb(min(kbs))}, max {mb(max(kbs))}")
    if res.app is not None:
        out.append("\n### 7. The gallery MCP App\n")
        out.append(
            f"The app's HTML as `resources/read` of `ui://qolaba/gallery.html` returns it: {res.app.size_bytes:,} "
            f"bytes. Then, in the system's headless Chromium, the host page of `tests/browser` (the Apps SDK's "
            f"`AppBridge` over `PostMessageTransport`, the app in a sandboxed iframe) mounts the app, sends the "
            f"input of a {res.app.images}-image `generate_image`, which the SDK Client then calls for real (the "
            f"server with its default image settings, so the sandbox has drawn every image by then), and sends its "
            f"result; timed from just before `sendToolResult` in the host page to the first animation frame in the "
            f"app after every `img.thumb` has loaded (complete, naturalWidth > 0). That span holds the app's "
            f"`gallery_image` calls, through the bridge and the server (fetch, shrink to 512 px, encode), for every "
            f"thumbnail. {p.app_runs} runs, each a new mount and a new generation, after one discarded.\n"
        )
        if res.app.paint_ms:
            values = res.app.paint_ms
            out.append(
                f"- p50 {median(values):.0f} ms, p95 {pct(values, 0.95):.0f} ms, max {max(values):.0f} ms; "
                f"samples: {', '.join(f'{v:.0f}' for v in values)} ms"
            )
        else:
            out.append(f"- not measured: {res.app.skipped}")
    return "\n".join(out) + "\n"


def describe_batch(out: list[str], b: Batch) -> None:
    statuses: dict[str, int] = {}
    for c in b.calls:
        statuses[c.status] = statuses.get(c.status, 0) + 1
    line = f"- {b.latency:g} s: {len(b.calls)} calls, statuses {statuses}"
    if b.ok:
        lags, polls = b.lags(), b.polls()
        mean_polls = sum(polls) / len(polls)
        mean_notes = sum(c.notifications for c in b.ok) / len(b.ok)
        line += (
            f"; lag p50 {pct(lags, 0.5):.0f} ms, p95 {pct(lags, 0.95):.0f} ms, max {max(lags):.0f} ms; "
            f"polls per task mean {mean_polls:.1f} (max {max(polls):.0f}), {mean_polls / b.latency:.2f} polls/s; "
            f"progress notifications per call {mean_notes:.1f}"
        )
    out.append(line)
    for c in b.calls:
        if c.error:
            out.append(f"  - {c.status}: {c.error}")
            break  # the first is enough to start looking


def write_report(res: Results, rows: list[Row], path: Path, command: str) -> None:
    facts = machine_facts()
    text = [
        "# Benchmarks",
        "",
        f"Produced by `{command}` on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC in {res.seconds:.0f} s.",
        "",
        *[f"- {fact}" for fact in facts],
        "- Every MCP figure goes through the SDK `Client` over stdio; servers run with `QOLABA_SAVE=off`, "
        "`QOLABA_PREVIEW=off` (but for the crowd with the defaults), `QOLABA_MAX_WAIT_SECONDS=50` and bytecode "
        "caching on (`PYTHONDONTWRITEBYTECODE` unset), against sandboxes inside the benchmark process.",
        f"- Load average (1 min) {res.load[0]:.2f} when the run started, {res.load[1]:.2f} when it ended: figures "
        "taken on a busy machine are slower and noisier.",
        "- Baselines: `bench/floor_server.py`, a bare SDK `MCPServer` with one `echo` tool (the floor no Python MCP "
        "server can beat), and a direct HTTP POST to the sandbox for synchronous generation.",
        "",
        markdown_table(rows),
        "",
        "## Details",
        "",
        details(res),
    ]
    path.write_text("\n".join(text))


# --- main -----------------------------------------------------------------------------------------------------


async def run(plan: Plan, only: frozenset[str]) -> Results:
    started = time.perf_counter()
    load_before = os.getloadavg()[0]
    res = Results(plan)
    with SandboxServer(SandboxConfig(latency=0)) as sandbox:
        if "start" in only:
            print(f"1/8 cold start and idle RSS: {plan.starts} starts per server ...", flush=True)
            res.starts = await cold_starts(plan, sandbox.base_url)
        if "trips" in only:
            print(f"2/8 round trips: {plan.round_trips} calls per tool ...", flush=True)
            res.trips = await round_trips(plan, sandbox.base_url)
        if "sync" in only:
            print(f"3/8 sync generate_image vs direct POST, ledger off and on: {plan.sync_calls} each ...", flush=True)
            res.sync = await sync_generations(plan, sandbox.base_url)
    if "lag" in only:
        latencies = ", ".join(f"{latency:g} s" for latency in plan.latencies)
        print(f"4/8 completion lag: {plan.lag_calls} calls at each of {latencies}, concurrently ...", flush=True)
        res.lag = await completion_lag(plan)
    if "crowd" in only:
        n, latency = plan.concurrent, plan.concurrent_latency
        print(f"5/8 {n} concurrent calls, {latency:g} s generations, previews and files off ...", flush=True)
        off = await batch(latency, n, measure_memory=True)
        print(f"    {n} concurrent {plan.crowd_images}-image calls with the default image settings ...", flush=True)
        defaults = await batch(latency, n, measure_memory=True, num_images=plan.crowd_images, defaults=True)
        res.crowds = [off, defaults]
    if "ledger" in only:
        print(f"6/8 list_generations search over {plan.ledger_rows:,} ledger rows (SQLite) ...", flush=True)
        res.search = await ledger_search(plan)
    if "app" in only:
        print(f"7/8 the gallery MCP App: its size, then {plan.app_runs} paints in headless Chromium ...", flush=True)
        with SandboxServer(SandboxConfig(latency=0)) as sandbox:
            res.app = await gallery_app(plan, sandbox.base_url)
    if "budget" in only:
        print(f"8/8 sync generate_image with a daily budget over {plan.budget_rows:,} ledger rows ...", flush=True)
        with SandboxServer(SandboxConfig(latency=0)) as sandbox:
            res.budget = await budgeted_generations(plan, sandbox.base_url)
    if "tasks" in only:
        print(f"9/9 MCP Tasks: {plan.task_calls} tasks, tasks/get vs get_task, CreateTaskResult vs 202 ...", flush=True)
        res.tasks = await task_figures(plan)
    res.seconds = time.perf_counter() - started
    res.load = (load_before, os.getloadavg()[0])
    return res


async def budgeted_generations(plan: Plan, base_url: str) -> dict[str, list[float]]:
    """Sync generate_image through two servers on one SQLite ledger holding ``budget_rows`` rows of the caller's
    in the last 24 hours: one keeping a daily budget (every call sums the day's spend), one not."""
    url = ledger_file("budget")
    store = open_ledger(url)
    await store.open()
    try:
        now, who = time.time(), principal_of("bench")
        for start in range(0, plan.budget_rows, 5_000):
            rows = []
            for i in range(start, min(start + 5_000, plan.budget_rows)):
                at = now - 86_000 + i * 85_000 / plan.budget_rows  # all inside the window, oldest first
                request = {"model": MODEL, "prompt": f"bench row {i}"}
                rows.append(
                    LedgerRow(id=uuid.uuid4().hex, principal=who, api_base=f"{base_url}/api/v1",
                              request_hash=f"{i:032x}", request=request, model=MODEL, prompt=request["prompt"],
                              state="succeeded", created_at=at, updated_at=at, finished_at=at, cost_usd=0.000001)
                )  # fmt: skip
            await store._insert_rows(rows)  # type: ignore[attr-defined]  # both backends have it
    finally:
        await store.close()
    arguments = {"model": MODEL, "prompt": "bench", "mode": "sync"}
    budgeted = qolaba_params(base_url, ledger=url)
    budgeted.env = {**(budgeted.env or {}), "QOLABA_DAILY_BUDGET_USD": "1000000"}
    async with Client(budgeted) as on, Client(qolaba_params(base_url, ledger=url)) as off:

        def via(client: Client) -> Callable[[], Awaitable[None]]:
            async def call() -> None:
                data = check(await client.call_tool("generate_image", arguments), "sync generate_image")
                if data.get("status") != "SUCCESS":
                    raise RuntimeError(f"sync generate_image ended {data.get('status')}")

            return call

        return await interleaved({"budget on": via(on), "budget off": via(off)}, plan.budget_calls, warmup=3)


async def task_figures(plan: Plan) -> dict[str, list[float]]:
    """MCP Tasks through bench/tasks.py, on a SQLite ledger of their own."""
    spec = importlib.util.spec_from_file_location("bench_tasks", Path(__file__).with_name("tasks.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_tasks"] = module  # pydantic's generic models look their module up
    spec.loader.exec_module(module)
    with SandboxServer(SandboxConfig(latency=0)) as sandbox:
        params = qolaba_params(sandbox.base_url, ledger=ledger_file("tasks"))
        figures: dict[str, list[float]] = await module.measure(
            params, base_url=sandbox.base_url, generate_path=GENERATE_PATH, model=MODEL, calls=plan.task_calls,
            long_latency=10.0, configure=sandbox.configure,
        )  # fmt: skip
    return figures


async def ledger_search(plan: Plan) -> tuple[float, float, float, float]:
    """The store's full-text history search over a filled SQLite ledger, as bench/ledger.py measures it."""
    spec = importlib.util.spec_from_file_location("bench_ledger", Path(__file__).with_name("ledger.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rng = random.Random(7)
    data, texts = module.rows(plan.ledger_rows, rng), module.searches(plan.ledger_queries, rng)
    with tempfile.TemporaryDirectory() as folder:
        result: tuple[float, float, float, float] = await module.measure(f"sqlite:///{folder}/ledger.db", data, texts)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a smoke run: fewer repetitions, 2 s latency only")
    parser.add_argument(
        "--only",
        action="append",
        choices=SCENARIOS,
        help="run only this scenario (repeatable): start (cold start and idle RSS), trips, sync, lag, crowd "
        "(concurrent calls and their memory, previews off and with the defaults), ledger, app (the gallery MCP App: "
        "its size, and its paint time in the system's headless Chromium), budget (sync generate_image with a daily "
        "budget over a large ledger, against none), tasks (MCP Tasks: tasks/get, CreateTaskResult, polling pace)",
    )
    parser.add_argument(
        "--out", type=Path, help="report file (default: BENCHMARKS.md for a full run, none with --only)"
    )
    args = parser.parse_args()
    if not Path("/proc/self/status").exists():
        parser.error("needs Linux /proc to find the servers' processes and read their memory")
    only = frozenset(args.only or SCENARIOS)
    res = anyio.run(run, QUICK if args.quick else FULL, only)
    rows = build_rows(res)
    print()
    print(text_table(rows))
    missed = [row.figure for row in rows if row.verdict == "MISSED"]
    print(f"\n{len(missed)} target(s) missed" + (": " + "; ".join(missed) if missed else ""))
    print(f"load average {res.load[0]:.2f} at the start, {res.load[1]:.2f} at the end (nproc {os.cpu_count()})")
    out = args.out or (None if args.only else REPO / "BENCHMARKS.md")
    if out is not None:
        command = shlex.join(["python", "bench/bench.py", *sys.argv[1:]])
        write_report(res, rows, out, command)
        print(f"wrote {out} ({res.seconds:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
