"""A stdio relay that logs an MCP session: `python3 wire_relay.py LOG SERVER_COMMAND [ARG...]`.

Hosts that show only their own view of a call (Claude Code, the Inspector CLI) are given this as their server
command; every JSON-RPC line is written to LOG as `--> <line>` (host to server) or `<-- <line>` (server to host),
so an interop script can check what went over the wire: a task created, tasks/get polls, what a request declared.
`read_wire(LOG)` parses such a log.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any


def relay(log_path: str, command: list[str]) -> int:
    """Pass stdio through to the server, logging each line with its direction; the server's exit code."""
    with open(log_path, "a", buffering=1) as log:
        server = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert server.stdin is not None and server.stdout is not None
        upstream = server.stdin

        def forward() -> None:
            for line in sys.stdin.buffer:
                log.write("--> " + line.decode(errors="replace").rstrip("\n") + "\n")
                upstream.write(line)
                upstream.flush()
            upstream.close()

        threading.Thread(target=forward, daemon=True).start()
        for line in server.stdout:
            log.write("<-- " + line.decode(errors="replace").rstrip("\n") + "\n")
            sys.stdout.buffer.write(line)
            sys.stdout.buffer.flush()
        return server.wait()


class Wire:
    """A relay log, parsed: what the host sent, what the server answered, matched by request id."""

    def __init__(self, path: Path) -> None:
        self.sent: list[dict[str, Any]] = []
        self.received: list[dict[str, Any]] = []
        if not path.exists():
            return
        for line in path.read_text().splitlines():
            direction, _, text = line.partition(" ")
            try:
                message = json.loads(text)
            except ValueError:
                continue
            (self.sent if direction == "-->" else self.received).append(message)

    def calls(self, tool: str) -> list[dict[str, Any]]:
        return [m for m in self.sent if m.get("method") == "tools/call" and m.get("params", {}).get("name") == tool]

    def response(self, request: dict[str, Any]) -> dict[str, Any] | None:
        answers = (m.get("result") for m in self.received if m.get("id") == request.get("id") and "result" in m)
        return next(answers, None)

    def polls(self, task_id: str) -> list[tuple[dict[str, Any], dict[str, Any] | None]]:
        """Each tasks/get for the task, with its answer (None: not answered)."""
        gets = [m for m in self.sent if m.get("method") == "tasks/get" and m.get("params", {}).get("taskId") == task_id]
        return [(get, self.response(get)) for get in gets]


def declares(request: dict[str, Any], extension: str) -> bool:
    """Whether a 2026-07-28 request lists the extension in its per-request client capabilities."""
    capabilities = request.get("params", {}).get("_meta", {}).get("io.modelcontextprotocol/clientCapabilities", {})
    return extension in (capabilities.get("extensions") or {})


if __name__ == "__main__":
    sys.exit(relay(sys.argv[1], sys.argv[2:]))
