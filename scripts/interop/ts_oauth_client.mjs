// The MCP TypeScript SDK's own OAuth client support (ClientCredentialsProvider + StreamableHTTPClientTransport)
// against qolaba-mcp served over HTTP with QOLABA_MCP_OAUTH_ISSUER, the issuer being oidc-provider on loopback
// (tests/oauth/issuer.mjs). The client starts with no token: from the bare 401 it reads the protected-resource
// metadata, discovers the issuer, gets a token for the resource, and retries; then lists the tools and calls
// list_models and generate_image. A second client whose token lacks qolaba:generate must be refused that call.
//   node ts_oauth_client.mjs NPM_PREFIX SERVER_COMMAND [ARG...]   (the server command gets --transport http --port)
// Ends with one line, `OK: ...` (exit 0) or `FAIL: <first reason> (+N more)` (exit 1).
import { spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import net from "node:net";
import path from "node:path";
import readline from "node:readline";
import { pathToFileURL } from "node:url";

const [prefix, command, ...args] = process.argv.slice(2);
const sdkDir = path.resolve(prefix, "node_modules/@modelcontextprotocol/sdk");
const sdkVersion = JSON.parse(readFileSync(path.join(sdkDir, "package.json"), "utf8")).version;
const load = (rel) => import(pathToFileURL(path.join(sdkDir, "dist/esm", rel)).href);
const { Client } = await load("client/index.js");
const { StreamableHTTPClientTransport } = await load("client/streamableHttp.js");
const { ClientCredentialsProvider } = await load("client/auth-extensions.js");

const failures = [];
const ok = (what) => console.log(`  ok   ${what}`);
const fail = (what) => { failures.push(what); console.log(`  FAIL ${what}`); };
const children = [];
const finish = (code) => { for (const child of children) child.kill(); process.exit(code); };

const freePort = () => new Promise((resolve) => {
  const server = net.createServer().listen(0, "127.0.0.1", () => { const { port } = server.address(); server.close(() => resolve(port)); });
});
const port = await freePort();
const resource = `http://127.0.0.1:${port}/mcp`;

const issuerProc = spawn("node", [path.resolve("tests/oauth/issuer.mjs"), resource], { stdio: ["ignore", "pipe", "ignore"] });
children.push(issuerProc);
const issuer = JSON.parse(await new Promise((resolve) => readline.createInterface({ input: issuerProc.stdout }).once("line", resolve))).issuer;

const env = { ...process.env, QOLABA_SAVE: "off", QOLABA_MCP_OAUTH_ISSUER: issuer, QOLABA_MCP_PUBLIC_URL: resource };
const server = spawn(command, [...args, "--transport", "http", "--port", String(port)], { env, stdio: ["ignore", "ignore", "inherit"] });
children.push(server);
for (let i = 0; i < 200; i++) {
  try { await fetch(`http://127.0.0.1:${port}/`); break; } catch { await new Promise((r) => setTimeout(r, 100)); }
}

const statuses = [];
const watching = (url, init) => fetch(url, init).then((response) => { statuses.push(`${init?.method ?? "GET"} ${new URL(url).pathname} ${response.status}`); return response; });

async function connect(clientId, scope) {
  const authProvider = new ClientCredentialsProvider({ clientId, clientSecret: `${clientId}-secret`, expectedIssuer: issuer, scope });
  const transport = new StreamableHTTPClientTransport(new URL(resource), { authProvider, fetch: watching });
  const client = new Client({ name: "interop-ts-oauth", version: "1" });
  await client.connect(transport);
  return client;
}

try {
  const client = await connect("alice", "qolaba:read qolaba:generate");
  const first = statuses.find((s) => s.includes("/mcp"));
  if (first?.endsWith(" 401")) ok(`a bare request got 401 (${first}), then the SDK signed in`);
  else fail(`the first request to /mcp was not refused 401: ${first}`);
  if (statuses.some((s) => s.includes("/.well-known/oauth-protected-resource"))) ok("read the protected-resource metadata");
  else fail(`never read the protected-resource metadata: ${statuses.join(", ")}`);
  const tools = (await client.listTools()).tools.map((t) => t.name);
  if (tools.includes("generate_image")) ok(`tools: ${tools.join(", ")}`); else fail(`no generate_image in ${tools}`);
  const models = await client.callTool({ name: "list_models", arguments: {} });
  if (!models.isError) ok("list_models"); else fail("list_models failed");
  const made = await client.callTool({ name: "generate_image", arguments: { model: "vertex/nano-banana-flash", prompt: "An oauth lighthouse" } });
  if (!made.isError && made.structuredContent?.status === "SUCCESS") ok(`generate_image ${made.structuredContent.task_id}`);
  else fail(`generate_image: ${JSON.stringify(made.content).slice(0, 300)}`);
  await client.close();
} catch (error) {
  fail(`signing in or calling as alice: ${error?.message ?? error}`);
}

try {
  const reader = await connect("reader", "qolaba:read");
  try {
    const made = await reader.callTool({ name: "generate_image", arguments: { model: "vertex/nano-banana-flash", prompt: "No" } });
    if (made.isError) ok("a read-only token's generate_image is an error"); else fail("a read-only token generated an image");
  } catch (error) {
    ok(`a read-only token's generate_image is refused: ${String(error?.message ?? error).slice(0, 120)}`);
  }
  await reader.close();
} catch (error) {
  fail(`signing in as reader: ${error?.message ?? error}`);
}

if (failures.length) {
  console.log(`FAIL: ${failures[0]}${failures.length > 1 ? ` (+${failures.length - 1} more)` : ""}`);
  finish(1);
}
console.log(`OK: @modelcontextprotocol/sdk ${sdkVersion} signed in from a bare 401 (client credentials, oidc-provider), listed tools, generated; a read-only token was refused`);
finish(0);
