#!/usr/bin/env bash
# A 2026-07-28 task recovered across kill -9 through @modelcontextprotocol/ext-tasks: a standalone sandbox whose
# generations take 8 s, and qolaba-mcp over Streamable HTTP on loopback with its ledger in a temporary folder. A
# client creates generate_image as a task and hands off its serialized reference; the server is killed with SIGKILL
# and, once its port is closed, started again on the same port and ledger; a fresh client resumes the task from the
# reference and settles it to its images (ext_tasks_recover.mjs). The server command interop.sh appends, without
# its --sandbox, is how qolaba-mcp is started here.
# Usage: ext_tasks_recover.sh NPM_PREFIX SERVER_COMMAND [ARG...]; ends with `OK: ...` or `FAIL: <reason>`.
set -uo pipefail
prefix=$1
shift
here=$(dirname "$0")
qolaba=()
for word in "$@"; do [ "$word" = --sandbox ] || qolaba+=("$word"); done
work=$(mktemp -d)
sandbox_pid=
server_pid=

# Each process leads its own process group (setsid), so a wrapper command and its children stop together.
stop() { [ -n "$1" ] && kill "-$2" -- "-$1" 2>/dev/null && wait "$1" 2>/dev/null; }
cleanup() { stop "$server_pid" TERM; stop "$sandbox_pid" TERM; rm -rf "$work"; }
trap cleanup EXIT
fail() {
    echo "FAIL: $*"
    for log in "$work"/*.log; do [ -f "$log" ] && { echo "--- $log"; tail -5 "$log"; }; done
    exit 1
}

free_port() { node -e 'const s = require("net").createServer().listen(0, "127.0.0.1", () => { console.log(s.address().port); s.close(); })'; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
# Waits (up to 60 s) until the port is open (want=open) or closed, failing early when PID exits first.
wait_port() {
    local port=$1 want=$2 pid=$3 deadline=$((SECONDS + 60))
    while [ $SECONDS -lt $deadline ]; do
        if port_open "$port"; then [ "$want" = open ] && return 0; else [ "$want" = closed ] && return 0; fi
        [ "$want" = open ] && ! kill -0 "$pid" 2>/dev/null && fail "the process on port $port exited before listening"
        sleep 0.1
    done
    fail "port $port still not $want after 60 s"
}

sandbox_port=$(free_port)
mcp_port=$(free_port)
while [ "$mcp_port" = "$sandbox_port" ]; do mcp_port=$(free_port); done
url="http://127.0.0.1:$mcp_port/mcp"
# The sandbox takes any key.
export QOLABA_API_KEY=interop-sandbox QOLABA_API_BASE_URL="http://127.0.0.1:$sandbox_port" QOLABA_LEDGER_URL="sqlite:///$work/ledger.db" QOLABA_SAVE=off

start_server() { # log name
    setsid "${qolaba[@]}" --transport http --host 127.0.0.1 --port "$mcp_port" </dev/null >>"$work/$1.log" 2>&1 &
    server_pid=$!
    wait_port "$mcp_port" open "$server_pid"
}

setsid "${qolaba[@]}" sandbox --port "$sandbox_port" --latency 8 --pictures plain </dev/null >"$work/sandbox.log" 2>&1 &
sandbox_pid=$!
wait_port "$sandbox_port" open "$sandbox_pid"
start_server server-1
echo "  ok   sandbox on :$sandbox_port, qolaba-mcp on $url (pid $server_pid), ledger $QOLABA_LEDGER_URL"

# One client half; its output shown, its FAIL reason made this line's. Sets $verdict to its OK text.
half() { # phase, what it is called in a failure
    local out rc
    out=$(node "$here/ext_tasks_recover.mjs" "$prefix" "$1" "$url" "$work/reference.json" 2>&1)
    rc=$?
    sed 's/^/  /' <<<"$out" # indented: only this script's verdict starts a line with OK: or FAIL:
    [ $rc -eq 0 ] || fail "$2: $(grep '^FAIL: ' <<<"$out" | cut -c7-)"
    verdict=$(grep '^OK: ' <<<"$out" | cut -c5-)
}

half create "before the kill"
echo "  ok   reference: $(cat "$work/reference.json")"

stop "$server_pid" KILL
wait_port "$mcp_port" closed "$server_pid"
echo "  ok   qolaba-mcp killed with SIGKILL (pid $server_pid), port $mcp_port closed"
start_server server-2
echo "  ok   qolaba-mcp started again on the same port and ledger (pid $server_pid)"

half resume "after kill -9 and a restart"
echo "OK: $verdict after kill -9 and a restart"
