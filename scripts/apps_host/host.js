// The host side of MCP Apps for the browser tests (tests/browser): the app's HTML in a sandboxed iframe, an
// AppBridge from @modelcontextprotocol/ext-apps speaking to it over postMessage, the app's tools/call requests
// forwarded to Python (window.qolabaCallTool, which the test exposes and which calls the real qolaba-mcp server),
// and every request the app makes of the host kept in host.log for the tests to read. A test chooses what this host
// offers (its hostCapabilities: a capability left out has no handler, so the bridge answers "method not found"), its
// context (toolInfo or none, theme, styles, display modes, safe area insets, container size). Bundled by build.sh.
import { AppBridge, PostMessageTransport } from "@modelcontextprotocol/ext-apps/app-bridge";

const HOST_INFO = { name: "qolaba-mcp-browser-tests", version: "1.0.0" };
const CAPABILITIES = { serverTools: {}, openLinks: {}, downloadFile: {}, logging: {}, message: { text: {} } };
const FULLSCREEN = { width: 720, height: 860 };

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

// The frame's size as the host context says: a fixed width (or a maximum), and in fullscreen a fixed height too.
function fitFrame() {
  const size = hostContext.containerDimensions ?? {};
  iframe.style.width = `${size.width ?? size.maxWidth ?? 720}px`;
  if (size.height != null) iframe.style.height = `${size.height}px`;
}

// Changes some fields of the host context; the bridge tells the app which ones changed. The host page follows the
// theme too, as the chat around an app would.
function setHostContext(changes) {
  hostContext = { ...hostContext, ...changes };
  document.documentElement.dataset.theme = hostContext.theme ?? "light";
  if (iframe) fitFrame();
  bridge?.setHostContext(hostContext);
}

// Mounts the app and resolves once it has sent ui/notifications/initialized.
async function mount({ html, meta = {}, context = {}, capabilities = CAPABILITIES }) {
  const inline = context.containerDimensions ?? { width: 720, maxHeight: 2000 };
  setHostContext(context);
  iframe = document.createElement("iframe");
  iframe.id = "app";
  iframe.name = "app";
  iframe.title = "MCP App";
  // The strictest sandbox a host may give: scripts only (no forms, popups or modals), in an opaque origin that
  // reaches nothing of the host page. An app that works here works in hosts that allow more.
  iframe.setAttribute("sandbox", "allow-scripts");
  document.getElementById("apps").append(iframe);
  fitFrame();

  bridge = new AppBridge(null, HOST_INFO, capabilities, { hostContext });
  if (capabilities.serverTools) {
    bridge.oncalltool = async (params) => {
      record("tools/call", params);
      return await window.qolabaCallTool(params.name, params.arguments ?? {});
    };
  }
  if (capabilities.openLinks) bridge.onopenlink = async (params) => (record("ui/open-link", params), {});
  if (capabilities.downloadFile) bridge.ondownloadfile = async (params) => (record("ui/download-file", params), {});
  if (capabilities.message) bridge.onmessage = async (params) => (record("ui/message", params), {});
  if (capabilities.updateModelContext) {
    bridge.onupdatemodelcontext = async (params) => (record("ui/update-model-context", params), {});
  }
  // A mode the host lists is granted (fullscreen: a fixed frame; inline: back to the width it had), else refused
  // by answering with the mode it keeps.
  bridge.onrequestdisplaymode = async (params) => {
    record("ui/request-display-mode", params);
    if (!(hostContext.availableDisplayModes ?? []).includes(params.mode)) return { mode: hostContext.displayMode };
    const size = params.mode === "fullscreen" ? FULLSCREEN : inline;
    if (params.mode !== "fullscreen") iframe.style.removeProperty("height");
    setHostContext({ displayMode: params.mode, containerDimensions: size });
    return { mode: params.mode };
  };
  bridge.addEventListener("loggingmessage", (params) => record("notifications/message", params));
  bridge.addEventListener("sizechange", ({ height }) => {
    if (height != null && hostContext.displayMode !== "fullscreen") iframe.style.height = `${Math.ceil(height)}px`;
  });
  const initialized = new Promise((resolve) => bridge.addEventListener("initialized", resolve));

  // Connected before the app's document exists, so its ui/initialize cannot be missed.
  await bridge.connect(new PostMessageTransport(iframe.contentWindow, iframe.contentWindow));
  iframe.srcdoc = withPolicy(html, contentSecurityPolicy(meta.ui?.csp));
  await initialized;
  return { app: bridge.getAppVersion(), capabilities: bridge.getAppCapabilities() };
}

// For the bench: the time (ms since the epoch, as the app's frame can tell it too) just before the result is sent.
async function timedToolResult(result) {
  const sent = performance.timeOrigin + performance.now();
  await bridge.sendToolResult(result);
  return sent;
}

window.host = {
  log,
  mount,
  toolInput: (args) => bridge.sendToolInput({ arguments: args }),
  toolResult: (result) => bridge.sendToolResult(result),
  timedToolResult,
  setHostContext,
};
