// The two client halves of the ext-tasks-recover line (ext_tasks_recover.sh runs them around a kill -9 and a
// restart of the server): `create` starts generate_image as a 2026-07-28 task over Streamable HTTP and hands it off,
// writing the library's serialized task reference to FILE; `resume` is a fresh client and session on the same
// endpoint identity that resumes the task from FILE and settles it to the tool's result.
// `node ext_tasks_recover.mjs NPM_PREFIX create|resume MCP_URL FILE`
import { readFileSync, writeFileSync } from "node:fs";
import { GENERATE_ARGS, MODERN, asTask, check, checkGenerated, connect, describe, fail, finish, load, ok } from "./_ext_tasks.mjs";

const [prefix, phase, url, file] = process.argv.slice(2);
if (!prefix || !["create", "resume"].includes(phase) || !url || !file) {
  console.error("usage: node ext_tasks_recover.mjs NPM_PREFIX create|resume MCP_URL FILE");
  process.exit(2);
}
const lib = await load(prefix);
console.log(`${lib.versions}: ${phase}`);
// The endpoint's identity is its URL, the same before and after the restart: references are scoped to it.
const endpointId = await lib.tasks.createTaskSessionEndpointId("qolaba-mcp interop", { url });

let connection;
let summary = "";
try {
  connection = await connect(lib, { transport: "http", url, era: MODERN, endpointId });
  const { client, session } = connection;
  check(client.getNegotiatedProtocolVersion() === MODERN, `negotiated ${MODERN}`, `negotiated ${client.getNegotiatedProtocolVersion()}`);
  if (phase === "create") {
    const execution = await asTask(await session.callTool("generate_image", GENERATE_ARGS, { task: { preference: "prefer" } }));
    const status = (await session.task(execution.handle.taskId).snapshot()).status;
    // Still running when the server is killed, or the restarted server would have nothing to resume following.
    check(status === "working", `task ${execution.handle.taskId} created, ${status}`, `task ${execution.handle.taskId} is ${status} before the kill`);
    await execution.handoff((reference) => writeFileSync(file, JSON.stringify(reference)));
    ok(`reference handed off to ${file}`);
    summary = `task ${execution.handle.taskId} handed off`;
  } else {
    const reference = JSON.parse(readFileSync(file, "utf8"));
    const execution = await session.resumeTask(reference);
    ok(`task ${reference.taskId} resumed (${execution.kind})`);
    const statuses = [];
    const { outcome } = await execution.settle({ onEvent: (event) => event.type === "task" && statuses.push(event.task.status) });
    check(outcome.status === "completed", `settled: completed (statuses seen: ${statuses.join(",") || "none"})`, `settled: ${outcome.status} ${outcome.error?.message ?? ""}`);
    if (outcome.status === "completed") checkGenerated(lib.tasks.resultFromTaskOutcome(outcome), reference.taskId);
    summary = `task ${reference.taskId} resumed and settled to its images`;
  }
} catch (error) {
  fail(describe(error));
} finally {
  await connection?.close();
}
finish(summary);
