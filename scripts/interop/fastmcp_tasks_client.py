"""fastmcp-tasks' client (SEP-2663, protocol 2026-07-28) against qolaba-mcp over stdio: a task created, polled to
completion through its handle, and a second task cancelled."""

from __future__ import annotations

from _common import GENERATE_ARGS, Report, run, server_command, server_env, versions
from fastmcp import Client
from fastmcp.client.transports import StdioTransport
from fastmcp_tasks.client import call_tool_task


async def main(report: Report) -> str:
    print(versions("fastmcp", "fastmcp-tasks", "mcp"))
    command, args = server_command()
    client = Client(StdioTransport(command=command, args=args, env=server_env()), timeout=60, init_timeout=60)
    async with client:
        print(f"negotiated protocol {client.protocol_version}")
        task = await report.step(
            "tools/call generate_image as a task", lambda: call_tool_task(client, "generate_image", GENERATE_ARGS)
        )
        if task is None:
            return ""
        report.ok(f"task {task.task_id} created ({task.create_result.status})")
        status = await report.step("tasks/get", task.status)
        if status is not None:
            report.check(
                status.status in ("working", "completed"), f"tasks/get: {status.status}", f"tasks/get: {status.status}"
            )
        result = await report.step("task result (polled to completion)", task.result)
        if result is not None:
            report.check_generated(result.structured_content, None)
        other = await report.step(
            "a second task", lambda: call_tool_task(client, "generate_image", {**GENERATE_ARGS, "prompt": "cancel me"})
        )
        if other is not None:
            await report.step("tasks/cancel", other.cancel)
            after = await report.step("tasks/get after cancel", other.status)
            if after is not None:
                report.check(
                    after.status in ("cancelled", "completed"),
                    f"after cancel: {after.status}",
                    f"after cancel: {after.status}",
                )
    return "task polled to completion, one cancelled"


if __name__ == "__main__":
    run("fastmcp-tasks", main)
