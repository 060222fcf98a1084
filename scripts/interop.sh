#!/usr/bin/env bash
# Interop gate: MCP clients and schema converters written elsewhere drive `qolaba-mcp --sandbox` over stdio, each
# pinned and installed in its own environment under .interop/ (ignored by git), one script per client in
# scripts/interop/. Each lists the tools, calls list_models and generate_image, and reads back every resource_link
# it was given; see scripts/interop/*.{py,mjs,sh} for what each one checks. ts-sdk-oauth serves it over HTTP with
# OAuth instead, and signs in from a bare 401 against a local authorization server (scripts/interop/ts_oauth_client.mjs).
# The tasks lines create generate_image as a task and follow it to its result; ext-tasks-recover starts its own sandbox
# and HTTP server, kills the server with SIGKILL mid-task and restarts it (scripts/interop/ext_tasks_recover.sh).
# claude-code drives Claude Code's interactive UI in a pseudo-terminal against a scripted stand-in for the Messages API
# on loopback, and checks on the wire (scripts/interop/wire_relay.py) that it runs generate_image as a task.
#
#   bash scripts/interop.sh        install what is missing or changed, run every client, print one line per client
#   bash scripts/interop.sh lock   re-lock scripts/interop/requirements/*.txt from the pins in *.in
#
# Exits 1 when any client FAILs, after all have run. A package registry that cannot be reached is said so plainly:
# SKIPPED for the clients it would have installed, or FAIL when CI=true. Without node/npm the Node clients are
# SKIPPED. The MCP Apps host (the gallery app in headless Chromium, tests/browser) needs a Chromium on PATH: without
# one it is SKIPPED, or FAIL when CI=true. INTEROP_SERVER overrides the server command (default:
# .venv/bin/qolaba-mcp --sandbox); INTEROP_JOBS the number of clients run at once (default 3: they mostly wait on the
# server).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
HERE=scripts/interop
# shellcheck source=interop/versions.env
. "$HERE/versions.env"

STATE=.interop
LOGS=$STATE/logs
STATUS=$STATE/status
JOBS=${INTEROP_JOBS:-3}
CLIENT_TIMEOUT=${INTEROP_CLIENT_TIMEOUT:-240}
read -r -a SERVER <<<"${INTEROP_SERVER:-$ROOT/.venv/bin/qolaba-mcp --sandbox}"
PY_ENVS=(pydantic-ai pydantic-ai-1 langchain openai-agents fastmcp fastmcp-tasks anthropic converters)
export QOLABA_SAVE=off

# uv: its cache lives with the environments; it uses the system's CA store as pip does, never downloads a Python,
# and takes pip's primary index when one is configured. pip's extra indexes (local mirrors) are left out on purpose:
# uv takes a package from the first index that has it, and a local mirror's older releases would shadow the pins.
export UV_CACHE_DIR=$ROOT/$STATE/uv-cache UV_NATIVE_TLS=1 UV_PYTHON_DOWNLOADS=never UV_NO_PROGRESS=1
primary_index=${PIP_INDEX_URL:-$(python3 -m pip config get global.index-url 2>/dev/null || true)}
[ -n "$primary_index" ] && export UV_DEFAULT_INDEX=$primary_index
PYPI_SIMPLE=${primary_index:-https://pypi.org/simple}

in_ci() { [ "${CI:-}" = "true" ] || [ "${CI:-}" = "1" ]; }
now() { date +%s; }
say() { echo "interop: $*"; }

# ---- installs, each cached by a stamp keyed on its pins --------------------------------------------------------------

stamp_ok() { [ -f "$1/.interop-stamp" ] && [ "$(cat "$1/.interop-stamp")" = "$2" ]; }

# Each registry is asked once it is needed (a stamp is stale), and again after a failed attempt: a registry that
# cannot be reached ends the install at once (npm alone would spend minutes retrying), a registry that answers
# makes the failure the install's own (a bad pin, a broken package), with its log.
npm_reachable() { timeout 30 npm ping --fetch-retries=0 >/dev/null 2>&1; }
pypi_reachable() {
    timeout 30 python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1].rstrip("/") + "/uv/", timeout=20)' \
        "$PYPI_SIMPLE" >/dev/null 2>&1
}
unreachable() { echo "unreachable the $2 registry could not be reached" >"$STATUS/$1"; }

# try_install ENV REGISTRY REACHABLE LOG COMMAND...: up to 3 attempts; records ok, unreachable or failed.
try_install() {
    local env=$1 registry=$2 reachable=$3 log=$4 attempt
    shift 4
    "$reachable" || { unreachable "$env" "$registry"; return 1; }
    for attempt in 1 2 3; do
        if "$@" >>"$log" 2>&1; then echo ok >"$STATUS/$env"; return 0; fi
        echo "interop: attempt $attempt of 3 failed: $*" >>"$log"
        "$reachable" || { unreachable "$env" "$registry"; return 1; }
        [ $attempt -lt 3 ] && sleep $((attempt * 5))
    done
    local last
    last=$(grep -v -e '^interop: ' -e '^\s*$' "$log" | grep -i -m1 -e error -e 'no solution' -e 'not found' | cut -c1-200)
    echo "failed install failed although the $registry registry answers: ${last:-see $log} (log: $log)" >"$STATUS/$env"
    return 1
}

npm_install() { # prefix, spec, file that must exist after
    npm install --no-audit --no-fund --loglevel=error --prefix "$1" "$2" && [ -e "$1/$3" ]
}

install_npm() { # env, package@version, file that must exist after
    local env=$1 spec=$2 prefix=$STATE/$1 key
    key="$spec node $(node --version)"
    if stamp_ok "$prefix" "$key" && [ -e "$prefix/$3" ]; then echo ok >"$STATUS/$env"; return; fi
    rm -rf "$prefix" && mkdir -p "$prefix"
    try_install "$env" npm npm_reachable "$LOGS/install-$env.log" npm_install "$prefix" "$spec" "$3" &&
        echo "$key" >"$prefix/.interop-stamp"
}

install_npm_lock() { # env, folder holding package.json and package-lock.json (exact pins), file that must exist after
    local env=$1 dir=$2 prefix=$STATE/$1 key
    key="$(cat "$dir/package.json" "$dir/package-lock.json" | sha256sum | cut -c1-64) node $(node --version)"
    if stamp_ok "$prefix" "$key" && [ -e "$prefix/$3" ]; then echo ok >"$STATUS/$env"; return; fi
    rm -rf "$prefix" && mkdir -p "$prefix" && cp "$dir/package.json" "$dir/package-lock.json" "$prefix/"
    try_install "$env" npm npm_reachable "$LOGS/install-$env.log" npm ci --no-audit --no-fund --loglevel=error --prefix "$prefix" &&
        echo "$key" >"$prefix/.interop-stamp"
}

# The MCP Apps host page: scripts/apps_host/build.sh installs its pinned packages (npm ci, cached by its own stamp)
# and bundles it; the registry is asked only when that install is missing or stale.
install_apps_host() {
    local prefix=$STATE/apps-host log=$LOGS/install-apps-host.log
    if ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null && ! command -v google-chrome >/dev/null; then
        echo "nobrowser no Chromium on PATH (chromium, chromium-browser or google-chrome): install Debian's chromium" >"$STATUS/apps-host"
        return
    fi
    if bash scripts/apps_host/build.sh --no-install "$prefix" >>"$log" 2>&1; then echo ok >"$STATUS/apps-host"; return; fi
    try_install apps-host npm npm_reachable "$log" bash scripts/apps_host/build.sh "$prefix"
}

# The OAuth client: the TypeScript SDK above, and the authorization server it signs in with (tests/oauth: the pinned
# oidc-provider, npm ci from its lock); its status is the SDK's when that failed.
install_oauth() {
    local log=$LOGS/install-ts-sdk-oauth.log
    if [ "$(cut -d' ' -f1 "$STATUS/ts-sdk" 2>/dev/null)" != ok ]; then cp "$STATUS/ts-sdk" "$STATUS/ts-sdk-oauth"; return; fi
    if [ -d tests/oauth/node_modules/oidc-provider ]; then echo ok >"$STATUS/ts-sdk-oauth"; return; fi
    try_install ts-sdk-oauth npm npm_reachable "$log" npm ci --no-audit --no-fund --loglevel=error --prefix tests/oauth
}

install_uv() { # into a venv of its own, with pip (and so pip's configuration)
    local prefix=$STATE/uv key
    key="uv==$UV_VERSION $(python3 -V 2>&1)"
    if stamp_ok "$prefix" "$key" && [ -x "$prefix/bin/uv" ]; then echo ok >"$STATUS/uv"; return 0; fi
    rm -rf "$prefix"
    if ! python3 -m venv "$prefix" >>"$LOGS/install-uv.log" 2>&1; then
        echo "failed python3 -m venv failed (see $LOGS/install-uv.log)" >"$STATUS/uv"
        return 1
    fi
    try_install uv PyPI pypi_reachable "$LOGS/install-uv.log" \
        "$prefix/bin/python" -m pip install --quiet --disable-pip-version-check "uv==$UV_VERSION" &&
        echo "$key" >"$prefix/.interop-stamp"
}

install_py() { # env: a venv holding exactly requirements/<env>.txt
    local env=$1 prefix=$STATE/$1 lock=$HERE/requirements/$1.txt key
    key="$(sha256sum "$lock" | cut -c1-64) uv==$UV_VERSION $(python3 -V 2>&1)"
    if stamp_ok "$prefix" "$key" && [ -x "$prefix/bin/python" ]; then echo ok >"$STATUS/$env"; return; fi
    rm -rf "$prefix"
    python3 -m venv --without-pip "$prefix" >>"$LOGS/install-$env.log" 2>&1
    try_install "$env" PyPI pypi_reachable "$LOGS/install-$env.log" \
        "$STATE/uv/bin/uv" pip sync --quiet --python "$prefix/bin/python" "$lock" &&
        echo "$key" >"$prefix/.interop-stamp"
}

install_python_envs() {
    if ! install_uv; then # every Python client needs uv: they fail (or skip) for its reason
        local env
        for env in "${PY_ENVS[@]}"; do cp "$STATUS/uv" "$STATUS/$env"; done
        return
    fi
    local env
    for env in "${PY_ENVS[@]}"; do install_py "$env" & done
    wait
}

relock() {
    mkdir -p "$LOGS" "$STATUS"
    install_uv || { say "could not install uv==$UV_VERSION: $(cut -d' ' -f2- "$STATUS/uv")"; exit 1; }
    local in
    for in in "$HERE"/requirements/*.in; do
        "$STATE/uv/bin/uv" pip compile --quiet --python-version 3.11 --universal "$in" -o "${in%.in}.txt" || exit 1
        say "locked ${in%.in}.txt"
    done
}

if [ "${1:-}" = "lock" ]; then relock; exit 0; fi

# ---- run ----------------------------------------------------------------------------------------------------------

started=$(now)
rm -rf "$LOGS" "$STATUS"
mkdir -p "$LOGS" "$STATUS" "$STATE/results"
rm -f "$STATE"/results/*
# The Inspector used to be installed in .interop/ itself; it now has its own environment like every client.
rm -rf "$STATE/node_modules" "$STATE/package.json" "$STATE/package-lock.json"

have_node=1
command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 || have_node=0
say "installing what is missing or changed under $STATE/ (logs in $LOGS/)"
if [ $have_node = 1 ]; then
    install_npm inspector "@modelcontextprotocol/inspector@$INSPECTOR_VERSION" node_modules/.bin/mcp-inspector &
    { install_npm ts-sdk "@modelcontextprotocol/sdk@$TS_SDK_VERSION" node_modules/@modelcontextprotocol/sdk/package.json
      install_oauth; } &
    install_npm ts-sdk-1.11 "@modelcontextprotocol/sdk@$TS_SDK_LEGACY_VERSION" node_modules/@modelcontextprotocol/sdk/package.json &
    install_npm_lock ext-tasks "$HERE/ext_tasks" node_modules/@modelcontextprotocol/ext-tasks/package.json &
    install_npm_lock hosts "$HERE/hosts" node_modules/@anthropic-ai/claude-code-linux-x64/claude &
    install_apps_host &
else
    for env in inspector ts-sdk ts-sdk-oauth ts-sdk-1.11 ext-tasks hosts apps-host; do echo "nonode node/npm not found on this machine" >"$STATUS/$env"; done
fi
install_python_envs &
wait
installed=$(now)
say "installs ready in $((installed - started)) s"

# The version a requirements/<env>.in pins for a package, for the table.
pin() { sed -nE "s/^$2(\[[^]]*\])?==([^ ;#]+).*/\2/p" "$HERE/requirements/$1.in" | head -1; }

# The version a folder's package.json pins for a package, for the table.
npm_pin() { sed -nE "s|^ *\"$2\": \"([^\"]+)\".*|\1|p" "$1/package.json" | head -1; }
EXT_TASKS="@modelcontextprotocol/ext-tasks $(npm_pin "$HERE/ext_tasks" @modelcontextprotocol/ext-tasks)"
CLAUDE_CODE="Claude Code $(npm_pin "$HERE/hosts" @anthropic-ai/claude-code-linux-x64)"
INSPECTOR2="@modelcontextprotocol/inspector $(npm_pin "$HERE/hosts" @modelcontextprotocol/inspector)"

# One row per client: name | version shown | environment | command (from the repository root; the server follows).
ROWS=(
    "mcp-inspector|@modelcontextprotocol/inspector $INSPECTOR_VERSION|inspector|bash $HERE/inspector_client.sh $STATE/inspector"
    "ts-sdk|@modelcontextprotocol/sdk $TS_SDK_VERSION|ts-sdk|node $HERE/ts_client.mjs $STATE/ts-sdk"
    "ts-sdk-oauth|@modelcontextprotocol/sdk $TS_SDK_VERSION (OAuth)|ts-sdk-oauth|node $HERE/ts_oauth_client.mjs $STATE/ts-sdk"
    "ts-sdk-1.11|@modelcontextprotocol/sdk $TS_SDK_LEGACY_VERSION|ts-sdk-1.11|node $HERE/ts_client.mjs $STATE/ts-sdk-1.11"
    "ts-sdk-tasks|@modelcontextprotocol/sdk $TS_SDK_VERSION (tasks, 2025-11-25)|ts-sdk|node $HERE/ts_tasks_client.mjs $STATE/ts-sdk"
    "ext-tasks|$EXT_TASKS (tasks, 2026-07-28)|ext-tasks|node $HERE/ext_tasks_client.mjs $STATE/ext-tasks 2026-07-28"
    "ext-tasks-2025|$EXT_TASKS (tasks, 2025-11-25)|ext-tasks|node $HERE/ext_tasks_client.mjs $STATE/ext-tasks 2025-11-25"
    "ext-tasks-recover|$EXT_TASKS (kill -9, restart)|ext-tasks|bash $HERE/ext_tasks_recover.sh $STATE/ext-tasks"
    "claude-code|$CLAUDE_CODE (tasks, 2026-07-28)|hosts|python3 $HERE/claude_code_client.py $STATE/hosts"
    "mcp-inspector-2|$INSPECTOR2 (tasks, 2026-07-28)|hosts|python3 $HERE/inspector2_client.py $STATE/hosts"
    "pydantic-ai|pydantic-ai-slim $(pin pydantic-ai pydantic-ai-slim)|pydantic-ai|$STATE/pydantic-ai/bin/python $HERE/pydantic_ai_client.py"
    "pydantic-ai-1|pydantic-ai-slim $(pin pydantic-ai-1 pydantic-ai-slim)|pydantic-ai-1|$STATE/pydantic-ai-1/bin/python $HERE/pydantic_ai_client.py"
    "langchain|langchain-mcp-adapters $(pin langchain langchain-mcp-adapters)|langchain|$STATE/langchain/bin/python $HERE/langchain_client.py"
    "openai-agents|openai-agents $(pin openai-agents openai-agents)|openai-agents|$STATE/openai-agents/bin/python $HERE/openai_agents_client.py"
    "strict-fill|openai-agents $(pin openai-agents openai-agents), jsonschema $(pin openai-agents jsonschema)|openai-agents|$STATE/openai-agents/bin/python $HERE/strict_fill_client.py"
    "fastmcp|fastmcp $(pin fastmcp fastmcp)|fastmcp|$STATE/fastmcp/bin/python $HERE/fastmcp_client.py"
    "fastmcp-tasks|fastmcp-tasks $(pin fastmcp-tasks fastmcp-tasks) (tasks, 2026-07-28)|fastmcp-tasks|$STATE/fastmcp-tasks/bin/python $HERE/fastmcp_tasks_client.py"
    "anthropic-mcp-helper|anthropic $(pin anthropic anthropic)|anthropic|$STATE/anthropic/bin/python $HERE/anthropic_mcp_client.py"
    "google-genai|google-genai $(pin converters google-genai)|converters|$STATE/converters/bin/python $HERE/schema_converters.py google-genai"
    "json-schema|jsonschema $(pin converters jsonschema) (2020-12)|converters|$STATE/converters/bin/python $HERE/schema_converters.py json-schema"
    "mcp-apps-host|@modelcontextprotocol/ext-apps $(npm_pin scripts/apps_host @modelcontextprotocol/ext-apps)|apps-host|bash $HERE/apps_host_client.sh $STATE/apps-host"
)

# A result file per client: name TAB version TAB seconds TAB OK|FAIL|SKIPPED TAB detail.
record() { printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "${took:--}" "$3" "$4" >"$STATE/results/$1"; }

run_client() { # name, version, command...
    local name=$1 version=$2 log=$LOGS/$1.log t0 rc line
    shift 2
    t0=$(now)
    timeout --kill-after=10 "$CLIENT_TIMEOUT" "$@" "${SERVER[@]}" </dev/null >"$log" 2>&1
    rc=$?
    line=$(grep -E '^(OK|FAIL): ' "$log" | tail -1)
    local took="$(($(now) - t0))s"
    if [ $rc -eq 0 ] && [[ $line == OK:* ]]; then
        record "$name" "$version" OK "${line#OK: }"
    elif [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
        record "$name" "$version" FAIL "timed out after ${CLIENT_TIMEOUT} s; last output: $(grep -v '^\s*$' "$log" | tail -1 | cut -c1-200)"
    elif [[ $line == FAIL:* ]]; then
        record "$name" "$version" FAIL "${line#FAIL: }"
    else
        record "$name" "$version" FAIL "exited $rc without a verdict; last output: $(grep -v '^\s*$' "$log" | tail -1 | cut -c1-300)"
    fi
}

# The server must start at all, or every client would fail with a closed connection and no reason.
if ! timeout 60 "${SERVER[@]}" </dev/null >/dev/null 2>"$LOGS/server-preflight.log"; then
    say "FAIL - the server does not start: $(grep -v '^\s*$' "$LOGS/server-preflight.log" | tail -1)"
    say "(${SERVER[*]}; full output in $LOGS/server-preflight.log)"
    exit 1
fi

for row in "${ROWS[@]}"; do
    IFS='|' read -r name version env command <<<"$row"
    read -r state reason <"$STATUS/$env" 2>/dev/null || { state=failed; reason="its install recorded no result (see $LOGS/)"; }
    case $state in
        ok) ;;
        unreachable)
            if in_ci; then record "$name" "$version" FAIL "$reason (CI=true: a failure, not a skip)"
            else record "$name" "$version" SKIPPED "$reason"; fi
            continue ;;
        nonode) record "$name" "$version" SKIPPED "$reason"; continue ;;
        nobrowser)
            if in_ci; then record "$name" "$version" FAIL "$reason (CI=true: a failure, not a skip)"
            else record "$name" "$version" SKIPPED "$reason"; fi
            continue ;;
        *) record "$name" "$version" FAIL "$reason"; continue ;;
    esac
    while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n; done
    read -r -a argv <<<"$command"
    run_client "$name" "$version" "${argv[@]}" &
done
wait

say "$(printf '%-20s %-42s %5s  %s' client version time result)"
failed=0
for row in "${ROWS[@]}"; do
    IFS='|' read -r name _ <<<"$row"
    IFS=$'\t' read -r name version seconds result detail <"$STATE/results/$name"
    [ "$result" = FAIL ] && failed=1
    say "$(printf '%-20s %-42s %5s  %s' "$name" "$version" "$seconds" "$result - $detail")"
done
say "total $(($(now) - started)) s (installs $((installed - started)) s); per-client logs in $LOGS/"
if [ $failed = 1 ]; then
    say "FAIL - at least one client is incompatible with qolaba-mcp (reasons above)"
    exit 1
fi
say "OK"
