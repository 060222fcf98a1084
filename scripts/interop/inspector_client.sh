#!/usr/bin/env bash
# The MCP Inspector CLI (Node) against qolaba-mcp: lists the tools, then generates an image.
# Usage: inspector_client.sh NPM_PREFIX SERVER_COMMAND [ARG...]; ends with `OK: ...` or `FAIL: <reason>`.
set -uo pipefail
prefix=$1
shift
inspector="$prefix/node_modules/.bin/mcp-inspector"
export QOLABA_SAVE=off
fail() { echo "FAIL: $*"; exit 1; }

# The installed CLI prints a deprecation banner; the JSON follows it.
listed=$(timeout 120 "$inspector" --cli "$@" --method tools/list 2>&1) || { echo "$listed"; fail "tools/list: the Inspector exited $?"; }
for tool in generate_image get_task list_models; do
    grep -q "\"name\": \"$tool\"" <<<"$listed" || { echo "$listed"; fail "tools/list lacks $tool"; }
done
echo "  ok   tools/list (generate_image, get_task, list_models)"

called=$(timeout 120 "$inspector" --cli "$@" --method tools/call --tool-name generate_image \
    --tool-arg model=vertex/nano-banana-flash --tool-arg "prompt=A cat on the Eiffel Tower" \
    --tool-arg aspect_ratio=16:9 2>&1) || { echo "$called" | head -60; fail "tools/call generate_image: the Inspector exited $?"; }
echo "$called" | sed -E 's/"data": "([^"]{40})[^"]*"/"data": "\1..."/' | head -60
grep -q '"isError": true' <<<"$called" && fail "tools/call generate_image returned an error result"
grep -q '"status": "SUCCESS"' <<<"$called" || fail "tools/call generate_image: no SUCCESS status in the result"
grep -q '"type": "resource_link"' <<<"$called" || fail "tools/call generate_image: no resource_link in the result"
echo "OK: tools/list and tools/call generate_image (SUCCESS with resource links)"
