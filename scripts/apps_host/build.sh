#!/usr/bin/env bash
# The MCP Apps host for the browser tests: installs this folder's package.json (exact pins, package-lock.json) into
# PREFIX with `npm ci`, unless PREFIX/.interop-stamp says that install is current (keyed on both files and Node's
# version), then bundles host.js into one browser script, PREFIX/host.js, beside a copy of host.html.
#
#   bash scripts/apps_host/build.sh PREFIX               install if needed, then bundle
#   bash scripts/apps_host/build.sh --no-install PREFIX  bundle only; exit 1 when the install is missing or stale
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
install=1
if [ "${1:-}" = "--no-install" ]; then install=0; shift; fi
PREFIX=${1:?usage: build.sh [--no-install] PREFIX}
mkdir -p "$PREFIX"
PREFIX=$(cd "$PREFIX" && pwd)

key="$(cat "$HERE/package.json" "$HERE/package-lock.json" | sha256sum | cut -c1-64) node $(node --version)"
esbuild=$PREFIX/node_modules/.bin/esbuild
if [ ! -f "$PREFIX/.interop-stamp" ] || [ "$(cat "$PREFIX/.interop-stamp")" != "$key" ] || [ ! -x "$esbuild" ]; then
    [ $install = 1 ] || { echo "build.sh: the install in $PREFIX is missing or stale" >&2; exit 1; }
    rm -rf "$PREFIX/node_modules" "$PREFIX/.interop-stamp"
    cp "$HERE/package.json" "$HERE/package-lock.json" "$PREFIX/"
    npm ci --no-audit --no-fund --loglevel=error --prefix "$PREFIX"
    echo "$key" >"$PREFIX/.interop-stamp"
fi
# The packages live in PREFIX, not beside host.js: NODE_PATH tells esbuild where to resolve them.
NODE_PATH=$PREFIX/node_modules "$esbuild" "$HERE/host.js" --bundle --format=esm --platform=browser --target=chrome120 \
    --log-level=warning --outfile="$PREFIX/host.js"
cp "$HERE/host.html" "$PREFIX/host.html"
