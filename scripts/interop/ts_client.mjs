// The MCP TypeScript SDK's Client + StdioClientTransport against qolaba-mcp: lists the tools, calls list_models
// and generate_image, reads every returned resource_link back with client.readResource. The SDK is loaded from
// the npm prefix given first, so one script drives every pinned SDK version (`node ts_client.mjs PREFIX CMD ARG...`).
// Then spend confirmation against a server that asks above $0.01: answered by elicitation where the SDK has it,
// else refused until the call carries max_cost_usd.
// Ends with one line, `OK: ...` (exit 0) or `FAIL: <first reason> (+N more)` (exit 1).
import { readFileSync } from "node:fs";
import path from "node:path";
import { pathToFileURL } from "node:url";

const [prefix, command, ...args] = process.argv.slice(2);
if (!prefix || !command) {
  console.error("usage: node ts_client.mjs NPM_PREFIX SERVER_COMMAND [ARG...]");
  process.exit(2);
}
const sdkDir = path.resolve(prefix, "node_modules/@modelcontextprotocol/sdk");
const sdkVersion = JSON.parse(readFileSync(path.join(sdkDir, "package.json"), "utf8")).version;
const load = (rel) => import(pathToFileURL(path.join(sdkDir, "dist/esm", rel)).href);
const { Client } = await load("client/index.js");
const { StdioClientTransport } = await load("client/stdio.js");
const types = await load("types.js");
const { LATEST_PROTOCOL_VERSION } = types;

const EXPECTED_TOOLS = ["generate_image", "get_task", "list_models"];
const GENERATE_ARGS = { model: "vertex/nano-banana-flash", prompt: "A lighthouse on a cliff at dusk, interop check", aspect_ratio: "16:9" };
const IMAGE_MAGIC = [["89504e470d0a1a0a", "image/png"], ["ffd8ff", "image/jpeg"], ["52494646", "image/webp"]];
// Content block types each protocol revision defines (what a client of that revision may be sent).
const CONTENT_TYPES_2025_03_26 = ["text", "image", "audio", "resource"];

const failures = [];
const ok = (what) => console.log(`  ok   ${what}`);
const fail = (what) => { failures.push(what); console.log(`  FAIL ${what}`); };
const oneLine = (text, limit = 400) => {
  const flat = String(text).replace(/\s+/g, " ").trim();
  return flat.length <= limit ? flat : `${flat.slice(0, limit - 3)}...`;
};

// Every JSON-RPC message both ways, to say exactly what the server sent when the SDK rejects a result.
const sent = [];
const received = [];
const transport = new StdioClientTransport({ command, args, env: { ...process.env, QOLABA_SAVE: "off" }, stderr: "inherit" });
let handler;
Object.defineProperty(transport, "onmessage", {
  configurable: true,
  get: () => handler && ((message, extra) => { received.push(message); handler(message, extra); }),
  set: (h) => { handler = h; },
});
const originalSend = transport.send.bind(transport);
transport.send = (message, options) => { sent.push(message); return originalSend(message, options); };

// A schema (zod) error from the SDK as `path: message` pairs, plus the offending blocks' types as the server sent them.
function explain(error, method) {
  const issues = Array.isArray(error?.issues) ? error.issues : Array.isArray(error?.errors) ? error.errors : null;
  if (!issues) return `${error?.name ?? "Error"}: ${oneLine(error?.message ?? error)}`;
  const request = [...sent].reverse().find((m) => m.method === method);
  const response = request && received.find((m) => m.id === request.id);
  const parts = issues.slice(0, 4).map((issue) => {
    const at = issue.path.join(".");
    let sentThere = "";
    if (response?.result) {
      const value = issue.path.reduce((node, key) => (node == null ? node : node[key]), response.result);
      if (value && typeof value === "object" && "type" in value) {
        const lacks = legacyProtocol() && !CONTENT_TYPES_2025_03_26.includes(value.type);
        sentThere = ` (server sent type "${value.type}"${lacks ? `, which protocol ${protocol} lacks` : ""})`;
      }
    }
    return `${at || "<root>"}: ${issue.message}${sentThere}`;
  });
  return `result rejected by the SDK's schema: ${parts.join("; ")}${issues.length > 4 ? `; +${issues.length - 4} more issues` : ""}`;
}

async function step(what, method, action) {
  try {
    return await action();
  } catch (error) {
    fail(`${what}: ${explain(error, method)}`);
    if (error?.stack) console.log(oneLine(error.stack, 2000));
    return undefined;
  }
}

function imageKind(bytes) {
  const hex = bytes.subarray(0, 8).toString("hex");
  return IMAGE_MAGIC.find(([magic]) => hex.startsWith(magic))?.[1] ?? null;
}

let protocol; // as the server answered initialize
const legacyProtocol = () => protocol === "2025-03-26" || protocol === "2024-11-05";
const client = new Client({ name: "qolaba-interop-ts", version: "1.0.0" }, { capabilities: {} });
let linksRead = 0;
try {
  console.log(`@modelcontextprotocol/sdk ${sdkVersion} (LATEST_PROTOCOL_VERSION ${LATEST_PROTOCOL_VERSION})`);
  await client.connect(transport);
  const init = sent.find((m) => m.method === "initialize");
  const initAnswer = received.find((m) => init && m.id === init.id);
  protocol = initAnswer?.result?.protocolVersion;
  console.log(`initialize: client sent protocolVersion ${init?.params?.protocolVersion}, server answered ${protocol}`);
  if (init?.params?.protocolVersion !== LATEST_PROTOCOL_VERSION) {
    fail(`initialize sent protocolVersion ${init?.params?.protocolVersion}, not the SDK's LATEST_PROTOCOL_VERSION ${LATEST_PROTOCOL_VERSION}`);
  }
  const legacy = legacyProtocol();

  const tools = await step("tools/list", "tools/list", () => client.listTools());
  if (tools) {
    const names = tools.tools.map((t) => t.name);
    const missing = EXPECTED_TOOLS.filter((t) => !names.includes(t));
    if (missing.length) fail(`tools/list lacks ${missing.join(", ")}`);
    else ok(`tools/list: ${names.join(", ")}`);
  }

  const listed = await step("callTool list_models", "tools/call", () => client.callTool({ name: "list_models", arguments: {} }));
  if (listed) {
    const models = listed.structuredContent?.models ?? [];
    if (listed.isError) fail(`list_models returned an error: ${oneLine(listed.content?.[0]?.text ?? "")}`);
    else if (!models.some((m) => m.id === GENERATE_ARGS.model)) fail(`list_models lacks ${GENERATE_ARGS.model}`);
    else ok(`list_models: ${models.length} models`);
  }

  const result = await step("callTool generate_image", "tools/call", () => client.callTool({ name: "generate_image", arguments: GENERATE_ARGS }));
  if (result) {
    const sc = result.structuredContent;
    const images = sc?.images ?? [];
    const content = result.content ?? [];
    if (result.isError || sc?.status !== "SUCCESS" || !images.length) {
      fail(`generate_image: isError ${result.isError}, status ${sc?.status}, ${images.length} image(s): ${oneLine(content[0]?.text ?? "")}`);
    } else {
      ok(`generate_image: SUCCESS, ${images.length} image(s), content types ${content.map((c) => c.type).join(", ")}`);
    }
    if (legacy) {
      // The SDK's own schema already refused unknown block types; say so plainly for anything it let through.
      const foreign = content.filter((c) => !CONTENT_TYPES_2025_03_26.includes(c.type)).map((c) => c.type);
      if (foreign.length) fail(`generate_image sent content type(s) ${foreign.join(", ")} that protocol ${protocol} lacks`);
    }
    const links = content.filter((c) => c.type === "resource_link");
    const embedded = content.filter((c) => c.type === "resource");
    if (!legacy && links.length < images.length) fail(`generate_image: ${links.length} resource_link(s) for ${images.length} image(s)`);
    for (const block of [...links, ...embedded]) {
      const uri = block.type === "resource_link" ? block.uri : block.resource.uri;
      const read = await step(`readResource ${uri}`, "resources/read", () => client.readResource({ uri }));
      if (!read) continue;
      if (!read.contents?.length) { fail(`readResource ${uri}: no contents`); continue; }
      for (const item of read.contents) {
        if (typeof item.blob !== "string") { fail(`readResource ${uri}: text contents for an image link`); continue; }
        const bytes = Buffer.from(item.blob, "base64");
        const kind = imageKind(bytes);
        if (!kind || (item.mimeType && item.mimeType !== kind)) fail(`readResource ${uri}: ${bytes.length} bytes, detected ${kind}, mimeType ${item.mimeType}`);
        else { ok(`readResource ${uri}: ${bytes.length} bytes of ${kind}`); linksRead += 1; }
      }
    }
  }
} catch (error) {
  fail(`crashed: ${error?.name ?? "Error"}: ${oneLine(error?.message ?? error)}`);
  if (error?.stack) console.log(error.stack);
} finally {
  await client.close().catch(() => {});
}

// Spend confirmation, with a server that asks above $0.01 (every sandbox generation costs more). An SDK with
// elicitation answers the question: accept generates, decline submits nothing. One without it must be refused
// until the call carries max_cost_usd, then succeed.
async function spendConfirmation() {
  const canAsk = typeof types.ElicitRequestSchema !== "undefined";
  const env = { ...process.env, QOLABA_SAVE: "off", QOLABA_CONFIRM_ABOVE_USD: "0.01" };
  const confirming = new StdioClientTransport({ command, args, env, stderr: "inherit" });
  const asker = new Client(
    { name: "qolaba-interop-ts-confirm", version: "1.0.0" },
    { capabilities: canAsk ? { elicitation: {} } : {} },
  );
  const questions = [];
  let answer = "accept";
  if (canAsk) {
    asker.setRequestHandler(types.ElicitRequestSchema, async (request) => {
      questions.push(request.params.message);
      return answer === "accept" ? { action: "accept", content: { approve: true } } : { action: answer };
    });
  }
  const call = (extra) =>
    asker.callTool({ name: "generate_image", arguments: { ...GENERATE_ARGS, prompt: `confirm ${Math.random()}`, ...extra } });
  const said = (result) => oneLine(result?.content?.[0]?.text ?? "", 300);
  try {
    await asker.connect(confirming);
    if (canAsk) {
      const accepted = await step("confirmed generate_image", "tools/call", () => call({}));
      if (accepted?.structuredContent?.status !== "SUCCESS") fail(`accepted confirmation did not generate: ${said(accepted)}`);
      else if (questions.length !== 1 || !/estimated \$0\.03/.test(questions[0])) fail(`confirmation question: ${JSON.stringify(questions)}`);
      else ok(`elicitation accepted: "${oneLine(questions[0], 120)}" -> SUCCESS`);
      answer = "decline";
      const declined = await step("declined generate_image", "tools/call", () => call({}));
      if (!declined?.isError || !/declined/.test(said(declined))) fail(`declined confirmation: ${said(declined)}`);
      else ok("elicitation declined -> refused, nothing submitted");
    } else {
      const refused = await step("unconfirmable generate_image", "tools/call", () => call({}));
      if (!refused?.isError || !/max_cost_usd/.test(said(refused))) fail(`no-elicitation call not refused: ${said(refused)}`);
      else ok("no elicitation -> refused, asks for max_cost_usd");
      const vouched = await step("generate_image with max_cost_usd", "tools/call", () => call({ max_cost_usd: 0.03 }));
      if (vouched?.structuredContent?.status !== "SUCCESS") fail(`max_cost_usd call did not generate: ${said(vouched)}`);
      else ok("max_cost_usd 0.03 -> SUCCESS");
    }
  } catch (error) {
    fail(`spend confirmation crashed: ${error?.name ?? "Error"}: ${oneLine(error?.message ?? error)}`);
  } finally {
    await asker.close().catch(() => {});
  }
}
await spendConfirmation();

if (failures.length) {
  const more = failures.length > 1 ? ` (+${failures.length - 1} more, see log)` : "";
  console.log(`FAIL: ${oneLine(failures[0], 600)}${more}`);
  process.exit(1);
}
console.log(`OK: ${linksRead} resource(s) read back`);
process.exit(0);
