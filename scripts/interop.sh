#!/usr/bin/env bash
# Interop with a client written elsewhere: the MCP Inspector CLI (Node) lists the tools and generates an image
# through qolaba-mcp running its in-process sandbox. Fails on any error; skips, saying so, where npx is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

# 1.0.3 is the newest Inspector whose CLI runs on Node 20 (later ones require Node 22).
INSPECTOR_VERSION="${INSPECTOR_VERSION:-1.0.3}"
PREFIX=".interop"
SERVER=(.venv/bin/qolaba-mcp --sandbox)

if ! command -v npx >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    echo "interop: SKIPPED - npx/npm not found on this machine, so the MCP Inspector cannot run"
    exit 0
fi
if [ ! -x "$PREFIX/node_modules/.bin/mcp-inspector" ]; then
    echo "interop: installing @modelcontextprotocol/inspector@$INSPECTOR_VERSION into $PREFIX/"
    for attempt in 1 2 3; do
        npm install --silent --no-audit --no-fund --prefix "$PREFIX" \
            "@modelcontextprotocol/inspector@$INSPECTOR_VERSION" >"$PREFIX.install.log" 2>&1 && break
        echo "interop: npm install failed (attempt $attempt of 3)"
        sleep $((attempt * 5))
    done
    if [ ! -x "$PREFIX/node_modules/.bin/mcp-inspector" ]; then
        # The package registry, not our code, failed: say so plainly rather than pass or fail silently.
        tail -20 "$PREFIX.install.log"
        echo "interop: SKIPPED - the MCP Inspector could not be installed from the npm registry (log above)"
        exit 0
    fi
fi
inspector="$PREFIX/node_modules/.bin/mcp-inspector"
# The installed CLI prints a deprecation banner; the JSON follows it.
export QOLABA_SAVE=off

listed=$(timeout 120 "$inspector" --cli "${SERVER[@]}" --method tools/list)
for tool in generate_image get_task list_models; do
    grep -q "\"name\": \"$tool\"" <<<"$listed" || { echo "interop: tools/list lacks $tool"; echo "$listed"; exit 1; }
done
echo "interop: tools/list OK (generate_image, get_task, list_models)"

called=$(timeout 120 "$inspector" --cli "${SERVER[@]}" --method tools/call --tool-name generate_image \
    --tool-arg model=vertex/nano-banana-flash --tool-arg "prompt=A cat on the Eiffel Tower" \
    --tool-arg aspect_ratio=16:9)
grep -q '"status": "SUCCESS"' <<<"$called" || { echo "interop: generate_image did not succeed"; echo "$called"; exit 1; }
grep -q '"type": "resource_link"' <<<"$called" || { echo "interop: no resource_link in the result"; exit 1; }
grep -q '"isError": true' <<<"$called" && { echo "interop: the call was an error"; echo "$called" | head -40; exit 1; }
echo "interop: tools/call generate_image OK (SUCCESS with resource links, via MCP Inspector $INSPECTOR_VERSION)"
