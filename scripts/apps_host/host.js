// The host side of MCP Apps for the browser tests (tests/browser): the app's HTML in a sandboxed iframe, an
// AppBridge from @modelcontextprotocol/ext-apps speaking to it over postMessage, the app's tools/call requests
// forwarded to Python (window.qolabaCallTool, which the test exposes and which calls the real qolaba-mcp server),
// and every request the app makes of the host kept in host.log for the tests to read. Bundled by build.sh.
import { AppBridge, PostMessageTransport } from "@modelcontextprotocol/ext-apps/app-bridge";

const HOST_INFO = { name: "qolaba-mcp-browser-tests", version: "1.0.0" };
const CAPABILITIES = { serverTools: {}, openLinks: {}, downloadFile: {}, logging: {}, message: { text: {} } };

const log = [];
let bridge = null;
let iframe = null;
let hostContext = {};

// The policy for a resource that declares no domains, as the MCP Apps spec has it: inline script and style, images,
// media and fonts from data: (and blob:) URLs, no network, no frames, no base URI. Declared domains widen it.
function contentSecurityPolicy(csp = {}) {
  const resources = (csp.resourceDomains ?? []).join(" ");
  const only = (domains) => (domains?.length ? domains.join(" ") : "'none'");
  return [
    "default-src 'none'",
    `script-src 'unsafe-inline' ${resources}`,
    `style-src 'unsafe-inline' ${resources}`,
    `img-src data: blob: ${resources}`,
    `media-src data: blob: ${resources}`,
    `font-src data: ${resources}`,
    `connect-src ${only(csp.connectDomains)}`,
    `frame-src ${only(csp.frameDomains)}`,
    `base-uri ${only(csp.baseUriDomains)}`,
  ].join("; ");
}

function withPolicy(html, policy) {
  const meta = `<meta http-equiv="Content-Security-Policy" content="${policy.replaceAll('"', "&quot;")}">`;
  const head = /<head(\s[^>]*)?>/i.exec(html);
  if (head) return html.slice(0, head.index + head[0].length) + meta + html.slice(head.index + head[0].length);
  return meta + html;
}

function record(method, params) {
  log.push({ method, params: JSON.parse(JSON.stringify(params ?? {})) });
}

// Changes some fields of the host context; the bridge tells the app which ones changed. The host page follows the
// theme too, as the chat around an app would.
function setHostContext(changes) {
  hostContext = { ...hostContext, ...changes };
  document.documentElement.dataset.theme = hostContext.theme ?? "light";
  bridge?.setHostContext(hostContext);
}

// Mounts the app and resolves once it has sent ui/notifications/initialized.
async function mount({ html, meta = {}, context = {} }) {
  setHostContext(context);
  iframe = document.createElement("iframe");
  iframe.id = "app";
  iframe.name = "app";
  iframe.title = "MCP App";
  // The strictest sandbox a host may give: scripts only (no forms, popups or modals), in an opaque origin that
  // reaches nothing of the host page. An app that works here works in hosts that allow more.
  iframe.setAttribute("sandbox", "allow-scripts");
  document.getElementById("apps").append(iframe);

  bridge = new AppBridge(null, HOST_INFO, CAPABILITIES, { hostContext });
  bridge.oncalltool = async (params) => {
    record("tools/call", params);
    return await window.qolabaCallTool(params.name, params.arguments ?? {});
  };
  bridge.onopenlink = async (params) => (record("ui/open-link", params), {});
  bridge.ondownloadfile = async (params) => (record("ui/download-file", params), {});
  bridge.onmessage = async (params) => (record("ui/message", params), {});
  bridge.onupdatemodelcontext = async (params) => (record("ui/update-model-context", params), {});
  bridge.addEventListener("loggingmessage", (params) => record("notifications/message", params));
  bridge.addEventListener("sizechange", ({ height }) => {
    if (height != null) iframe.style.height = `${Math.ceil(height)}px`;
  });
  const initialized = new Promise((resolve) => bridge.addEventListener("initialized", resolve));

  // Connected before the app's document exists, so its ui/initialize cannot be missed.
  await bridge.connect(new PostMessageTransport(iframe.contentWindow, iframe.contentWindow));
  iframe.srcdoc = withPolicy(html, contentSecurityPolicy(meta.ui?.csp));
  await initialized;
  return { app: bridge.getAppVersion(), capabilities: bridge.getAppCapabilities() };
}

window.host = {
  log,
  mount,
  toolInput: (args) => bridge.sendToolInput({ arguments: args }),
  toolResult: (result) => bridge.sendToolResult(result),
  setHostContext,
};
