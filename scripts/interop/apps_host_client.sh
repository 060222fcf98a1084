#!/usr/bin/env bash
# The gallery MCP App in headless Chromium, mounted by a host page built on @modelcontextprotocol/ext-apps's
# AppBridge (scripts/apps_host, built into HOST_DIR by build.sh): runs tests/browser. Those tests start their own
# qolaba-mcp over stdio against a sandbox in the test process, whose counters they read, so the server command
# that interop.sh appends is not used.
# Usage: apps_host_client.sh HOST_DIR [SERVER_COMMAND...]; ends with `OK: ...` or `FAIL: <reason>`.
set -uo pipefail
host_dir=$(cd "$1" && pwd)
cd "$(dirname "$0")/../.."

out=$(QOLABA_BROWSER_TESTS=1 QOLABA_APPS_HOST="$host_dir" .venv/bin/python -m pytest -q -p no:cacheprovider tests/browser 2>&1)
rc=$?
echo "$out"
summary=$(grep -E '^=* ?[0-9]+ (passed|failed|error|skipped)|no tests ran' <<<"$out" | tail -1 | sed -E 's/^=+ //; s/ =+$//')
if [ $rc -eq 0 ] && ! grep -q skipped <<<"$summary"; then
    echo "OK: tests/browser: $summary"
    exit 0
fi
first=$(grep -m1 -E '^(FAILED|ERROR|SKIPPED) ' <<<"$out" | cut -c1-240)
echo "FAIL: tests/browser: ${summary:-pytest exited $rc}${first:+; first: $first}"
exit 1
