// Shared by the ext-tasks interop clients (ext_tasks_client.mjs, ext_tasks_recover.mjs): loads
// @modelcontextprotocol/ext-tasks and the TypeScript SDK v2 client from the npm prefix the gate installed them in
// (scripts/interop/ext_tasks/package.json), connects a Client over stdio or Streamable HTTP, and wraps it in a task
// session. Checks are printed as they happen; `finish` prints the one closing line, `OK: ...` (exit 0) or
// `FAIL: <first reason> (+N more)` (exit 1).
import { readFileSync } from "node:fs";
import path from "node:path";
import { pathToFileURL } from "node:url";

export const MODERN = "2026-07-28";
export const GENERATE_ARGS = { model: "vertex/nano-banana-flash", prompt: "A lighthouse on a cliff at dusk, ext-tasks check" };
const CLIENT_INFO = { name: "interop-ext-tasks", version: "1" };

const failures = [];
export const ok = (what) => console.log(`  ok   ${what}`);
export const fail = (what) => { failures.push(what); console.log(`  FAIL ${what}`); };
export const check = (condition, good, bad) => (condition ? ok(good) : fail(bad));
export const describe = (error) => `${error?.name ?? "Error"}: ${String(error?.message ?? error).replace(/\s+/g, " ").slice(0, 300)}`;

export function finish(summary) {
  if (failures.length) {
    console.log(`FAIL: ${failures[0]}${failures.length > 1 ? ` (+${failures.length - 1} more)` : ""}`);
    process.exit(1);
  }
  console.log(`OK: ${summary}`);
  process.exit(0);
}

// Both packages from the prefix, by file: ext-tasks resolves the client package from the same node_modules, so
// the Client class (and its ProtocolError) is the one instance both sides use.
export async function load(prefix) {
  const modules = path.resolve(prefix, "node_modules/@modelcontextprotocol");
  const version = (name) => JSON.parse(readFileSync(path.join(modules, name, "package.json"), "utf8")).version;
  const from = (rel) => import(pathToFileURL(path.join(modules, rel)).href);
  const sdk = await from("client/dist/index.mjs");
  const { StdioClientTransport } = await from("client/dist/stdio.mjs");
  const tasks = await from("ext-tasks/dist/client/index.js");
  const versions = `@modelcontextprotocol/ext-tasks ${version("ext-tasks")}, @modelcontextprotocol/client ${version("client")}`;
  return { sdk, StdioClientTransport, tasks, versions };
}

// The host-owned request path ext-tasks needs for 2026-07-28 task traffic, which the SDK's own request() rejects
// (`resultType: "task"` is not in its result vocabulary): the request goes out on the client's transport with an id
// of our own, and its response is taken off the transport before the Client sees it.
function rawDispatcher(transport) {
  const pending = new Map();
  let next = 0;
  const deliver = transport.onmessage;
  transport.onmessage = (message, extra) => {
    const waiter = typeof message?.id === "string" ? pending.get(message.id) : undefined;
    if (!waiter) return deliver?.(message, extra);
    pending.delete(message.id);
    waiter.resolve("error" in message ? { kind: "error", error: message.error } : { kind: "result", result: message.result });
  };
  const closed = transport.onclose;
  transport.onclose = () => {
    for (const waiter of pending.values()) waiter.reject(new Error("the connection closed"));
    pending.clear();
    closed?.();
  };
  return (request, options = {}) =>
    new Promise((resolve, reject) => {
      const id = `ext-tasks-${++next}`;
      const timeoutMs = options.context?.requestTimeoutMs ?? 60000;
      const timer = setTimeout(() => settle(reject, new Error(`no answer to ${request.method} in ${timeoutMs} ms`)), timeoutMs);
      const onAbort = () => settle(reject, options.signal.reason ?? new Error("aborted"));
      const settle = (how, value) => {
        clearTimeout(timer);
        options.signal?.removeEventListener("abort", onAbort);
        pending.delete(id);
        how(value);
      };
      if (options.signal?.aborted) return onAbort();
      options.signal?.addEventListener("abort", onAbort, { once: true });
      pending.set(id, { resolve: (value) => settle(resolve, value), reject: (error) => settle(reject, error) });
      // Over HTTP the transport derives MCP-Protocol-Version, Mcp-Method and Mcp-Name (the task id) from the body.
      const sendOptions = { headers: options.context?.headers, requestSignal: options.signal };
      transport.send({ ...request, jsonrpc: "2.0", id }, sendOptions).catch((error) => settle(reject, error));
    });
}

// A connected Client and its task session. `transport` is "stdio" (with command and args) or "http" (with url);
// era is MODERN (negotiated through server/discover, pinned) or "legacy" (initialize, 2025-11-25).
export async function connect(lib, { transport: kind, command, args, url, era, endpointId }) {
  const options = era === MODERN ? { versionNegotiation: { mode: { pin: MODERN } } } : {};
  const client = new lib.sdk.Client(CLIENT_INFO, options);
  const transport =
    kind === "stdio"
      ? new lib.StdioClientTransport({ command, args, env: { ...process.env, QOLABA_SAVE: "off" }, stderr: "ignore" })
      : new lib.sdk.StreamableHTTPClientTransport(new URL(url));
  await client.connect(transport);
  const framing =
    era === MODERN
      ? { rawDispatch: rawDispatcher(transport), v2RequestFraming: { protocolVersion: MODERN, clientInfo: CLIENT_INFO, clientCapabilities: {} } }
      : {};
  const session = lib.tasks.createTaskSessionFromClient(client, { endpointId, ...framing });
  const close = async () => {
    await session.close().catch(() => {});
    await client.close().catch(() => {});
  };
  return { client, session, close };
}

// The execution a task call gave, when it is a task; else an error that says what the server answered instead.
export async function asTask(execution) {
  if (execution.kind === "task") return execution;
  const outcome = await execution.result().catch((error) => ({ status: describe(error) }));
  const text = outcome.result?.content?.find((block) => block.type === "text")?.text ?? outcome.status;
  throw new Error(`generate_image answered at once, no task was created: ${String(text).replace(/\s+/g, " ").slice(0, 200)}`);
}

// The checks every line makes of a tool result: the tool's own result, a generation that succeeded with images.
export function checkGenerated(result, taskId) {
  const structured = result?.structuredContent;
  check(
    structured?.status === "SUCCESS" && structured.images?.length > 0 && !result.isError,
    `result: SUCCESS with ${structured?.images?.length} image(s)`,
    `result: ${JSON.stringify(result)?.slice(0, 200)}`,
  );
  if (taskId) check(structured?.task_id === taskId, "result is the task's generation", `result is task ${structured?.task_id}, not ${taskId}`);
}
