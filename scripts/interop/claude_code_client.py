"""Claude Code, the CLI host, against qolaba-mcp over stdio: does it run generate_image as an MCP task?

Claude Code needs a model to decide to call a tool, so this script serves a scripted stand-in for the Anthropic
Messages API on a loopback port (ANTHROPIC_BASE_URL): it loads generate_image through ToolSearch, calls it once, and
ends its turn when the tool's result comes back. Claude Code's interactive UI runs in a pseudo-terminal (its print
mode, `-p`, never uses tasks); every JSON-RPC line between it and the server is logged by wire_relay.py and checked
afterwards:

1. interactive, default settings: the tools/call declares the io.modelcontextprotocol/tasks extension, the server
   answers with a task, Claude Code polls tasks/get until it is completed, and tells the model the call went to the
   background;
2. interactive with CLAUDE_CODE_DISABLE_MCP_TASK_BACKGROUND=1: still a task, polled in the foreground, and the model
   gets the images as the tool's result;
3. interactive with CLAUDE_CODE_DISABLE_MCP_TASKS=1: a plain call, answered with the images, no tasks/get;
4. print mode (`claude -p`): a plain call too.

Usage: python3 claude_code_client.py NPM_PREFIX SERVER_COMMAND [ARG...]   (ends with `OK: ...` or `FAIL: ...`)
"""

from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from wire_relay import Wire, declares

TOOL = "mcp__qolaba__generate_image"
ARGUMENTS = {"model": "vertex/nano-banana-flash", "prompt": "A lighthouse on a cliff at dusk, Claude Code check"}
EXTENSION = "io.modelcontextprotocol/tasks"
API_KEY = "sk-interop-not-a-real-key"
TURN_TIMEOUT_S = 90.0


# --- the scripted model -----------------------------------------------------------------------------------------


class Model:
    """What the stand-in Messages API has seen: the text of generate_image's tool result, once it arrives."""

    def __init__(self) -> None:
        self.tool_result: str | None = None
        self.requests = 0
        self.lock = threading.Lock()

    def answer(self, body: dict[str, Any]) -> tuple[list[dict[str, Any]], str]:
        messages = body.get("messages") or []
        tools = {tool.get("name") for tool in body.get("tools") or []}
        results = {
            block.get("tool_use_id"): block
            for message in messages
            if isinstance(message.get("content"), list)
            for block in message["content"]
            if isinstance(block, dict) and block.get("type") == "tool_result"
        }
        with self.lock:
            self.requests += 1
            if "toolu_generate" in results:
                if self.tool_result is None:
                    self.tool_result = json.dumps(results["toolu_generate"].get("content"))
                return [{"type": "text", "text": "Done."}], "end_turn"
        if TOOL in tools or "toolu_search" in results:
            return [{"type": "tool_use", "id": "toolu_generate", "name": TOOL, "input": ARGUMENTS}], "tool_use"
        if "ToolSearch" in tools:
            search = {"query": f"select:{TOOL}", "max_results": 1}
            return [{"type": "tool_use", "id": "toolu_search", "name": "ToolSearch", "input": search}], "tool_use"
        return [{"type": "text", "text": "Done."}], "end_turn"


def serve_model(model: Model) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            self.send_response(404)
            self.end_headers()

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("content-length") or 0)) or b"{}")
            if not self.path.startswith("/v1/messages") or "count_tokens" in self.path:
                return self._json({"input_tokens": 10})
            blocks, stop = model.answer(body)
            message = {
                "id": "msg_interop",
                "type": "message",
                "role": "assistant",
                "model": body.get("model", "claude"),
                "content": blocks,
                "stop_reason": stop,
                "stop_sequence": None,
                "usage": {"input_tokens": 10, "output_tokens": 5},
            }
            if not body.get("stream"):
                return self._json(message)
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            self.end_headers()
            self._event("message_start", {"message": {**message, "content": [], "stop_reason": None}})
            for index, block in enumerate(blocks):
                if block["type"] == "text":
                    start, delta = {"type": "text", "text": ""}, {"type": "text_delta", "text": block["text"]}
                else:
                    start = {**block, "input": {}}
                    delta = {"type": "input_json_delta", "partial_json": json.dumps(block["input"])}
                self._event("content_block_start", {"index": index, "content_block": start})
                self._event("content_block_delta", {"index": index, "delta": delta})
                self._event("content_block_stop", {"index": index})
            self._event(
                "message_delta", {"delta": {"stop_reason": stop, "stop_sequence": None}, "usage": {"output_tokens": 5}}
            )
            self._event("message_stop", {})

        def _json(self, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _event(self, name: str, data: dict[str, Any]) -> None:
            self.wfile.write(f"event: {name}\ndata: {json.dumps({'type': name, **data})}\n\n".encode())
            self.wfile.flush()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


# --- one Claude Code session --------------------------------------------------------------------------------------


def session(
    binary: Path, server: list[str], work: Path, name: str, env: dict[str, str], interactive: bool
) -> tuple[Wire, Model, str]:
    """Run Claude Code once against the server; the wire, the model's view, and the screen (or output)."""
    folder = work / name
    home, project = folder / "home", folder / "project"
    project.mkdir(parents=True)
    home.mkdir()
    wire_log = folder / "wire.log"
    (home / ".claude.json").write_text(
        json.dumps(
            {
                "hasCompletedOnboarding": True,
                "theme": "dark",
                "customApiKeyResponses": {"approved": [API_KEY[-20:]], "rejected": []},
                "projects": {str(project): {"hasTrustDialogAccepted": True, "hasCompletedProjectOnboarding": True}},
            }
        )
    )
    relayed = [sys.executable, str(Path(__file__).with_name("wire_relay.py")), str(wire_log), *server]
    config = folder / "mcp.json"
    config.write_text(
        json.dumps(
            {"mcpServers": {"qolaba": {"command": relayed[0], "args": relayed[1:], "env": {"QOLABA_SAVE": "off"}}}}
        )
    )
    model = Model()
    api = serve_model(model)
    environment = {
        **os.environ,
        "HOME": str(home),
        "ANTHROPIC_BASE_URL": f"http://127.0.0.1:{api.server_address[1]}",
        "ANTHROPIC_API_KEY": API_KEY,
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_AUTOUPDATER": "1",
        "TERM": "xterm-256color",
        **env,
    }
    for name in ("CLAUDE_CODE_DISABLE_MCP_TASKS", "CLAUDE_CODE_DISABLE_MCP_TASK_BACKGROUND"):
        if name not in env:  # the host's defaults, whatever this shell has set
            environment.pop(name, None)
    argv = [
        str(binary),
        "--permission-mode",
        "acceptEdits",
        "--strict-mcp-config",
        "--mcp-config",
        str(config),
        "--allowedTools",
        TOOL,
    ]
    try:
        if interactive:
            screen = drive(argv, environment, project, lambda: finished(model, Wire(wire_log)))
        else:
            done = subprocess.run(
                [*argv, "-p", "Make one image of a lighthouse."],
                env=environment,
                cwd=project,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=TURN_TIMEOUT_S,
            )
            screen = done.stdout + done.stderr
    finally:
        api.shutdown()
    return Wire(wire_log), model, screen


def finished(model: Model, wire: Wire) -> bool:
    """The turn is over: the model has the tool's result, and a task (if one was made) has ended."""
    if model.tool_result is None:
        return False
    for call in wire.calls("generate_image"):
        result = wire.response(call) or {}
        if result.get("resultType") == "task":
            return any(
                (answer or {}).get("status") in ("completed", "failed", "cancelled")
                for _, answer in wire.polls(result["taskId"])
            )
    return True


def drive(argv: list[str], env: dict[str, str], cwd: Path, done: Any) -> str:
    """Claude Code's interactive UI in a pseudo-terminal: wait for its prompt, type one request, wait until done."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: Claude Code, in its own session (never back into this script's code)
        try:
            os.chdir(cwd)
            os.execvpe(argv[0], argv, env)
        except OSError as exc:
            os.write(2, f"cannot start {argv[0]}: {exc}\n".encode())
        os._exit(127)
    screen = b""

    def read_for(seconds: float, until: Any) -> bool:
        nonlocal screen
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.2)
            if ready:
                try:
                    screen += os.read(fd, 65536)
                except OSError:
                    return until()
            if until():
                return True
        return False

    def text() -> str:
        return re.sub(r"\x1b\[[0-9;?>]*[a-zA-Z]|\x1b\][^\x07]*\x07", "", screen.decode(errors="replace"))

    try:
        read_for(30.0, lambda: "shift+tab" in text())  # the input box is drawn
        for char in "Make one image of a lighthouse.":
            os.write(fd, char.encode())
            time.sleep(0.01)
        read_for(0.5, lambda: False)  # let the UI take the typed text before Enter
        os.write(fd, b"\r")
        read_for(TURN_TIMEOUT_S, done)
        return text()
    finally:
        stop(pid)
        os.close(fd)


def stop(pid: int) -> None:
    """End Claude Code's session (it and whatever it started there): SIGTERM, then SIGKILL after 3 s."""

    def gone() -> bool:
        try:
            return os.waitpid(pid, os.WNOHANG)[0] != 0
        except ChildProcessError:
            return True

    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + 3.0
        while not gone() and time.monotonic() < deadline:
            time.sleep(0.05)
    gone()


# --- the checks -----------------------------------------------------------------------------------------------------


def generate_call(wire: Wire) -> dict[str, Any]:
    calls = wire.calls("generate_image")
    if not calls:
        raise AssertionError("Claude Code never called generate_image")
    return calls[0]


def check_task_run(wire: Wire, model: Model, backgrounded: bool) -> str:
    call = generate_call(wire)
    version = call["params"]["_meta"].get("io.modelcontextprotocol/clientInfo", {}).get("version", "?")
    if not declares(call, EXTENSION):
        raise AssertionError(f"Claude Code {version}: tools/call did not declare {EXTENSION}")
    created = wire.response(call) or {}
    if created.get("resultType") != "task":
        raise AssertionError(f"the server answered without a task: {json.dumps(created)[:200]}")
    task_id = created["taskId"]
    polls = wire.polls(task_id)
    answers = [answer for _, answer in polls if answer is not None]
    if not answers or answers[-1].get("status") != "completed":
        raise AssertionError(
            f"task {task_id}: tasks/get never answered completed ({[a.get('status') for a in answers]})"
        )
    final = answers[-1].get("result", {}).get("structuredContent", {})
    if final.get("status") != "SUCCESS" or not final.get("images"):
        raise AssertionError(f"task {task_id}: the completed result has no images ({json.dumps(final)[:200]})")
    told = model.tool_result or ""
    if backgrounded and (task_id not in told or "background" not in told):
        raise AssertionError(f"the model was not told the task went to the background: {told:.300}")
    if not backgrounded and ("background" in told or '"image"' not in told):
        raise AssertionError(f"the model did not get the images as the tool's result: {told:.300}")
    how = "backgrounded" if backgrounded else "in the foreground, the images as the tool's result"
    print(f"  ok   Claude Code {version}: task {task_id} created, {len(polls)} tasks/get polls to completed, {how}")
    return version


def check_plain_run(wire: Wire, label: str) -> None:
    call = generate_call(wire)
    if declares(call, EXTENSION):
        raise AssertionError(f"{label}: tools/call still declared {EXTENSION}")
    result = wire.response(call) or {}
    if result.get("resultType") == "task" or result.get("structuredContent", {}).get("status") != "SUCCESS":
        raise AssertionError(f"{label}: not a plain result with the images: {json.dumps(result)[:200]}")
    if any(m.get("method") == "tasks/get" for m in wire.sent):
        raise AssertionError(f"{label}: Claude Code polled tasks/get")
    print(f"  ok   {label}: a plain tools/call, answered with the images")


def main() -> int:
    if len(sys.argv) < 3:
        print(__doc__.rsplit("Usage:", 1)[1])
        return 2
    binary = Path(sys.argv[1]).resolve() / "node_modules/@anthropic-ai/claude-code-linux-x64/claude"
    server = sys.argv[2:]
    with tempfile.TemporaryDirectory(prefix="interop-claude-code-") as work:
        root = Path(work)
        try:
            wire, model, screen = session(binary, server, root, "tasks", {}, interactive=True)
            try:
                version = check_task_run(wire, model, backgrounded=True)
            except AssertionError:
                print(screen[-2000:])
                raise
            foreground = {"CLAUDE_CODE_DISABLE_MCP_TASK_BACKGROUND": "1"}
            wire, model, _ = session(binary, server, root, "foreground", foreground, interactive=True)
            check_task_run(wire, model, backgrounded=False)
            wire, model, _ = session(
                binary, server, root, "disabled", {"CLAUDE_CODE_DISABLE_MCP_TASKS": "1"}, interactive=True
            )
            check_plain_run(wire, "CLAUDE_CODE_DISABLE_MCP_TASKS=1")
            wire, model, _ = session(binary, server, root, "print", {}, interactive=False)
            check_plain_run(wire, "print mode (claude -p)")
        except (AssertionError, OSError, subprocess.SubprocessError) as exc:
            print(f"FAIL: {exc}")
            return 1
    print(
        f"OK: Claude Code {version}: a task polled to completion, backgrounded (or not, when told); "
        "CLAUDE_CODE_DISABLE_MCP_TASKS=1 and -p make plain calls"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
