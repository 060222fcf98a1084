"""Streamable HTTP: the MCP server as an ASGI app at /mcp, behind a bearer token and Host/Origin checks."""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging

import anyio
import uvicorn
from mcp.server.mcpserver import MCPServer
from mcp.server.transport_security import TransportSecuritySettings
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ._config import Settings
from ._server import DISCONNECTED

log = logging.getLogger("qolaba_mcp.http")

MCP_PATH = "/mcp"
_LOOPBACK_HOSTS = ["127.0.0.1:*", "localhost:*", "[::1]:*"]
_LOOPBACK_ORIGINS = ["http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*"]


class InsecureBindError(Exception):
    """A non-loopback bind with no token and no explicit opt-out."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class BearerAuth:
    """Refuses any HTTP request whose ``Authorization: Bearer`` token is not ours (constant-time comparison)."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self._app = app
        self._expected = f"Bearer {token}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            given = next((value for name, value in scope["headers"] if name == b"authorization"), b"")
            if not hmac.compare_digest(given, self._expected):
                body = json.dumps(
                    {
                        "error": "unauthorized",
                        "message": "Send Authorization: Bearer <QOLABA_MCP_AUTH_TOKEN>.",
                    }
                ).encode()
                await send(
                    {
                        "type": "http.response.start",
                        "status": 401,
                        "headers": [
                            (b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                            (b"www-authenticate", b'Bearer realm="qolaba-mcp"'),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": body})
                return
        await self._app(scope, receive, send)


class DisconnectSignal:
    """Puts an event in each HTTP request's state that is set once its client disconnects.

    In stateful mode the SDK keeps serving a request after its response stream closes (for resumable streams,
    which this server does not offer); the tools wait on this event to stop polling for a client that left.
    """

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        gone = anyio.Event()
        scope.setdefault("state", {})[DISCONNECTED] = gone

        async def watched_receive() -> Message:
            message = await receive()
            if message["type"] == "http.disconnect":
                gone.set()
            return message

        try:
            await self._app(scope, watched_receive, send)
        except OSError:
            gone.set()
            raise


def http_app(server: MCPServer, settings: Settings, *, host: str, stateless: bool, insecure_no_auth: bool) -> ASGIApp:
    """The ASGI app; responses stream as SSE so progress notifications reach HTTP clients too."""
    token = settings.mcp_auth_token.get_secret_value() if settings.mcp_auth_token else ""
    if not token and not is_loopback(host) and not insecure_no_auth:
        raise InsecureBindError(
            f"refusing to serve on {host} without authentication: set QOLABA_MCP_AUTH_TOKEN (clients then send "
            "Authorization: Bearer <token>), bind 127.0.0.1, or pass --insecure-no-auth if something in front of "
            "this server authenticates."
        )
    security = TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=[*_LOOPBACK_HOSTS, *settings.mcp_allowed_hosts],
        allowed_origins=[*_LOOPBACK_ORIGINS, *settings.mcp_allowed_origins],
    )
    app: ASGIApp = server.streamable_http_app(
        streamable_http_path=MCP_PATH,
        stateless_http=stateless,
        json_response=False,
        host=host,
        max_request_body_size=settings.mcp_max_body_bytes,
        transport_security=security,
    )
    guarded = DisconnectSignal(app)
    return BearerAuth(guarded, token) if token else guarded


def serve_http(
    server: MCPServer,
    settings: Settings,
    *,
    host: str,
    port: int,
    stateless: bool,
    insecure_no_auth: bool,
    log_level: str,
) -> None:
    app = http_app(server, settings, host=host, stateless=stateless, insecure_no_auth=insecure_no_auth)
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level=log_level.lower(),
        access_log=log_level.upper() == "DEBUG",
        log_config=None,  # our stderr logging, never stdout
    )
