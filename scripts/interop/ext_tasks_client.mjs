// @modelcontextprotocol/ext-tasks (the MCP Tasks client library) on the TypeScript SDK v2 client against qolaba-mcp
// over stdio: generate_image as a task (session.callTool must make a task, not an immediate result), settled to the
// tool's own result, then a second task cancelled and its status read back. ERA is 2026-07-28 (the tasks extension,
// negotiated through server/discover) or 2025-11-25 (initialize, capabilities.tasks; tasks/list checked too).
// `node ext_tasks_client.mjs NPM_PREFIX ERA SERVER_COMMAND [ARG...]`
import { GENERATE_ARGS, MODERN, asTask, check, checkGenerated, connect, describe, fail, finish, load, ok } from "./_ext_tasks.mjs";

const [prefix, era, command, ...args] = process.argv.slice(2);
if (!prefix || !["2026-07-28", "2025-11-25"].includes(era) || !command) {
  console.error("usage: node ext_tasks_client.mjs NPM_PREFIX 2026-07-28|2025-11-25 SERVER_COMMAND [ARG...]");
  process.exit(2);
}
const lib = await load(prefix);
console.log(lib.versions);
const { resultFromTaskOutcome, toolDeclarationFromMcpTool } = lib.tasks;

let connection;
try {
  connection = await connect(lib, { transport: "stdio", command, args, era: era === MODERN ? MODERN : "legacy", endpointId: "qolaba-mcp-stdio" });
  const { client, session } = connection;
  const negotiated = client.getNegotiatedProtocolVersion();
  check(negotiated === era, `negotiated ${negotiated} (${client.getProtocolEra()} era)`, `negotiated ${negotiated}, not ${era}`);
  check(session.capabilities.execution, "the session sees task execution", `no task execution: ${JSON.stringify(session.capabilities)}`);
  // A 2025-11-25 client makes a task only of a tool whose declaration allows one; the declaration is the server's.
  const listed = (await client.listTools()).tools.find((tool) => tool.name === "generate_image");
  const declaration = listed && toolDeclarationFromMcpTool(listed);
  const call = (prompt) =>
    session.callTool("generate_image", { ...GENERATE_ARGS, prompt }, { declaration, task: { preference: "prefer" } });

  const execution = await asTask(await call(GENERATE_ARGS.prompt));
  const { taskId } = execution.handle;
  const reference = execution.serializeReference();
  ok(`task ${taskId} created (${reference.generation} reference)`);
  const first = await session.task(taskId).snapshot();
  check(["working", "completed"].includes(first.status), `tasks/get: ${first.status}`, `tasks/get: ${first.status}`);
  const statuses = [];
  const { outcome } = await execution.settle({ onEvent: (event) => event.type === "task" && statuses.push(event.task.status) });
  check(outcome.status === "completed", `settled: completed (statuses seen: ${statuses.join(",") || "none"})`, `settled: ${outcome.status} ${outcome.error?.message ?? ""}`);
  if (outcome.status === "completed") checkGenerated(resultFromTaskOutcome(outcome), taskId);
  if (era !== MODERN) {
    const page = await session.listTasks();
    check(page.tasks.some((task) => task.taskId === taskId), "tasks/list has it", "tasks/list lacks it");
  }

  const second = await call("cancel me");
  if (second.kind !== "task") {
    fail("the second call made no task");
  } else {
    await second.cancel();
    const after = await session.task(second.handle.taskId).snapshot();
    check(["cancelled", "completed"].includes(after.status), `after tasks/cancel: ${after.status}`, `after tasks/cancel: ${after.status}`);
    const settled = await second.result();
    check(settled.status === after.status, `its outcome: ${settled.status}`, `its outcome: ${settled.status}, tasks/get said ${after.status}`);
  }
} catch (error) {
  fail(describe(error));
} finally {
  await connection?.close();
}
finish(`${lib.versions} (${era}): a task settled to its result, one cancelled`);
