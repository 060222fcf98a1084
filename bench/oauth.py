"""A tool call with an OAuth JWT against the same call with the static bearer token, over Streamable HTTP.

    .venv/bin/python bench/oauth.py [--calls 300]

Two HTTP servers on loopback against one in-process sandbox: one with QOLABA_MCP_AUTH_TOKEN, one with OAuth
(QOLABA_MCP_OAUTH_ISSUER = oidc-provider from tests/oauth, started here; needs node and `npm ci` there). Each gets
one SDK Client session and a warm-up (the JWKS cache warm), then ``--calls`` list_models round trips, interleaved
in pairs so both see the same machine. Target: JWT p50 <= 1.1x the static token's.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import anyio
import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests, when run as a script

from qolaba_mcp.sandbox import SandboxConfig, SandboxServer
from tests.conftest import HttpServer, free_port
from tests.test_oauth import Issuer

TARGET = 1.1


def server_env(base_url: str, **settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QOLABA_")}
    return {**env, "QOLABA_API_BASE_URL": base_url, "QOLABA_API_KEY": "bench", "QOLABA_SAVE": "off", **settings}


TOKEN = "bench-static-token-0123456789"


async def timings(servers: list[tuple[str, str]], calls: int) -> list[list[float]]:
    """Per server (url, bearer token): ``calls`` list_models round trip times, the servers taking turns."""
    found: list[list[float]] = [[] for _ in servers]
    async with AsyncExitStack() as stack:
        clients: list[Any] = []
        for url, token in servers:
            http = await stack.enter_async_context(
                httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=30)
            )
            clients.append(await stack.enter_async_context(Client(streamable_http_client(url, http_client=http))))
        for client in clients:
            for _ in range(20):  # warm: imports, the JWKS cache, connection pools
                await client.call_tool("list_models", {})
        for _ in range(calls):
            for index, client in enumerate(clients):
                started = time.perf_counter()
                result = await client.call_tool("list_models", {})
                found[index].append(time.perf_counter() - started)
                assert not result.is_error
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=300)
    args = parser.parse_args()
    with SandboxServer(SandboxConfig(latency=0)) as sandbox:
        port = free_port()
        issuer = Issuer(f"http://127.0.0.1:{port}/mcp")
        static = HttpServer(server_env(sandbox.base_url, QOLABA_MCP_AUTH_TOKEN=TOKEN, QOLABA_LEDGER_URL="off"))
        oauth = HttpServer(
            server_env(
                sandbox.base_url,
                QOLABA_MCP_OAUTH_ISSUER=issuer.url,
                QOLABA_MCP_PUBLIC_URL=issuer.resource,
                QOLABA_LEDGER_URL="off",
            ),
            port=port,
        )
        try:
            token = issuer.token("alice")
            static_times, jwt_times = anyio.run(timings, [(static.url, TOKEN), (oauth.url, token)], args.calls)
        finally:
            static.stop()
            oauth.stop()
            issuer.stop()
    p50_static, p50_jwt = statistics.median(static_times), statistics.median(jwt_times)
    ratio = p50_jwt / p50_static
    verdict = "ok" if ratio <= TARGET else "OVER TARGET"
    print(
        f"| list_models over HTTP, JWT vs static token (p50, {args.calls} calls each) "
        f"| {p50_jwt * 1000:.2f} ms vs {p50_static * 1000:.2f} ms | {ratio:.2f}x | <= {TARGET}x | {verdict} |"
    )


if __name__ == "__main__":
    main()
