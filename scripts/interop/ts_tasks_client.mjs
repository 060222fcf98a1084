// The MCP TypeScript SDK 1.x experimental tasks client (protocol 2025-11-25) against qolaba-mcp over stdio:
// generate_image as a task through client.experimental.tasks.callToolStream (created, polled, its result), then
// tasks/get, tasks/list, and a second task cancelled. `node ts_tasks_client.mjs NPM_PREFIX SERVER_COMMAND [ARG...]`.
// Ends with one line, `OK: ...` (exit 0) or `FAIL: <first reason> (+N more)` (exit 1).
import { readFileSync } from "node:fs";
import path from "node:path";
import { pathToFileURL } from "node:url";

const [prefix, command, ...args] = process.argv.slice(2);
if (!prefix || !command) {
  console.error("usage: node ts_tasks_client.mjs NPM_PREFIX SERVER_COMMAND [ARG...]");
  process.exit(2);
}
const sdkDir = path.resolve(prefix, "node_modules/@modelcontextprotocol/sdk");
const sdkVersion = JSON.parse(readFileSync(path.join(sdkDir, "package.json"), "utf8")).version;
const load = (rel) => import(pathToFileURL(path.join(sdkDir, "dist/esm", rel)).href);
const { Client } = await load("client/index.js");
const { StdioClientTransport } = await load("client/stdio.js");

const GENERATE_ARGS = { model: "vertex/nano-banana-flash", prompt: "A lighthouse on a cliff at dusk, tasks check" };
const failures = [];
const fail = (what) => { failures.push(what); console.log(`  FAIL ${what}`); };
const ok = (what) => console.log(`  ok   ${what}`);

console.log(`@modelcontextprotocol/sdk ${sdkVersion}`);
const client = new Client({ name: "interop-ts-tasks", version: "1" }, { capabilities: { tasks: { list: {}, cancel: {} } } });
const transport = new StdioClientTransport({ command, args, env: { ...process.env, QOLABA_SAVE: "off" }, stderr: "ignore" });
try {
  await client.connect(transport);
  const caps = client.getServerCapabilities();
  caps?.tasks?.requests?.tools?.call ? ok("capabilities.tasks.requests.tools.call") : fail("no capabilities.tasks");
  const tools = (await client.listTools()).tools;
  const gen = tools.find((t) => t.name === "generate_image");
  gen?.execution?.taskSupport === "optional" ? ok("generate_image execution.taskSupport optional") : fail("no execution.taskSupport");
  let taskId, result;
  const statuses = [];
  const stream = client.experimental.tasks.callToolStream({ name: "generate_image", arguments: GENERATE_ARGS }, undefined, { task: { ttl: 600000 } });
  for await (const message of stream) {
    if (message.type === "taskCreated") { taskId = message.task.taskId; ok(`task ${taskId} created`); }
    else if (message.type === "taskStatus") statuses.push(message.task.status);
    else if (message.type === "result") result = message.result;
    else if (message.type === "error") fail(`callToolStream error: ${message.error?.message ?? message.error}`);
  }
  taskId ? ok(`statuses seen: ${statuses.join(",") || "none"}`) : fail("no task created");
  result?.structuredContent?.status === "SUCCESS" ? ok("result: SUCCESS") : fail(`result: ${JSON.stringify(result)?.slice(0, 200)}`);
  if (taskId) {
    const got = await client.experimental.tasks.getTask(taskId);
    got.status === "completed" ? ok("tasks/get: completed") : fail(`tasks/get: ${got.status}`);
    const listed = await client.experimental.tasks.listTasks();
    listed.tasks.some((t) => t.taskId === taskId) ? ok("tasks/list has it") : fail("tasks/list lacks it");
  }
  const second = client.experimental.tasks.callToolStream({ name: "generate_image", arguments: { ...GENERATE_ARGS, prompt: "cancel me" } }, undefined, { task: { ttl: 600000 } });
  for await (const message of second) {
    if (message.type === "taskCreated") {
      const cancelled = await client.experimental.tasks.cancelTask(message.task.taskId);
      ["cancelled", "completed"].includes(cancelled.status) ? ok(`tasks/cancel: ${cancelled.status}`) : fail(`tasks/cancel: ${cancelled.status}`);
      break;
    }
    if (message.type === "error" || message.type === "result") { fail("second call made no task"); break; }
  }
} catch (error) {
  fail(`${error?.message ?? error}`);
} finally {
  await client.close().catch(() => {});
}
if (failures.length) {
  console.log(`FAIL: ${failures[0]}${failures.length > 1 ? ` (+${failures.length - 1} more)` : ""}`);
  process.exit(1);
}
console.log(`OK: @modelcontextprotocol/sdk ${sdkVersion}: a task polled to its result, listed, one cancelled`);
